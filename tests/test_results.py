"""python -m results: tiny runs made by train.main and a series, the table made from them checked
against their metrics files, the copies, regeneration, the rebuilt commands and the error lines."""

import contextlib
import csv
import io
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import data
import execution
import inference
import models
import series
import train
from conftest import ROOT
from errors import TrainError
from results import __main__ as cli
from results import report, runs, table, throughput
from settings import SETTINGS
from settings import resolve_settings

TINY = ["--val-split", "40", "--batch-size", "32"]
# The series run's settings given as flags, in train.py's order.
SCALE_COMMAND = "python train.py --model lenet --epochs 1 --batch-size 32 --preprocess scale --val-split 40"


@pytest.fixture(scope="module")
def tiny_runs(tiny_cifar, tmp_path_factory):
    """Two seeds of one recipe by train.main, one run by a series (no command recorded), and an
    unfinished run of the first recipe (killed after epoch 1 of 2: no metrics.json)."""
    root, _ = tiny_cifar
    base = tmp_path_factory.mktemp("results-runs")
    for seed in (0, 1):
        run_dir = base / "exp" / f"lenet-seed{seed}"
        assert train.main(["--model", "lenet", "--data-dir", str(root), "--run-dir", str(run_dir), *TINY,
                           "--epochs", "2", "--seed", str(seed)]) == 0
    series.run_grid("lenet", {"scale": {"preprocess": "scale"}}, [0], base / "tricks", kind="tricks ablation",
                    loaded=data.load_cifar10(root, verbose=False), verbose=0, epochs=1, val_split=40, batch_size=32)
    killed = base / "killed" / "lenet-seed1"
    shutil.copytree(base / "exp" / "lenet-seed1", killed, ignore=shutil.ignore_patterns("metrics.json"))
    config = json.loads((killed / "config.json").read_text())
    config["created"] = "a later start"  # another run of the same recipe, not a copy of the finished one
    (killed / "config.json").write_text(json.dumps(config, indent=2))
    state = json.loads((killed / "state.json").read_text())
    state["epochs_completed"], state["history"] = 1, state["history"][:1]
    (killed / "state.json").write_text(json.dumps(state))
    return base


@pytest.fixture(scope="module")
def built(tiny_runs, tmp_path_factory):
    """OUT after one build naming all four run folders, and what the build printed."""
    out = tmp_path_factory.mktemp("results-out") / "results"
    argv = ["build", str(tiny_runs / "exp"), str(tiny_runs / "tricks" / "runs"), str(tiny_runs / "killed"),
            "--out", str(out)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(argv) == 0
    return out, printed.getvalue()


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def metrics_of(folder):
    return json.loads((folder / "metrics.json").read_text())


def stats(values):
    values = np.asarray(values) * 100
    return round(float(values.mean()), 2), round(float(values.std(ddof=1)), 2)


def test_rows_are_the_mean_and_std_of_the_runs_metrics(built, tiny_runs):
    out, _ = built
    rows = read_csv(out / "table.csv")
    finished = [r for r in rows if r["status"] == "finished"]
    assert [(r["model"], r["variant"], r["runs"]) for r in finished] == [
        ("lenet", "exp", "2"), ("lenet", "tricks-scale", "1")]
    row = finished[0]
    m = [metrics_of(tiny_runs / "exp" / f"lenet-seed{s}") for s in (0, 1)]
    assert (float(row["val_accuracy_mean"]), float(row["val_accuracy_std"])) == stats([x["val_accuracy"] for x in m])
    assert (float(row["test_accuracy_mean"]), float(row["test_accuracy_std"])) == stats([x["test_accuracy"] for x in m])
    last = stats([x["last_epoch_test_accuracy"] for x in m])
    assert (float(row["last_epoch_test_accuracy_mean"]), float(row["last_epoch_test_accuracy_std"])) == last
    assert float(row["wall_seconds_mean"]) == round(np.mean([x["wall_seconds"] for x in m]), 1)
    speeds = [x["train_images_per_second"] for x in m]
    assert float(row["train_images_per_second_median"]) == round(np.median(speeds), 1)
    assert row["parameters"] == "62006" and row["epochs"] == "2" and row["batch"] == "32" and row["seeds"] == "0 1"
    # The recipe's lr 0.01 scaled linearly to batch 32, its milestones (100, 150 of 200) to 2 epochs.
    assert row["schedule"] == "step 0.0025, x0.5 at 1"
    assert row["weight_decay"] == "0.0001" and row["precision"] == "float32"
    assert row["machine"] == execution.machine()
    config = json.loads((tiny_runs / "exp" / "lenet-seed0" / "config.json").read_text())
    assert row["data"].startswith("cifar-10-batches-py, 160/40/40 train/val/test images, ")
    assert row["data"].endswith(f", val split {config['data']['val_indices_sha256'][:8]}")
    no_split = {**config["data"], "val_images": 0, "val_indices_sha256": "e3b0c442" + "0" * 56}
    text = table.data_text({"data": no_split})
    assert " 160/0/40 train/val/test images, " in text and text.endswith(", no val split") and "e3b0" not in text
    assert "--seed S" in row["command"] and "lenet-seedS" in row["command"] and row["command"].endswith("(S = 0, 1)")
    single = finished[1]
    assert single["val_accuracy_std"] == "" and single["test_accuracy_std"] == ""  # one run has no spread
    readme = (out / "README.md").read_text()
    mean, std = stats([x["test_accuracy"] for x in m])
    assert f"| {mean:.2f} ± {std:.2f} |" in readme and "validation split" in readme and "evaluated once" in readme


def test_unfinished_run_is_listed_as_partial_and_not_averaged_in(built, tiny_runs):
    out, printed = built
    (entry,) = read_csv(out / "partial.csv")
    assert entry["run_id"] == runs.run_id(tiny_runs / "killed" / "lenet-seed1" / "config.json")
    assert {k: entry[k] for k in ("name", "model", "epochs_completed", "epochs")} == {
        "name": "lenet-killed-seed1", "model": "lenet", "epochs_completed": "1", "epochs": "2"}
    assert "unfinished, not in the table: lenet-killed-seed1 (epoch 1 of 2)" in printed
    assert "| lenet-killed-seed1 | lenet | 1 of 2 |" in (out / "README.md").read_text()
    assert not (out / "runs" / "lenet-killed-seed1").exists()
    assert sum(int(r["runs"]) for r in read_csv(out / "table.csv")) == 3


def test_forget_drops_a_lost_unfinished_run_and_refuses_a_wrong_name(built, tiny_runs, tmp_path, capsys):
    out, _ = built
    again = tmp_path / "results"
    shutil.copytree(out, again)
    before = {p.name: p.read_bytes() for p in again.iterdir() if p.is_file()}
    assert "no unfinished run has that name" in one_line_error(capsys, ["build", "--out", str(again), "--forget", "lenet-seed1"])
    err = one_line_error(capsys, ["build", str(tiny_runs / "killed"), "--out", str(again), "--forget", "lenet-killed-seed1"])
    assert "also named as a RUN_DIR" in err
    assert {p.name: p.read_bytes() for p in again.iterdir() if p.is_file()} == before  # refused: nothing rewritten
    run_id = read_csv(again / "partial.csv")[0]["run_id"]
    assert cli.main(["build", "--out", str(again), "--forget", run_id]) == 0
    assert "forgot the unfinished run" in capsys.readouterr().out
    assert read_csv(again / "partial.csv") == []
    assert "lenet-killed-seed1" not in (again / "README.md").read_text()
    assert (again / "table.csv").read_text() == (out / "table.csv").read_text()


def test_copies_hold_exactly_the_three_small_files(built, tiny_runs):
    out, _ = built
    sources = {"lenet-exp-seed0": tiny_runs / "exp" / "lenet-seed0",
               "lenet-exp-seed1": tiny_runs / "exp" / "lenet-seed1",
               "lenet-tricks-scale-seed0": tiny_runs / "tricks" / "runs" / "scale-seed0"}
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(sources)
    for name, source in sources.items():
        copied = out / "runs" / name
        assert sorted(p.name for p in copied.iterdir()) == ["config.json", "history.csv", "metrics.json"]
        assert all((copied / f).read_bytes() == (source / f).read_bytes() for f in runs.SMALL_FILES)


def test_regenerating_from_out_alone_gives_the_same_table(built, tmp_path, tiny_runs):
    out, _ = built
    again = tmp_path / "results"
    again.mkdir()
    shutil.copytree(out / "runs", again / "runs")
    shutil.copy(out / "partial.csv", again / "partial.csv")
    assert cli.main(["build", "--out", str(again)]) == 0
    for name in ("table.csv", "README.md"):
        assert (again / name).read_text() == (out / name).read_text(), name
    # Naming the same folders again refreshes their copies under the same names.
    assert cli.main(["build", str(tiny_runs / "exp"), "--out", str(again)]) == 0
    assert sorted(p.name for p in (again / "runs").iterdir()) == sorted(p.name for p in (out / "runs").iterdir())
    assert (again / "table.csv").read_text() == (out / "table.csv").read_text()
    assert cli.main(["build", "--no-all-models", "--out", str(again)]) == 0
    assert {r["status"] for r in read_csv(again / "table.csv")} == {"finished"}


def test_a_different_run_with_a_taken_name_gets_a_suffix(tiny_runs, tmp_path):
    other = tmp_path / "exp" / "lenet-seed0"
    shutil.copytree(tiny_runs / "exp" / "lenet-seed0", other, ignore=shutil.ignore_patterns("*.keras", "checkpoints"))
    config = json.loads((other / "config.json").read_text())
    config["created"] = "another machine, another day"
    (other / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    given = runs.load_given([tiny_runs / "exp" / "lenet-seed0", other])
    assert runs.update_out(given, out)[0] == ["lenet-exp-seed0", "lenet-exp-seed0-2"]
    assert runs.update_out(runs.load_given([other]), out)[0] == ["lenet-exp-seed0-2"]  # keeps its name


def test_older_runs_without_the_newer_records(built, tmp_path):
    """Runs finished before metrics.json had the last epoch's accuracy and the machines: "—" and
    "not recorded", and a mean over the runs that have it, said so."""
    out, _ = built
    old = tmp_path / "results"
    shutil.copytree(out / "runs", old / "runs")
    path = old / "runs" / "lenet-exp-seed1" / "metrics.json"
    m = json.loads(path.read_text())
    del m["last_epoch_test_accuracy"], m["machines"]
    path.write_text(json.dumps(m))
    assert cli.main(["build", "--no-all-models", "--out", str(old)]) == 0
    row = read_csv(old / "table.csv")[0]
    kept = metrics_of(out / "runs" / "lenet-exp-seed0")["last_epoch_test_accuracy"]
    assert row["last_epoch_test_runs"] == "1" and float(row["last_epoch_test_accuracy_mean"]) == round(kept * 100, 2)
    assert row["machine"] == f"{execution.machine()}; not recorded (1 run)"
    assert f"| {kept * 100:.2f} (1 of 2 runs) |" in (old / "README.md").read_text()
    path = old / "runs" / "lenet-exp-seed0" / "metrics.json"
    m = json.loads(path.read_text())
    del m["last_epoch_test_accuracy"], m["machines"]
    path.write_text(json.dumps(m))
    assert cli.main(["build", "--no-all-models", "--out", str(old)]) == 0
    row = read_csv(old / "table.csv")[0]
    assert row["last_epoch_test_accuracy_mean"] == "" and row["machine"] == "not recorded"
    assert "| lenet (exp) | " in (old / "README.md").read_text() and " | — |\n" in (old / "README.md").read_text()


def test_series_runs_of_several_seeds_share_one_command_with_s(tiny_runs):
    run = runs.load_run(tiny_runs / "tricks" / "runs" / "scale-seed0")
    other = runs.Run(run.path, json.loads(json.dumps(run.config)), run.metrics, None, "x")
    other.config["settings"]["seed"] = 4
    assert table.row_commands([run, other]) == [
        f"{SCALE_COMMAND} --seed S (S = 0, 4)"]


def round_trip(config):
    tokens = table.reconstructed_command(config)
    assert tokens[0] == "train.py"
    args = train.build_parser().parse_args(tokens[1:])
    overrides = {k: v for k, v in vars(args).items() if k in SETTINGS and v is not None}
    return resolve_settings(args.model, **overrides)[0]


def test_the_rebuilt_command_of_a_series_run_resolves_to_its_settings(built, tiny_runs):
    out, _ = built
    config = json.loads((tiny_runs / "tricks" / "runs" / "scale-seed0" / "config.json").read_text())
    assert config["command"] is None
    assert round_trip(config) == config["settings"]
    row = next(r for r in read_csv(out / "table.csv") if r["variant"] == "tricks-scale")
    assert row["command"] == f"{SCALE_COMMAND} --seed 0"
    for seed in (0, 1):  # train.main's runs too, from their settings alone
        config = json.loads((tiny_runs / "exp" / f"lenet-seed{seed}" / "config.json").read_text())
        assert round_trip(config) == config["settings"]


@pytest.mark.parametrize("overrides", [
    dict(seed=3),
    dict(schedule="htd", htd_bounds=[-5.0, 2.5], nesterov=False, epochs=30, seed=1),
    dict(lr_milestones=[3, 7], lr_factor=[0.5, 0.25], warmup_epochs=1.5, weight_decay=5e-4, lr=0.03),
    dict(schedule="cosine", min_lr=1e-5, batch_size=64, schedule_per="epoch", mixup=0.2, cutout=16),
    dict(schedule="exponential", lr_gamma=0.9, augment="none", preprocess="scale", val_split=0, label_smoothing=0.1),
])
def test_rebuilt_commands_resolve_to_the_same_settings(overrides):
    settings, sources = resolve_settings("resnet20", **overrides)
    assert round_trip({"settings": settings, "sources": sources, "command": None}) == settings


def one_line_error(capsys, argv):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_bad_input_is_refused_with_one_line(tiny_runs, tmp_path, capsys):
    out = tmp_path / "out"
    assert "does not exist" in one_line_error(capsys, ["build", str(tmp_path / "nowhere"), "--out", str(out)])
    (tmp_path / "empty").mkdir()
    assert "holds no run" in one_line_error(capsys, ["build", str(tmp_path / "empty"), "--out", str(out)])
    garbled = tmp_path / "garbled"
    shutil.copytree(tiny_runs / "exp" / "lenet-seed0", garbled, ignore=shutil.ignore_patterns("*.keras", "checkpoints"))
    (garbled / "metrics.json").write_text('{"val_accuracy": 0.5,')
    assert "metrics.json is not valid JSON" in one_line_error(capsys, ["build", str(garbled), "--out", str(out)])
    (garbled / "config.json").write_text('{"settings": {}}')
    err = one_line_error(capsys, ["build", str(garbled), "--out", str(out)])
    assert "is not the config.json of a train.py run" in err
    assert not out.exists()  # nothing written for refused input
    err = one_line_error(capsys, ["throughput", "--models", "lenet5", "--out", str(out / "t.csv")])
    assert "unknown model 'lenet5'" in err
    assert "is a folder" in one_line_error(capsys, ["throughput", "--models", "lenet", "--out", str(tmp_path)])
    err = one_line_error(capsys, ["throughput", "--models", "lenet", "--steps-per-execution", "0", "--out", str(out / "t.csv")])
    assert "--steps-per-execution >= 1" in err


def files_of(folder):
    """Every file below `folder` and its bytes: what a refused build must leave as it was."""
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def small_copy(source, dest):
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("*.keras", "checkpoints", "tensorboard"))
    return dest


def test_garbled_values_are_refused_before_anything_is_copied(tiny_runs, tmp_path, capsys):
    out = tmp_path / "out"
    bad = small_copy(tiny_runs / "exp" / "lenet-seed0", tmp_path / "bad")
    good = json.loads((bad / "metrics.json").read_text())
    for key, value in [("test_accuracy", float("nan")), ("test_accuracy", True), ("val_accuracy", 1.5),
                       ("last_epoch_test_accuracy", "0.5")]:
        (bad / "metrics.json").write_text(json.dumps({**good, key: value}))
        assert f"{key} is" in one_line_error(capsys, ["build", str(bad), "--out", str(out)])
    (bad / "metrics.json").write_text(json.dumps(good))
    (bad / "history.csv").write_text("epoch,val_accuracy\n1,abc\n")
    assert "is not a history.csv" in one_line_error(capsys, ["build", str(bad), "--out", str(out)])
    small_copy(tiny_runs / "exp" / "lenet-seed0", tmp_path / "fine")
    config = json.loads((bad / "config.json").read_text())
    config["settings"]["epochs"] = "2"
    (bad / "config.json").write_text(json.dumps(config))
    err = one_line_error(capsys, ["build", str(tmp_path / "fine"), str(bad), "--out", str(out)])
    assert "settings.epochs must be a whole number" in err
    assert not out.exists()  # the good run named beside it was not copied either


def test_a_committed_copy_is_never_overwritten_or_deleted(built, tiny_runs, tmp_path, capsys):
    out, _ = built
    again = tmp_path / "results"
    shutil.copytree(out, again)
    before = files_of(again)
    stripped = small_copy(tiny_runs / "exp" / "lenet-seed0", tmp_path / "exp" / "lenet-seed0")
    (stripped / "history.csv").unlink()
    assert "has no history.csv than its copy" in one_line_error(capsys, ["build", str(stripped), "--out", str(again)])
    small_copy(tiny_runs / "exp" / "lenet-seed0", tmp_path / "other" / "lenet-seed0")
    metrics = json.loads((tmp_path / "other" / "lenet-seed0" / "metrics.json").read_text())
    (tmp_path / "other" / "lenet-seed0" / "metrics.json").write_text(json.dumps({**metrics, "test_accuracy": 0.99}))
    err = one_line_error(capsys, ["build", str(tmp_path / "other"), "--out", str(again)])
    assert "has another metrics.json than its copy" in err and "the copy is kept" in err
    assert files_of(again) == before


def test_the_same_seed_twice_in_a_row_is_refused(built, tiny_runs, tmp_path, capsys):
    out, _ = built
    again = tmp_path / "results"
    shutil.copytree(out, again)
    before = files_of(again)
    twin = small_copy(tiny_runs / "exp" / "lenet-seed0", tmp_path / "rerun" / "lenet-seed0")
    config = json.loads((twin / "config.json").read_text())
    (twin / "config.json").write_text(json.dumps(config))  # other bytes, so another run id: seed 0 again
    err = one_line_error(capsys, ["build", str(twin), "--out", str(again)])
    assert "runs of the same model, recipe and seed 0" in err
    assert files_of(again) == before


def test_zoo_checks_its_out_before_training(tiny_cifar, tmp_path, capsys):
    (tmp_path / "outfile").write_text("")
    err = one_line_error(capsys, ["zoo", "--models", "lenet", "--seeds", "0", "--epochs", "1", "--runs-dir",
                                  str(tmp_path / "runs"), "--out", str(tmp_path / "outfile"),
                                  "--data-dir", str(tiny_cifar[0])])
    assert "is not a folder" in err and not (tmp_path / "runs").exists()


def test_zoo_checks_every_run_folder_before_the_first_training(tiny_cifar, tiny_runs, tmp_path, capsys):
    runs_dir = tmp_path / "runs"
    taken = runs_dir / "lenet-seed1"  # the second of the two runs holds a run of other settings
    shutil.copytree(tiny_runs / "exp" / "lenet-seed0", taken)
    err = one_line_error(capsys, ["zoo", "--models", "lenet", "--seeds", "0", "1", "--epochs", "1", "--runs-dir",
                                  str(runs_dir), "--out", str(tmp_path / "out"), "--data-dir", str(tiny_cifar[0])])
    assert f"{taken} holds a run with other settings" in err
    assert sorted(p.name for p in runs_dir.iterdir()) == ["lenet-seed1"]  # lenet-seed0 was not trained
    err = one_line_error(capsys, ["zoo", "--models", "lenet", "--seeds", "0", "--runs-dir",
                                  str(tmp_path / "out" / "runs"), "--out", str(tmp_path / "out")])
    assert "is where build keeps its copies of finished runs" in err


def test_a_real_process_prints_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "results", "build", str(tmp_path / "nowhere")], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr == f"error: {tmp_path / 'nowhere'} does not exist\n"


def test_charts_are_written(built):
    out, _ = built
    for name in ("accuracy_vs_time.png", "curves.png"):
        png = (out / name).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 10_000, name


def test_the_chart_legend_names_a_precision_other_than_float32(tmp_path):
    """As the tables do: float32 unless said (the committed runs hold one mixed_bfloat16 run)."""
    from results import charts
    groups = table.group_runs(runs.load_copied(ROOT / "results"))
    precisions = {table.label({"model": g[0].model, "variant": table.variant(g)}):
                  {r.config["execution"]["precision"] for r in g} for g in groups}
    labels = charts.accuracy_vs_time(groups, tmp_path / "chart.png")
    assert len(labels) == len(groups) and any(p != {"float32"} for p in precisions.values())
    for label, (name, p) in zip(labels, precisions.items()):
        assert label.startswith(f"{name}, ") and label.endswith("".join(f", {x}" for x in sorted(p - {"float32"})))
        assert ("float32" in label) is False and ("mixed_bfloat16" in label) == ("mixed_bfloat16" in p)


def test_throughput_of_lenet_and_the_estimates_made_from_it(tmp_path):
    """A real measurement (a couple of steps), then the not-yet-run row's estimate divided by it."""
    out = tmp_path / "results"
    csv_path = out / "throughput.csv"
    assert cli.main(["throughput", "--models", "lenet", "--steps", "2", "--warmup", "1", "--out", str(csv_path)]) == 0
    (row,) = read_csv(csv_path)
    ips = float(row["images_per_second"])
    assert row["model"] == "lenet" and row["machine"] == execution.machine() and ips > 0
    assert row["command"].startswith("python -m results throughput --models lenet --batch 128 --steps 2")
    gpu = {"model": "lenet", "machine": "GPU: Example GPU", "images_per_second": "100000.0",
           "command": "by hand, for this test", "measured": "2026-01-01"}
    smaller = {"model": "resnet56", "machine": row["machine"], "images_per_second": "150.0",  # not the recipe's 128
               "command": "python -m results throughput --models resnet56 --batch 64 --steps 2", "measured": "2026-01-01"}
    slow = {"model": "resnet110", "machine": row["machine"], "images_per_second": "1.7",
            "command": "python -m results throughput --models resnet110 --steps 2", "measured": "2026-01-01"}
    runs.write_csv(csv_path, throughput.FIELDS, throughput.merge(read_csv(csv_path), [gpu, smaller, slow]))
    assert cli.main(["build", "--out", str(out)]) == 0
    rows = {r["model"]: r for r in read_csv(out / "table.csv")}
    assert len(rows) == len(models.list_models()) and {r["status"] for r in rows.values()} == {"not yet run"}
    images = 200 * (50_000 - 5_000)  # LeNet's recipe: 200 epochs, 5,000 validation images
    assert float(rows["lenet"]["estimated_hours_cpu"]) == round(images / ips / 3600, 2)
    assert float(rows["lenet"]["estimated_hours_gpu"]) == round(images / 100_000 / 3600, 2)
    assert rows["resnet20"]["cpu_measurement"] == rows["resnet20"]["gpu_measurement"] == "not measured"
    assert float(rows["resnet56"]["estimated_hours_cpu"]) == round(images / 150 / 3600, 2)
    assert rows["resnet56"]["cpu_measurement"].startswith("150 images/s at batch 64, not the recipe's 128, ")
    assert rows["resnet110"]["cpu_measurement"].startswith("1.7 images/s, ")  # tenths below ten
    assert "images/s, " in rows["lenet"]["cpu_measurement"] and "batch" not in rows["lenet"]["cpu_measurement"]
    assert "| resnet20 | 200 | step 0.1, x0.1 at 81, 122 | 128 | 0.0001 | not measured | not measured |" in \
        (out / "README.md").read_text()


def test_durations_are_minutes_then_hours_and_minutes_then_whole_hours():
    assert [report.duration(s) for s in (None, 150, 1_500, 3_600, 7_890, 99 * 3600 + 1_799, 100 * 3600,
                                         7_940_123)] == \
        ["—", "2.5 min", "25 min", "1:00 h", "2:12 h", "99:30 h", "100 h", "2,206 h"]


def test_a_throughput_list_measures_each_model_apart_past_a_failing_one(tmp_path):
    """Each model of a list in its own process (so one model's memory is not the next one's); a
    failing one is named at the end, the others measured."""
    csv_path = tmp_path / "throughput.csv"
    with pytest.raises(runs.ResultsError, match=r"measuring lenet5 \(exit status 2\) failed; .* other models' rows"):
        throughput.run(["lenet5", "lenet"], csv_path, steps=2, warmup=1, steps_per_execution=1)
    (row,) = read_csv(csv_path)
    assert row["model"] == "lenet" and float(row["images_per_second"]) > 0
    assert row["command"] == (f"python -m results throughput --models lenet --batch 128 --steps 2 --warmup 1 "
                              f"--steps-per-execution 1 --out {csv_path}")
    assert throughput.measured_batch(row) == 128


def test_a_readme_no_build_wrote_is_never_replaced(tiny_runs, tmp_path, capsys):
    from results import report

    assert report.HEADER.startswith(cli.GENERATED)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "README.md").write_text("# My notes\n")
    err = one_line_error(capsys, ["build", str(tiny_runs / "exp"), "--out", str(out)])
    assert "holds a README.md that no build wrote" in err
    assert (out / "README.md").read_text() == "# My notes\n" and sorted(p.name for p in out.iterdir()) == ["README.md"]


@pytest.mark.parametrize("header, row, why", [
    ("ep,accuracy", "1,0.5", "line 2 has no epoch"), ("epoch,accuracy", "1,0.5,oops", "line 2 has more fields"),
    ("epoch,accuracy", "1", "line 2 has fewer fields")])
def test_a_garbled_history_is_refused_before_it_is_copied(tiny_runs, tmp_path, capsys, header, row, why):
    run = tmp_path / "run"
    shutil.copytree(tiny_runs / "exp" / "lenet-seed0", run)
    (run / "history.csv").write_text(f"{header}\n{row}\n")
    out = tmp_path / "out"
    err = one_line_error(capsys, ["build", str(run), "--out", str(out)])
    assert "is not a history.csv train.py wrote" in err and why in err and not (out / "runs").exists()


def interrupted_line(capsys, argv, starts):
    """`python -m results ARGV` on Ctrl-C: exit 130 and one line, no traceback."""
    assert cli.main(argv) == 130
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(starts), lines
    return lines[0]


def test_a_build_interrupted_mid_copy_leaves_no_copy_without_its_metrics(tiny_runs, tmp_path, capsys, monkeypatch):
    real_copy = shutil.copyfile

    def interrupted_at_metrics(src, dst):
        if str(src).endswith("metrics.json"):
            raise KeyboardInterrupt
        return real_copy(src, dst)

    out = tmp_path / "results"
    monkeypatch.setattr(runs.shutil, "copyfile", interrupted_at_metrics)
    line = interrupted_line(capsys, ["build", str(tiny_runs / "exp"), "--out", str(out)], "interrupted; ")
    assert "run the same command again" in line
    assert [d.name for d in (out / "runs").iterdir() if not d.name.startswith(".")] == []
    monkeypatch.setattr(runs.shutil, "copyfile", real_copy)
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["build", str(tiny_runs / "exp"), "--out", str(out)]) == 0
    assert sorted(d.name for d in (out / "runs").iterdir()) == ["lenet-exp-seed0", "lenet-exp-seed1"]  # no hidden copy


def test_ctrl_c_in_a_throughput_list_says_what_is_kept(tmp_path, capsys, monkeypatch):
    def interrupted(command, env=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(throughput, "run_child", interrupted)
    csv_path = tmp_path / "throughput.csv"
    line = interrupted_line(capsys, ["throughput", "--models", "lenet", "resnet20", "--out", str(csv_path)],
                            f"interrupted; {csv_path} keeps the rows written before")
    assert "models not yet measured" in line

    def measure_interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(throughput, "measure", measure_interrupted)  # one model of the list: its parent says it
    assert cli.main(["throughput", "--models", "lenet", "--out", str(csv_path), "--in-list"]) == 130
    assert capsys.readouterr().err == "" and not csv_path.exists()


def test_a_second_build_into_the_same_folder_is_refused_while_one_runs(built, tmp_path, capsys):
    import os

    import runlock
    out = tmp_path / "results"
    shutil.copytree(built[0], out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with runlock.hold(out):
        assert cli.main(["build", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{out} is in use by another process (pid {os.getpid()})" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_the_zoo_command_trains_each_model_and_seed_then_builds_and_resumes(tiny_cifar, tmp_path, capsys):
    root, _ = tiny_cifar
    runs_dir, out = tmp_path / "zoo", tmp_path / "results"
    argv = ["zoo", "--models", "lenet", "--seeds", "0", "1", "--runs-dir", str(runs_dir), "--out", str(out),
            "--data-dir", str(root), "--epochs", "1", "--val-split", "40", "--batch-size", "32"]
    assert cli.main(argv) == 0
    assert sorted(p.name for p in runs_dir.iterdir()) == ["lenet-seed0", "lenet-seed1"]
    rows = [r for r in read_csv(out / "table.csv") if r["status"] != "not yet run"]
    assert len(rows) == 1 and rows[0]["runs"] == "2" and rows[0]["model"] == "lenet"
    config = json.loads((runs_dir / "lenet-seed1" / "config.json").read_text())
    assert config["command"][:5] == ["train.py", "--model", "lenet", "--seed", "1"]
    capsys.readouterr()
    assert cli.main(argv) == 0  # again: every run is read back, nothing retrained
    assert capsys.readouterr().out.count("already finished") == 2
    assert cli.main(["zoo", "--models", "nosuchnet", "--runs-dir", str(runs_dir)]) == 2
    assert "no model matches nosuchnet" in capsys.readouterr().err


def test_the_repository_readme_block_is_regenerated_and_nothing_else(built, tmp_path):
    out = tmp_path / "repo" / "results"
    shutil.copytree(built[0], out)
    readme = out.parent / "README.md"
    from results import report
    readme.write_text(f"# Title\n\nintro\n\n{report.README_START}\nstale\n{report.README_END}\n\n## Rest\n")
    assert cli.main(["build", "--out", str(out)]) == 0
    text = readme.read_text()
    assert text.startswith("# Title\n\nintro\n\n") and text.endswith(f"{report.README_END}\n\n## Rest\n")
    assert "stale" not in text and "(results/README.md)" in text
    rows = read_csv(out / "table.csv")
    assert text.count("not yet run") == sum(r["status"] == "not yet run" for r in rows)
    measured = [line for line in text.splitlines() if line.startswith("| lenet") and "not yet run" not in line]
    assert len(measured) == sum(r["status"] == "finished" for r in rows) > 0
    # The tiny runs are float32, which the headline leaves unsaid: "(2 runs)", nothing after it.
    assert all(re.search(r"\| [0-9.]+( ± [0-9.]+)? \([0-9]+ runs?\) \|", line) for line in measured), measured
    readme.write_text("# No markers\n")
    assert cli.main(["build", "--out", str(out)]) == 0
    assert readme.read_text() == "# No markers\n"


def test_the_headline_says_which_rows_had_no_validation_split_to_choose_by():
    from results import report
    row = dict(status="finished", model="lenet", variant="tricks-dp_da", epochs=200, runs=2, precision="float32",
               val_accuracy_mean=72.0, val_accuracy_std=0.3, test_accuracy_mean=72.28, test_accuracy_std=0.92,
               wall_seconds_mean=1000.0, machine="a CPU")
    chosen, last = report.headline([row, {**row, "val_accuracy_mean": None, "val_accuracy_std": None}],
                                   "results/README.md").splitlines()[-2:]
    assert "| 72.28 ± 0.92 (2 runs) |" in chosen
    assert "| 72.28 ± 0.92 (2 runs, last epoch: no validation split) |" in last


def test_the_committed_table_is_what_its_committed_runs_give(tmp_path):
    """results/ as committed regenerates to itself: nobody edited a figure by hand."""
    committed = ROOT / "results"
    if not (committed / "table.csv").is_file():
        pytest.skip("no committed table")
    out = tmp_path / "results"
    out.mkdir()
    for name in ("runs", "partial.csv", "throughput.csv"):
        if (committed / name).is_dir():
            shutil.copytree(committed / name, out / name)
        elif (committed / name).is_file():
            shutil.copy(committed / name, out / name)
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")  # its results block is regenerated too
    assert cli.main(["build", "--out", str(out)]) == 0
    for name in ("table.csv", "README.md"):
        assert (out / name).read_text() == (committed / name).read_text(), name
    assert (tmp_path / "README.md").read_text() == (ROOT / "README.md").read_text()
    scratch = tmp_path / "scratch"  # a table built elsewhere beside the same README leaves the README alone
    shutil.copytree(out, scratch, ignore=shutil.ignore_patterns("README.md", "table.csv", "*.png", ".*"))
    before = (ROOT / "README.md").read_text().replace("| resnet20 |", "| x |")  # not what build would write
    (tmp_path / "README.md").write_text(before)
    assert cli.main(["build", "--out", str(scratch)]) == 0
    assert (tmp_path / "README.md").read_text() == before and (scratch / "table.csv").is_file()


def test_the_jpeg_experiment_recompresses_only_the_training_part(tiny_cifar, monkeypatch):
    """results.jpeg_cost: both variants share labels, test set and the exact validation images; only the
    training images the loop will train on go through the JPEG round trip."""
    from results import jpeg_cost

    root, _ = tiny_cifar
    monkeypatch.setattr(jpeg_cost, "EXACT_TRAIN_IMAGES", 150)
    full = data.load_cifar10(root, verbose=False)
    variants = jpeg_cost.subsets(full, val_split=30, split_seed=0)
    exact, recompressed = variants["exact"], variants["jpeg75"]
    train_idx, val_idx = data.stratified_split(exact.y_train, 30, 0)
    np.testing.assert_array_equal(exact.x_train, full.x_train[:150])
    np.testing.assert_array_equal(recompressed.y_train, exact.y_train)
    np.testing.assert_array_equal(recompressed.x_train[val_idx], exact.x_train[val_idx])
    np.testing.assert_array_equal(recompressed.x_test, full.x_test)
    error = np.abs(recompressed.x_train[train_idx].astype(int) - exact.x_train[train_idx]).mean(axis=(1, 2, 3))
    assert (error > 0).all() and error.mean() < 60  # every image changed, none replaced by something else


def test_the_split_evaluation_parts_a_runs_validation_images_into_exact_and_recompressed(
        tiny_cifar, tmp_path, monkeypatch, capsys):
    """results.jpeg_cost split: the run's own validation images, parted at EXACT_TRAIN_IMAGES; each
    figure is the run's inference model on those images; a run of other data is refused."""
    from results import jpeg_cost

    root, _ = tiny_cifar
    run = tmp_path / "run"
    assert train.main(["--model", "lenet", "--data-dir", str(root), "--run-dir", str(run), *TINY, "--epochs", "1"]) == 0
    monkeypatch.setattr(jpeg_cost, "EXACT_TRAIN_IMAGES", 100)
    full = data.load_cifar10(root, verbose=False)
    (row,) = jpeg_cost.split_rows([run], full)
    _, val_idx = data.stratified_split(full.y_train, 40, 0)
    exact_idx, rest_idx = val_idx[val_idx < 100], val_idx[val_idx >= 100]
    assert (row["exact_images"], row["recompressed_images"]) == (len(exact_idx), len(rest_idx)) and len(exact_idx)
    model = inference.inference_model(run)
    right = lambda x, i: model.predict(x, verbose=0).argmax(1) == full.y_train[i]  # noqa: E731
    assert row["exact"] == pytest.approx(right(full.x_train[exact_idx], exact_idx).mean())
    assert row["exact_jpeg"] == pytest.approx(right(jpeg_cost.jpeg_round_trip(full.x_train[exact_idx]), exact_idx).mean())
    assert row["recompressed"] == pytest.approx(right(full.x_train[rest_idx], rest_idx).mean())
    assert row["val_all"] == pytest.approx(metrics_of(run)["val_accuracy"], abs=1 / 40 + 1e-9)
    assert f"| run | lenet | 1 | {100 * row['val_all']:.2f} |" in jpeg_cost.split_table([row])
    other = data.Cifar10(full.x_train[::-1].copy(), full.y_train[::-1].copy(), full.x_test, full.y_test, "other")
    with pytest.raises(TrainError, match="was trained on other data"):
        jpeg_cost.split_rows([run], other)
    before = (run / "metrics.json").read_bytes()
    for csv_path, message in ((run / "metrics.json", f"is in the run folder {run}, whose files it could replace"),
                              (tmp_path, "is a folder"), (tmp_path / "no" / "x.csv", "does not exist")):
        assert jpeg_cost.main(["split", str(run), "--data-dir", str(root), "--csv", str(csv_path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert (run / "metrics.json").read_bytes() == before


def test_the_backend_comparison_tabulates_each_backends_runs():
    """results.backends' table from its runs' metrics (the runs themselves: series.run_grid, as the
    other series; a backend's training, tests/test_backends.py)."""
    from results import backends

    def metrics(val, test, speed, precision="float32"):
        return {"val_accuracy": val, "test_accuracy": test, "epochs_completed": 10, "wall_seconds": 60.0,
                "train_images_per_second": speed, "execution": {"precision": precision}}

    assert [backends.variant("tensorflow", p) for p in backends.PRECISIONS] == ["tensorflow", "tensorflow-mixed"]
    results = {"tensorflow": [("a", metrics(0.5, 0.52, 8000.0)), ("b", metrics(0.6, 0.50, 9000.0))],
               "tensorflow-mixed": [("c", metrics(0.55, 0.51, 12000.0, "mixed_bfloat16"))],
               "jax": [("d", metrics(0.55, 0.51, 2500.0))]}
    rows = backends.rows(results)
    assert [(r["backend"], r["precision"]) for r in rows] == [
        ("tensorflow", "float32"), ("tensorflow", "mixed_bfloat16"), ("jax", "float32")]
    assert (rows[0]["val_mean"], rows[0]["val_std"], rows[0]["test_mean"]) == (55.0, 7.07, 51.0)
    assert rows[0]["train_images_per_second"] == 8500 and rows[2]["runs"] == 1 and rows[2]["wall_minutes"] == 1.0
    table = backends.table(rows, "lenet")
    assert "| tensorflow | float32 | 55.00 ± 7.07 | 51.00 ± 1.41 | 2 | 10 | 8,500 | 2.0 |" in table
    assert "| tensorflow | mixed_bfloat16 | 55.00 | 51.00 | 1 | 10 | 12,000 | 1.0 |" in table
    rows[2]["train_images_per_second"] = None  # runs that did not record it
    assert "| jax | float32 | 55.00 | 51.00 | 1 | 10 | not recorded | 1.0 |" in backends.table(rows, "lenet")


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "--epochs must be >= 1"), (["--seeds", "0", "0"], "--seeds without repeats"),
    (["--model", "lenet5"], "unknown model 'lenet5'")])
def test_the_backend_comparison_refuses_bad_flags_before_any_backend_starts(flags, message, tmp_path, capsys):
    from results import backends

    with pytest.raises(SystemExit) as e:
        backends.main(["--out", str(tmp_path / "out"), *flags])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err.splitlines()[-1] and not (tmp_path / "out").exists()


def test_ctrl_c_in_the_backend_comparison_says_how_to_resume_once(tmp_path, capsys, monkeypatch):
    """The parent prints errors.SERIES_INTERRUPTED once; a child interrupted so (--here) says nothing."""
    import errors
    from results import backends

    def interrupted(command, env=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(backends, "run_child", interrupted)
    assert backends.main(["--out", str(tmp_path / "out"), "--epochs", "1"]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines() == [errors.SERIES_INTERRUPTED]

    def train_interrupted(a):
        raise KeyboardInterrupt

    monkeypatch.setattr(backends, "train_here", train_interrupted)
    assert backends.main(["--here", "--out", str(tmp_path / "out"), "--epochs", "1"]) == 130
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("folder", ["backends", "precision/lenet", "precision/resnet20"])
def test_committed_comparisons_are_what_their_run_files_give(folder):
    """Each committed results.csv of results.backends is its committed runs' metrics, tabulated."""
    from results import backends
    out = ROOT / "results" / folder
    with open(out / "results.csv") as f:
        committed = list(csv.DictReader(f))
    grouped = {}
    for run in sorted((out / "runs").iterdir()):
        variant = run.name.rpartition("-seed")[0]
        grouped.setdefault(variant, []).append((run, json.loads((run / "metrics.json").read_text())))
    rows = backends.rows(grouped)
    assert len(rows) == len(committed)
    for row in committed:
        match = next(r for r in rows if (r["backend"], r.get("precision")) == (row["backend"], row.get("precision", "float32")))
        for key, value in row.items():
            if key not in ("backend", "precision"):
                assert float(match[key]) == pytest.approx(float(value), abs=1e-9), (folder, row["backend"], key)


def test_the_committed_crosscheck_table_is_what_its_run_files_give(tmp_path, capsys):
    """results/crosscheck/results.csv is `results.crosscheck summary` of the committed runs it names
    (its own runs/ and the 200-epoch train.py run in results/runs/), byte for byte."""
    from results import crosscheck
    folder = ROOT / "results" / "crosscheck"
    runs_given = sorted(str(p) for p in (folder / "runs").iterdir()) + [str(ROOT / "results" / "runs" / "resnet20-seed0")]
    assert crosscheck.main(["summary", *runs_given, "--csv", str(tmp_path / "results.csv")]) == 0
    assert (tmp_path / "results.csv").read_text() == (folder / "results.csv").read_text()
    table = capsys.readouterr().out
    readme = (folder / "README.md").read_text()
    for line in table.splitlines()[2:]:  # each row of the summary appears in the README as it prints
        assert line in readme, line
