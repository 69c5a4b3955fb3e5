"""CIFAR-100 through every entry point, on tiny archives in the official format (no real copy is
reachable here): training with fine and coarse labels, the inference model, the ensemble, and the
errors a user can cause."""

import json

import keras
import numpy as np
import pytest

import ensemble
import train
from cifar_files import write_archive_of, write_cifar100_folder


@pytest.fixture(scope="module")
def tiny100(tmp_path_factory):
    """2 training and 1 test image per fine class, as an archive."""
    folder, arrays = write_cifar100_folder(tmp_path_factory.mktemp("c100"))
    archive = tmp_path_factory.mktemp("c100-archive") / "cifar-100-python.tar.gz"
    write_archive_of(folder, archive)
    return archive, arrays


def args(archive, run, *extra):
    return ["--model", "lenet", "--dataset", "cifar100", "--data-dir", str(archive), "--run-dir", str(run),
            "--batch-size", "32", "--epochs", "1", *extra]


@pytest.fixture(scope="module")
def runs(tiny100, tmp_path_factory):
    archive, _ = tiny100
    base = tmp_path_factory.mktemp("c100-runs")
    done = {}
    for labels, val in (("fine", 100), ("coarse", 20)):
        run = base / labels
        assert train.main(args(archive, run, "--labels", labels, "--val-split", str(val))) == 0
        done[labels] = run
    return done


@pytest.mark.parametrize("labels, classes", [("fine", 100), ("coarse", 20)])
def test_a_cifar100_run_has_a_classifier_per_label_set_and_records_it(labels, classes, runs):
    run = runs[labels]
    config = json.loads((run / "config.json").read_text())
    assert config["settings"]["dataset"] == "cifar100" and config["settings"]["labels"] == labels
    assert config["sources"]["dataset"] == "flag"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_images"] == 100 and metrics["train_images"] == 200 - (100 if labels == "fine" else 20)
    assert keras.saving.load_model(run / "best.keras").output_shape == (None, classes)
    model = keras.saving.load_model(run / "inference.keras")
    probs = model.predict(np.zeros((3, 32, 32, 3), np.uint8), verbose=0)
    assert probs.shape == (3, classes) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_the_ensemble_of_cifar100_runs_uses_their_data_and_class_names(runs, tiny100, tmp_path, capsys):
    archive, (_, _, _, x_test, fine_test, _) = tiny100
    out = tmp_path / "e.json"
    assert ensemble.main([str(runs["fine"]), "--data-dir", str(archive), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    member = ensemble.load_member(runs["fine"])
    probs = ensemble.predict_probs(member, x_test)
    assert report["ensemble"]["test_accuracy"] == pytest.approx(ensemble.accuracy(probs, fine_test))
    assert member.class_names[0] == "apple"


def test_mixing_data_sets_or_a_kaggle_submission_of_cifar100_is_refused(runs, tiny100, tmp_path, capsys):
    archive, _ = tiny100
    assert ensemble.main([str(runs["fine"]), str(runs["coarse"]), "--data-dir", str(archive),
                          "--out", str(tmp_path / "e.json")]) == 2
    assert "members were trained on different data sets" in capsys.readouterr().err
    kaggle = tmp_path / "kaggle"
    kaggle.mkdir()
    assert ensemble.main([str(runs["fine"]), "--kaggle-test-dir", str(kaggle), "--out", str(tmp_path / "k.json"),
                          "--submission", str(tmp_path / "s.csv")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and not (tmp_path / "s.csv").exists()


def one_error(capsys):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_errors_a_user_can_cause_are_one_line(runs, tiny100, tiny_archive, tmp_path, capsys):
    archive, _ = tiny100
    cifar10, _ = tiny_archive
    assert train.main(args(cifar10, tmp_path / "a", "--val-split", "100")) == 2
    assert "holds CIFAR-10 (cifar-10-batches-py/), not CIFAR-100: use --dataset cifar10" in one_error(capsys)
    assert train.main([*args(archive, tmp_path / "b", "--val-split", "100")[:2], "--data-dir", str(archive),
                       "--run-dir", str(tmp_path / "b"), "--labels", "coarse"]) == 2
    assert "CIFAR-10 has fine labels, not 'coarse'" in one_error(capsys)
    assert train.main(args(archive, tmp_path / "c", "--val-split", "50")) == 2
    assert "val split must be 0 (none) or a whole number of images from 100 (one per class)" in one_error(capsys)
    # Resuming with the other label set is another run.
    assert train.main(args(archive, runs["fine"], "--labels", "coarse", "--val-split", "100")) == 2
    assert "holds a run with other settings (labels: 'fine' there, 'coarse' now" in one_error(capsys)


def test_a_cifar100_run_fine_tuned_from_a_cifar10_run_gets_a_new_head(tiny100, tiny_cifar, tmp_path):
    archive, _ = tiny100
    root10, _ = tiny_cifar
    source = tmp_path / "c10"
    assert train.main(["--model", "lenet", "--data-dir", str(root10), "--run-dir", str(source), "--epochs", "1",
                       "--val-split", "40", "--batch-size", "32"]) == 0
    run = tmp_path / "c100"
    assert train.main(args(archive, run, "--val-split", "100", "--init-from", str(source))) == 0
    record = json.loads((run / "config.json").read_text())["init_from"]
    assert record["head_reinitialised"] is True and record["path"].endswith("best.keras")
    before = keras.saving.load_model(source / "best.keras")
    after = keras.saving.load_model(run / "best.keras")
    assert after.output_shape == (None, 100) and before.output_shape == (None, 10)
    assert after.get_layer("conv1").kernel.shape == before.get_layer("conv1").kernel.shape
