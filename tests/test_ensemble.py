"""Tests of ensemble.py: the arithmetic, weights, greedy selection, the evaluation end to end on two
tiny trained runs (different preprocessing), the Kaggle submission and --predict."""

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import data
import ensemble
import loop
from cifar_files import images_for, png_bytes, write_png_folder

ROOT = Path(__file__).resolve().parents[1]
CLASSES = set(data.CLASS_NAMES)


@pytest.fixture(scope="session")
def tiny_runs(tiny_cifar, tmp_path_factory):
    """Two finished lenet runs on the tiny set: standardize / seed 0 and scale / seed 1."""
    root, (x_train, y_train, x_test, y_test) = tiny_cifar
    dataset = data.Cifar10(x_train, y_train, x_test, y_test, source=str(root))  # no cache written
    base = tmp_path_factory.mktemp("ensemble-runs")
    runs = []
    for preprocess, seed in (("standardize", 0), ("scale", 1)):
        run = base / f"lenet-{preprocess}"
        loop.train("lenet", loaded=dataset, run_dir=run, epochs=2, lr=0.05, val_split=40, batch_size=32,
                    preprocess=preprocess, seed=seed, verbose=0)
        runs.append(run)
    return runs


@pytest.fixture(scope="session")
def members(tiny_runs):
    return [ensemble.load_member(r) for r in tiny_runs]


def read_json(path):
    return json.loads(Path(path).read_text())


def softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


_models = {}


def reference_probs(run, images):
    """What a run predicts, computed without ensemble.py: Keras' predict on data.make_dataset."""
    if run not in _models:
        _models[run] = keras.saving.load_model(run / "best.keras")
    mode = read_json(run / "config.json")["settings"]["preprocess"]
    ds = data.make_dataset(images, np.zeros(len(images), np.uint8), 64, preprocess_mode=mode)
    return softmax(_models[run].predict(ds, verbose=0).astype(np.float64))


def one_line_error(capsys):
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


# --------------------------------------------------------------------------- arithmetic

P_A = np.array([[0.6, 0.4], [0.1, 0.9], [0.45, 0.55]])
P_B = np.array([[0.2, 0.8], [0.3, 0.7], [0.9, 0.1]])
LABELS = np.array([0, 1, 1])


def test_combine_weighting_changes_the_argmax():
    uniform = ensemble.combine([P_A, P_B])
    np.testing.assert_allclose(uniform, [[0.4, 0.6], [0.2, 0.8], [0.675, 0.325]])
    assert ensemble.accuracy(uniform, LABELS) == pytest.approx(1 / 3)  # only image 1 right

    weighted = ensemble.combine([P_A, P_B], [4, 1])  # normalised to 0.8, 0.2
    np.testing.assert_allclose(weighted, [[0.52, 0.48], [0.14, 0.86], [0.54, 0.46]])
    assert ensemble.accuracy(weighted, LABELS) == pytest.approx(2 / 3)  # image 0 flips to class 0
    np.testing.assert_allclose(ensemble.combine([P_A, P_B], [0, 1]), P_B)


@pytest.mark.parametrize("weights", [[1], [1, -1], [0, 0], [1, float("nan")]])
def test_combine_refuses_unusable_weights(weights):
    with pytest.raises(ValueError):
        ensemble.combine([P_A, P_B], weights)


def test_weights_from_validation_accuracy():
    np.testing.assert_allclose(ensemble.resolve_weights("accuracy", [0.6, 0.2]), [0.75, 0.25])
    np.testing.assert_allclose(ensemble.resolve_weights("uniform", [0.6, 0.2]), [0.5, 0.5])
    np.testing.assert_allclose(ensemble.resolve_weights("1,3", [None, None]), [0.25, 0.75])
    with pytest.raises(ensemble.EnsembleError, match="runs/b has none"):
        ensemble.resolve_weights("accuracy", [0.6, None], ["runs/a", "runs/b"])
    with pytest.raises(ensemble.EnsembleError, match="gives 3 weights for 2 run"):
        ensemble.resolve_weights("1,2,3", [0.6, 0.2])


def test_member_validation_accuracy_is_the_checkpoints(tiny_runs, members):
    metrics = read_json(tiny_runs[0] / "metrics.json")
    assert members[0].val_accuracy == metrics["val_accuracy"]
    assert ensemble.load_member(tiny_runs[0], "last").val_accuracy == metrics["last_val_accuracy"]
    assert members[1].preprocess == "scale" and members[0].preprocess == "standardize"


def test_greedy_selection_adds_the_best_and_keeps_the_best_prefix():
    labels = np.zeros(4, int)

    def member(p0):
        return np.stack([p0, 1 - np.asarray(p0)], axis=1)

    probs = [member([0.9, 0.9, 0.9, 0.4]),  # 3/4 right, confident
             member([0.3, 0.3, 0.3, 0.3]),  # all wrong
             member([0.55, 0.55, 0.4, 0.9])]  # 3/4 right, others: ties with 0 on accuracy, loses on NLL
    selection = ensemble.greedy_select(probs, labels)
    assert [s["added"] for s in selection.steps] == [0, 2, 1]
    assert [s["val_accuracy"] for s in selection.steps] == [0.75, 1.0, 1.0]
    assert selection.chosen == [0, 2]  # adding 1 keeps the accuracy but worsens the NLL
    assert selection.val_accuracy == 1.0
    weighted = ensemble.greedy_select(probs, labels, [1, 1, 0])  # weight 0: never a candidate
    assert [s["added"] for s in weighted.steps] == [0, 1] and weighted.chosen == [0]
    assert weighted.val_accuracy == 0.75


# --------------------------------------------------------------------------- end to end

def test_predict_probs_uses_each_members_preprocessing(tiny_cifar, tiny_runs, members):
    _, (_, _, x_test, _) = tiny_cifar
    for run, member in zip(tiny_runs, members):
        np.testing.assert_allclose(ensemble.predict_probs(member, x_test, batch_size=16),
                                   reference_probs(run, x_test), atol=1e-5)
        flipped = (reference_probs(run, x_test) + reference_probs(run, x_test[:, :, ::-1])) / 2
        np.testing.assert_allclose(ensemble.predict_probs(member, x_test, tta=True), flipped, atol=1e-5)
    # The same images through the other member's preprocessing give other probabilities.
    standardized = data.preprocess(x_test, "standardize").numpy()
    wrong = softmax(members[1].model.predict(standardized, verbose=0).astype(np.float64))
    assert np.abs(wrong - reference_probs(tiny_runs[1], x_test)).max() > 1e-3


def test_end_to_end_matches_each_runs_metrics(tiny_cifar, tiny_runs, tmp_path, capsys):
    root, (_, _, x_test, y_test) = tiny_cifar
    out = tmp_path / "ens.json"
    assert ensemble.main([*map(str, tiny_runs), "--data-dir", str(root), "--out", str(out),
                          "--weights", "accuracy"]) == 0
    report = read_json(out)
    val = [read_json(r / "metrics.json")["val_accuracy"] for r in tiny_runs]
    for run, m, v in zip(tiny_runs, report["members"], val):
        metrics = read_json(run / "metrics.json")
        assert m["run_dir"] == str(run) and m["model"] == "lenet"
        assert m["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
        assert m["val_accuracy"] == v
        assert m["weight"] == pytest.approx(v / sum(val))
    assert [m["preprocess"] for m in report["members"]] == ["standardize", "scale"]
    expected = ensemble.accuracy(sum(w / sum(val) * reference_probs(r, x_test) for r, w in zip(tiny_runs, val)),
                                 y_test)
    assert report["ensemble"]["test_accuracy"] == pytest.approx(expected)
    assert report["tta"] == "none" and report["weights"] == "accuracy" and report["test_images"] == len(y_test)
    table = capsys.readouterr().out
    assert str(tiny_runs[1]) in table and f"test accuracy {expected:.4f}" in table


def test_tta_matches_the_runs_own_flip_measurement(tiny_cifar, tiny_runs, tmp_path):
    """train.py measures flip TTA too. (On the tiny set, whose class is a colour, flipping rarely
    changes an answer; test_predict_probs_uses_each_members_preprocessing checks the probabilities.)"""
    root, _ = tiny_cifar
    out = tmp_path / "ens.json"
    assert ensemble.main([*map(str, tiny_runs), "--data-dir", str(root), "--out", str(out), "--tta"]) == 0
    report = read_json(out)
    assert report["tta"] == "mean of the image and its horizontal flip"
    for run, m in zip(tiny_runs, report["members"]):
        assert m["test_accuracy"] == pytest.approx(read_json(run / "metrics.json")["test_accuracy_flip_tta"])


def test_greedy_selection_on_the_runs_validation_split(tiny_cifar, tiny_runs, tmp_path):
    root, (x_train, y_train, x_test, y_test) = tiny_cifar
    out = tmp_path / "ens.json"
    assert ensemble.main([*map(str, tiny_runs), "--data-dir", str(root), "--out", str(out),
                          "--select", "greedy"]) == 0
    report = read_json(out)
    # The split was reproduced: each best.keras scores what training measured on it.
    for run, m in zip(tiny_runs, report["members"]):
        assert m["val_accuracy_measured"] == pytest.approx(read_json(run / "metrics.json")["val_accuracy"])
    _, val_idx = data.stratified_split(y_train, 40, 0)
    chosen = [tiny_runs[[str(r) for r in tiny_runs].index(n)] for n in report["selection"]["chosen"]]
    assert 1 <= len(chosen) <= 2 and report["ensemble"]["members"] == report["selection"]["chosen"]
    val_probs = np.mean([reference_probs(r, x_train[val_idx]) for r in chosen], axis=0)
    assert report["selection"]["val_accuracy"] == pytest.approx(ensemble.accuracy(val_probs, y_train[val_idx]))
    test_probs = np.mean([reference_probs(r, x_test) for r in chosen], axis=0)
    assert report["ensemble"]["test_accuracy"] == pytest.approx(ensemble.accuracy(test_probs, y_test))
    unchosen = [m for m in report["members"] if m["run_dir"] not in report["selection"]["chosen"]]
    assert all(m["weight"] is None for m in unchosen)


def _copy_run(run, dest, edit=None, remove=(), write=None):
    shutil.copytree(run, dest)
    if edit:
        config = read_json(dest / "config.json")
        edit(config)
        (dest / "config.json").write_text(json.dumps(config))
    for name in remove:
        (dest / name).unlink()
    for name, text in (write or {}).items():
        (dest / name).write_text(text)
    return dest


def _other_seed(config):
    config["settings"]["split_seed"] = 1
    config["data"]["val_indices_sha256"] = "0" * 64


def _other_data(config):
    config["data"]["val_indices_sha256"] = "0" * 64


def _unfinished(config):
    config["settings"]["epochs"] = 30


def _make(path, file=False):
    path.write_bytes(b"an image") if file else path.mkdir()
    return path


@pytest.mark.parametrize("case, message", [
    ("missing", "run folder {tmp}/nope does not exist"),
    ("unfinished", "is not finished (2 of 30 epochs completed)"),
    ("garbled_config", "{tmp}/b/config.json is damaged (holds a list, not an object)"),
    ("nan_val", "metrics.json: val_accuracy is nan, not an accuracy between 0 and 1"),
    ("out_folder", "cannot write {tmp}: it is a folder"),
    ("out_in_run", "cannot write {tmp}/b/metrics.json: it is inside the run folder {tmp}/b"),
    ("same_outputs", "--out and --submission are the same file"),
    ("out_is_predict", "cannot write {tmp}/cat.png: it is the --predict input itself"),
    ("out_in_predict", "cannot write {tmp}/imgs/p.json: it is inside the --predict input {tmp}/imgs"),
    ("out_in_kaggle", "cannot write {tmp}/k/ens.json: it is inside the --kaggle-test-dir input {tmp}/k"),
    ("submission_in_kaggle", "cannot write {tmp}/k/s.csv: it is inside the --kaggle-test-dir input {tmp}/k"),
    ("out_in_data", "it is inside the --data-dir input"),
    ("no_best", "has no best.keras, which train.py keeps in such a finished run: the folder is damaged"),
    ("bad_weights", "--weights must be accuracy, uniform or comma-separated numbers"),
    ("weight_count", "--weights 1,2,3 gives 3 weights for 2 run(s)"),
    ("no_metrics", "--weights accuracy needs each run's validation accuracy"),
    ("split_seed", "the runs do not share one validation split"),
    ("other_data", "differs from the one {tmp}/b held out"),
    ("null_data", "{tmp}/b/config.json is damaged (its data entry holds NoneType, not an object)"),
    ("kaggle_missing", "{tmp}/kaggle is not a folder"),
    ("unknown_flag", "unrecognized arguments: --bogus"),
    ("submission_folder", "cannot write {tmp}/no/s.csv: folder {tmp}/no does not exist"),
])
def test_errors_are_one_line_with_exit_2(case, message, tiny_cifar, tiny_runs, tmp_path, capsys):
    root, _ = tiny_cifar
    a, b = map(str, tiny_runs)
    b_copy = lambda **kw: str(_copy_run(tiny_runs[1], tmp_path / "b", **kw))  # noqa: E731
    argv = {
        "missing": lambda: [a, str(tmp_path / "nope")],
        "unfinished": lambda: [a, b_copy(edit=_unfinished)],
        "garbled_config": lambda: [a, b_copy(write={"config.json": "[]"})],
        "nan_val": lambda: [a, b_copy(write={"metrics.json": json.dumps(
            {**read_json(tiny_runs[1] / "metrics.json"), "val_accuracy": float("nan")})})],
        "out_folder": lambda: [a, "--out", str(tmp_path)],
        "out_in_run": lambda: [a, b_copy(), "--out", str(tmp_path / "b" / "metrics.json")],
        "same_outputs": lambda: [a, "--kaggle-test-dir", str(tmp_path / "k"),
                                 "--submission", str(tmp_path / "ens.json")],
        "out_is_predict": lambda: [a, "--predict", str(_make(tmp_path / "cat.png", file=True)),
                                   "--out", str(tmp_path / "cat.png")],
        "out_in_predict": lambda: [a, "--predict", str(_make(tmp_path / "imgs")),
                                   "--out", str(tmp_path / "imgs" / "p.json")],
        "out_in_kaggle": lambda: [a, "--kaggle-test-dir", str(_make(tmp_path / "k")),
                                  "--out", str(tmp_path / "k" / "ens.json")],
        "submission_in_kaggle": lambda: [a, "--kaggle-test-dir", str(_make(tmp_path / "k")),
                                         "--submission", str(tmp_path / "k" / "s.csv")],
        "out_in_data": lambda: [a, "--out", str(root / "ens.json")],
        "no_best": lambda: [a, b_copy(remove=["best.keras"])],
        "bad_weights": lambda: [a, b, "--weights", "heavy"],
        "weight_count": lambda: [a, b, "--weights", "1,2,3"],
        "no_metrics": lambda: [a, b_copy(remove=["metrics.json"]), "--weights", "accuracy"],
        "split_seed": lambda: [a, b_copy(edit=_other_seed), "--select", "greedy"],
        "other_data": lambda: [b_copy(edit=_other_data), "--select", "greedy"],
        "null_data": lambda: [b_copy(edit=lambda c: c.update(data=None)), "--select", "greedy"],
        "kaggle_missing": lambda: [a, "--kaggle-test-dir", str(tmp_path / "kaggle")],
        "unknown_flag": lambda: [a, "--bogus"],
        "submission_folder": lambda: [a, "--kaggle-test-dir", str(tmp_path / "k"),
                                      "--submission", str(tmp_path / "no" / "s.csv")],
    }[case]()
    out = tmp_path / "ens.json"
    given_out = ["--out", str(out)] if "--out" not in argv else []
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert ensemble.main([*argv, "--data-dir", str(root), *given_out]) == 2
    assert message.format(tmp=tmp_path) in one_line_error(capsys)
    assert not out.exists()
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # nothing written or left


def test_error_in_a_real_process_has_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "ensemble.py", str(tmp_path / "nope")], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env=os.environ.copy())
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == f"error: run folder {tmp_path / 'nope'} does not exist"
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- Kaggle and --predict

def kaggle_folder(path, ids, seed=0):
    """Images of random classes (their colour shows it) named <id>.png, written in shuffled order;
    returns {id: image}. The tiny runs tell these apart, so a row given another image's label shows."""
    rng = np.random.default_rng(seed)
    images = images_for(rng.integers(0, 10, len(ids)), rng)
    write_png_folder(path, images, [f"{i}.png" for i in ids], seed=seed)
    return dict(zip(ids, images))


def expected_labels(runs, by_id):
    ids = sorted(by_id)
    probs = np.mean([reference_probs(r, np.stack([by_id[i] for i in ids])) for r in runs], axis=0)
    return {i: data.CLASS_NAMES[c] for i, c in zip(ids, probs.argmax(1))}, dict(zip(ids, probs.max(1)))


def read_submission(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], [(int(i), label) for i, label in rows[1:]]


def test_submission_format(tiny_cifar, tiny_runs, tmp_path, capsys):
    root, _ = tiny_cifar
    by_id = kaggle_folder(tmp_path / "test", range(1, 26))
    sub, out = tmp_path / "out" / "submission.csv", tmp_path / "ens.json"
    sub.parent.mkdir()
    assert ensemble.main([*map(str, tiny_runs), "--data-dir", str(root), "--out", str(out),
                          "--kaggle-test-dir", str(tmp_path / "test"), "--submission", str(sub)]) == 0
    header, rows = read_submission(sub)
    assert header == ["id", "label"]
    assert [i for i, _ in rows] == list(range(1, 26))  # numeric order (10 after 9), each id once
    assert {label for _, label in rows} <= CLASSES
    labels, _ = expected_labels(tiny_runs, by_id)
    assert len(set(labels.values())) >= 3  # else the next line could not tell rows apart
    assert dict(rows) == labels  # each row is the prediction for the image of that name
    assert os.listdir(sub.parent) == ["submission.csv"]  # no temporary file left
    assert read_json(out)["submission"]["images"] == 25
    assert "img/s" in capsys.readouterr().out


def bad_kaggle_folder(path):
    good = [i for i in range(1, 26) if i != 7]
    by_id = kaggle_folder(path, good)
    (path / "26.png").write_bytes(png_bytes(np.zeros((16, 16, 3), np.uint8)))
    (path / "27.png").write_bytes(png_bytes(np.zeros((32, 32), np.uint8)))
    (path / "7.png").write_text("not an image")
    (path / "cat.png").write_bytes(png_bytes(np.zeros((32, 32, 3), np.uint8)))
    return by_id


def test_bad_files_are_all_reported_and_nothing_is_written(tiny_cifar, tiny_runs, tmp_path, capsys):
    root, _ = tiny_cifar
    bad_kaggle_folder(tmp_path / "test")
    sub, out = tmp_path / "out" / "submission.csv", tmp_path / "ens.json"
    sub.parent.mkdir()
    assert ensemble.main([*map(str, tiny_runs), "--data-dir", str(root), "--out", str(out),
                          "--kaggle-test-dir", str(tmp_path / "test"), "--submission", str(sub)]) == 2
    err = one_line_error(capsys)
    for reported in ("7.png (not a PNG file)", "26.png (16x16, not 32x32)", "27.png (greyscale, not RGB)",
                     "cat.png (name is not <integer>.png)", "4 bad file(s)", "--skip-bad"):
        assert reported in err
    assert os.listdir(sub.parent) == [] and not out.exists()  # checked before any work


def test_a_submission_failing_midway_leaves_the_report_and_submission_as_they_were(tiny_cifar, tiny_runs, tmp_path,
                                                                                  capsys):
    """An image whose data is cut off is found only while predicting, after the evaluation."""
    root, _ = tiny_cifar
    kaggle_folder(tmp_path / "test", range(1, 13))
    whole = (tmp_path / "test" / "5.png").read_bytes()
    (tmp_path / "test" / "5.png").write_bytes(whole[:60])
    sub, out = tmp_path / "submission.csv", tmp_path / "ens.json"
    sub.write_text("id,label\n1,cat\n")
    out.write_text('{"earlier": "report"}')
    assert ensemble.main([*map(str, tiny_runs), "--data-dir", str(root), "--out", str(out),
                          "--kaggle-test-dir", str(tmp_path / "test"), "--submission", str(sub)]) == 2
    assert "5.png (does not decode" in one_line_error(capsys)
    assert sub.read_text() == "id,label\n1,cat\n" and out.read_text() == '{"earlier": "report"}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ens.json", "submission.csv", "test"]


def test_skip_bad_writes_the_good_ones(tiny_cifar, tiny_runs, tmp_path, capsys):
    root, _ = tiny_cifar
    by_id = bad_kaggle_folder(tmp_path / "test")
    sub, out = tmp_path / "submission.csv", tmp_path / "ens.json"
    assert ensemble.main([*map(str, tiny_runs), "--data-dir", str(root), "--out", str(out), "--skip-bad",
                          "--kaggle-test-dir", str(tmp_path / "test"), "--submission", str(sub)]) == 0
    header, rows = read_submission(sub)
    assert header == ["id", "label"] and [i for i, _ in rows] == sorted(by_id)
    assert dict(rows) == expected_labels(tiny_runs, by_id)[0]
    assert "Skipping 4 bad file(s): 7.png" in capsys.readouterr().out
    assert {s["file"] for s in read_json(out)["submission"]["skipped"]} == {"7.png", "26.png", "27.png", "cat.png"}


def test_images_that_fail_to_decode_are_caught_while_streaming(tiny_runs, members, tmp_path):
    """A PNG whose header is fine but whose data is cut off passes the up-front check."""
    by_id = kaggle_folder(tmp_path / "test", range(1, 13))
    for i in (5, 11):
        whole = (tmp_path / "test" / f"{i}.png").read_bytes()
        (tmp_path / "test" / f"{i}.png").write_bytes(whole[:60])
    assert ensemble.scan_images(tmp_path / "test", kaggle_names=True)[1] == []
    sub = tmp_path / "out" / "submission.csv"
    sub.parent.mkdir()
    with pytest.raises(ensemble.EnsembleError, match=r"2 bad file\(s\) in .*: 5.png \(does not decode.*11.png"):
        ensemble.write_submission(members, None, tmp_path / "test", sub, batch_size=4)
    assert os.listdir(sub.parent) == []
    ensemble.write_submission(members, None, tmp_path / "test", sub, batch_size=4, skip_bad=True)
    assert [i for i, _ in read_submission(sub)[1]] == [i for i in by_id if i not in (5, 11)]


def test_folder_is_read_in_batches(tiny_runs, members, tmp_path, monkeypatch):
    kaggle_folder(tmp_path / "test", range(1, 26))
    seen, real = [], ensemble.predict_probs

    def counting(member, images, **kwargs):
        seen.append((member.name, len(images)))
        return real(member, images, **kwargs)

    monkeypatch.setattr(ensemble, "predict_probs", counting)
    ensemble.write_submission(members, None, tmp_path / "test", tmp_path / "s.csv", batch_size=8)
    for m in members:
        sizes = [n for name, n in seen if name == m.name]
        assert sizes == [8, 8, 8, 1]  # never more than a batch of images at a time
    assert len(read_submission(tmp_path / "s.csv")[1]) == 25


def test_progress_line_reports_images_per_second():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    progress = ensemble.Progress(300, "predicting test/", stream)
    progress.last -= 1  # as if a second had passed since the last line
    progress.update(120)
    line = stream.getvalue()
    assert line.startswith("\r  predicting test/: 120 / 300 images (40.0%), ") and line.endswith(" img/s")
    progress.update(150)  # too soon after the last line: nothing new
    assert stream.getvalue() == line


def test_predict_one_file_and_a_folder(tiny_runs, tmp_path, capsys):
    by_id = kaggle_folder(tmp_path / "imgs", range(1, 13))
    labels, probs = expected_labels(tiny_runs, by_id)
    assert ensemble.main([*map(str, tiny_runs), "--predict", str(tmp_path / "imgs" / "3.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    name, label, p = lines[-1].split()
    assert name == str(tmp_path / "imgs" / "3.png") and label == labels[3]
    assert float(p) == pytest.approx(probs[3], abs=1e-4)

    assert ensemble.main([*map(str, tiny_runs), "--predict", str(tmp_path / "imgs")]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.endswith(tuple("0123456789"))]
    assert [r[0] for r in rows] == [f"{i}.png" for i in range(1, 13)]  # natural order
    assert [r[1] for r in rows] == [labels[i] for i in range(1, 13)]
    np.testing.assert_allclose([float(r[2]) for r in rows], [probs[i] for i in range(1, 13)], atol=1e-4)


def test_a_member_giving_non_finite_probabilities_is_refused(members):
    """argmax of NaN is 0: without the check every image would be an airplane, silently."""
    import dataclasses

    inputs = keras.Input(data.IMAGE_SHAPE, dtype="uint8")
    nan = keras.layers.Lambda(lambda t: keras.ops.full((keras.ops.shape(t)[0], 10), float("nan")))(inputs)
    broken = dataclasses.replace(members[0], inference=keras.Model(inputs, nan), _forward={})
    images = np.zeros((3, *data.IMAGE_SHAPE), np.uint8)
    with pytest.raises(ensemble.EnsembleError, match="gives non-finite probabilities"):
        ensemble.predict_probs(broken, images)
    assert np.isfinite(ensemble.predict_probs(members[0], images)).all()
