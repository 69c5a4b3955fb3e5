"""results/crosscheck.py: the independent PyTorch ResNet recipe on train.py's data and split."""

import csv
import json
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from results import crosscheck  # noqa: E402


def test_resnet20_has_the_parameters_of_the_keras_one():
    import models

    keras_model = models.create_model("resnet20")
    assert sum(p.numel() for p in crosscheck.build_resnet(20).parameters()) == sum(int(np.prod(w.shape)) for w in keras_model.trainable_weights) == 269_722


def test_crop_flip_takes_crops_of_the_zero_padded_image():
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, (64, 32, 32, 3), dtype=np.uint8)  # no zero pixels: the padding shows
    out = crosscheck.crop_flip(torch, torch.from_numpy(images), torch.Generator().manual_seed(1)).numpy()
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
    flipped = 0
    for image, crop in zip(padded, out):
        crops = {(r, c, f) for r in range(9) for c in range(9) for f in (0, 1)
                 if np.array_equal(crop, image[r:r + 32, c:c + 32][:, ::-1] if f else image[r:r + 32, c:c + 32])}
        assert len(crops) == 1
        flipped += next(iter(crops))[2]
    assert 16 < flipped < 48  # about half mirrored


def test_a_run_writes_train_pys_files_resumes_after_a_kill_and_refuses_other_settings(tiny_cifar, tmp_path,
                                                                                        monkeypatch, capsys):
    root, _ = tiny_cifar
    run = tmp_path / "run"
    argv = ["--data-dir", str(root), "--run-dir", str(run), "--epochs", "2", "--milestones", "1",
            "--val-split", "40", "--batch-size", "64", "--threads", "1"]
    real_write, writes = crosscheck._write_csv, []

    def killed_in_the_second_epoch(path, rows):  # after epoch 1's checkpoint, before epoch 2's
        writes.append(len(rows))
        if len(writes) == 2:
            raise KeyboardInterrupt
        real_write(path, rows)

    monkeypatch.setattr(crosscheck, "_write_csv", killed_in_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        crosscheck.main(argv)
    assert not (run / "metrics.json").exists() and (run / "checkpoint.pt").is_file()
    monkeypatch.setattr(crosscheck, "_write_csv", real_write)
    assert crosscheck.main(argv) == 0
    assert "resuming" in capsys.readouterr().out

    with open(run / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.1, 0.01])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_completed"] == 2 and metrics["train_images"] == 160 and metrics["val_images"] == 40
    assert metrics["best_epoch"] in (1, 2) and 0 <= metrics["test_accuracy"] <= 1
    assert metrics["val_accuracy"] == max(float(r["val_accuracy"]) for r in rows)
    assert json.loads((run / "config.json").read_text())["settings"]["milestones"] == [1]

    assert crosscheck.main(argv) == 0 and "is finished" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="other settings \\(epochs\\)"):
        crosscheck.main(argv[:5] + ["3"] + argv[6:])


@pytest.mark.parametrize("flags, message", [
    (["--milestones", "5", "3"], "--milestones must be strictly increasing"),
    (["--milestones", "3", "3"], "--milestones must be strictly increasing"),  # would divide the lr by 100 at once
    (["--depth", "21"], "depth must be 6n\\+2"),
    (["--epochs", "0"], "--epochs and --batch-size must be >= 1"),
])
def test_bad_flags_are_one_line_errors(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        crosscheck.main(["--run-dir", str(tmp_path / "run"), *flags])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "Traceback" not in err
    assert re.search(f"^python -m results.crosscheck: error: {message}", err.splitlines()[-1])


def test_summary_groups_runs_by_implementation_and_precision(tmp_path, capsys):
    def run(name, seed, val, test, last, torch_run=True):
        folder = tmp_path / name
        folder.mkdir()
        config = {"settings": {"seed": seed}, **({"torch": "2.x"} if torch_run else {"execution": {}})}
        metrics = dict(val_accuracy=val, test_accuracy=test, last_epoch_test_accuracy=last, best_epoch=5,
                       epochs_completed=30, wall_seconds=600.0)
        metrics.update({"precision": "bfloat16 autocast"} if torch_run else {"execution": {"precision": "mixed_bfloat16"}})
        (folder / "config.json").write_text(json.dumps(config))
        (folder / "metrics.json").write_text(json.dumps(metrics))
        return str(folder)

    runs = [run("t1", 1, 0.88, 0.87, 0.86), run("t0", 0, 0.90, 0.89, 0.88), run("k0", 0, 0.5, 0.5, 0.5, False)]
    assert crosscheck.main(["summary", *runs, "--csv", str(tmp_path / "rows.csv")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith("| Keras (train.py) | mixed_bfloat16 | 30 | 1 | 50.00 | 50.00 | 50.00 |")
    assert lines[3].startswith("| PyTorch (results.crosscheck) | bfloat16 autocast | 30 | 2 | 89.00 ± 1.41 | 88.00 ± 1.41 "
                               "| 87.00 ± 1.41 | seed 0: 90.00 / 89.00 (epoch 5) / 88.00; seed 1: 88.00 / 87.00")
    assert lines[3].endswith("| 10.0 |")
    with open(tmp_path / "rows.csv") as f:
        assert [r["runs"] for r in csv.DictReader(f)] == ["1", "2"]
    with pytest.raises(SystemExit, match="is not a finished run folder"):
        crosscheck.main(["summary", str(tmp_path / "missing")])

    # A row's runs differ in their seed only: a folder named twice counts once; a seed twice, other
    # settings, unusable accuracies or an unwritable --csv are refused with one line.
    assert crosscheck.main(["summary", runs[0], runs[0] + "/", runs[1]]) == 0
    assert "| 30 | 2 |" in capsys.readouterr().out
    twin = run("t0-again", 0, 0.91, 0.90, 0.89)
    with pytest.raises(SystemExit, match="repeats seed 0"):
        crosscheck.main(["summary", runs[1], twin])
    other = run("t2-lr", 2, 0.9, 0.9, 0.9)
    config = json.loads((tmp_path / "t2-lr" / "config.json").read_text())
    config["settings"]["lr"] = 0.05
    (tmp_path / "t2-lr" / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit, match="differ in lr, not only the seed"):
        crosscheck.main(["summary", runs[1], other])
    nan = run("t3-nan", 3, float("nan"), 0.9, 0.9)
    with pytest.raises(SystemExit, match="no usable val_accuracy"):
        crosscheck.main(["summary", nan])
    with pytest.raises(SystemExit, match="is a folder"):
        crosscheck.main(["summary", runs[1], "--csv", str(tmp_path)])
    before = (tmp_path / "t0" / "metrics.json").read_bytes()
    with pytest.raises(SystemExit, match="is in the run folder .*t0, whose files it could replace"):
        crosscheck.main(["summary", runs[0], runs[1], "--csv", str(tmp_path / "t0" / "metrics.json")])
    assert (tmp_path / "t0" / "metrics.json").read_bytes() == before


def test_a_run_dir_that_is_a_file_or_holds_a_garbled_config_is_refused(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit, match="is a file, not a folder"):
        crosscheck.main(["--run-dir", str(tmp_path / "file")])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="is not empty and holds no results.crosscheck run"):
        crosscheck.main(["--run-dir", str(tmp_path / "other")])
    assert [p.name for p in (tmp_path / "other").iterdir()] == ["notes.txt"]
    (tmp_path / "run").mkdir()
    for text in ("{", "{}", "[]"):
        (tmp_path / "run" / "config.json").write_text(text)
        with pytest.raises(SystemExit, match="is not the config.json of a results.crosscheck run"):
            crosscheck.main(["--run-dir", str(tmp_path / "run")])
