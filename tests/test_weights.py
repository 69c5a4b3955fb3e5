"""Weights: create_model(weights=...) from files, URLs and PRETRAINED; train.py --init-from."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

import models
import runfolder
import train
from models import registry


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_same_weights(a, b):
    assert len(a.weights) == len(b.weights)
    for va, vb in zip(a.weights, b.weights):
        assert va.path == vb.path
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(va), keras.ops.convert_to_numpy(vb), err_msg=va.path)


@pytest.fixture(scope="module")
def lenet_files(tmp_path_factory):
    """A LeNet with weights no fresh build has, saved as .weights.h5 and as .keras."""
    folder = tmp_path_factory.mktemp("lenet-files")
    model = models.create_model("lenet")
    model.set_weights([w + 0.5 for w in model.get_weights()])
    model.save_weights(folder / "lenet.weights.h5")
    model.save(folder / "lenet.keras")
    return model, folder / "lenet.weights.h5", folder / "lenet.keras"


def test_a_weights_h5_and_a_keras_file_give_the_same_weights(lenet_files):
    source, h5, keras_file = lenet_files
    from_h5 = models.create_model("lenet", weights=h5)
    assert_same_weights(from_h5, source)
    assert_same_weights(models.create_model("lenet", weights=str(keras_file)), source)
    assert from_h5.name == "lenet"


def test_a_url_is_downloaded_once_into_keras_home(lenet_files, tmp_path, capsys):
    source, h5, _ = lenet_files
    published = tmp_path / f"lenet-{tmp_path.name}.weights.h5"  # the session's KERAS_HOME is shared: a unique name
    shutil.copyfile(h5, published)
    url = {"url": published.as_uri(), "sha256": sha256(published)}
    assert_same_weights(models.create_model("lenet", weights=url), source)
    cached = Path(os.environ["KERAS_HOME"]) / registry.WEIGHTS_CACHE_SUBDIR / published.name
    assert cached.is_file() and sha256(cached) == url["sha256"]
    assert "Downloading data from" in capsys.readouterr().out
    published.unlink()  # a second download would fail now
    assert_same_weights(models.create_model("lenet", weights=url), source)
    assert "Downloading" not in capsys.readouterr().out


def test_a_wrong_sha256_names_both_hashes_and_leaves_nothing_in_the_cache(lenet_files, tmp_path):
    _, h5, _ = lenet_files
    published = tmp_path / f"lenet-{tmp_path.name}.weights.h5"
    shutil.copyfile(h5, published)
    expected = "ab" * 32
    with pytest.raises(models.WeightsError) as error:
        models.create_model("lenet", weights={"url": published.as_uri(), "sha256": expected})
    message = str(error.value)
    assert f"has sha256 {sha256(published)}, expected {expected}" in message and "\n" not in message
    assert not (Path(os.environ["KERAS_HOME"]) / registry.WEIGHTS_CACHE_SUBDIR / published.name).exists()


@pytest.mark.parametrize("weights, message", [
    ("file:///x/lenet.weights.h5", "a URL needs its sha256: pass weights={'url': 'file:///x/lenet.weights.h5'"),
    ({"url": "file:///x/lenet.weights.h5", "sha256": "12"}, "must be 64 hexadecimal digits; got '12'"),
    ({"url": "file:///x/lenet.weights.h5"}, "weights given as a dict need exactly 'url' and 'sha256'"),
    ({"url": "file:///x/lenet.bin", "sha256": "0" * 64}, "does not name a .weights.h5 or .keras file"),
    ("imagenet", "no pretrained weights 'imagenet' for lenet; data sets in PRETRAINED for it: cifar10"),
    ("/nowhere/lenet.keras", "/nowhere/lenet.keras: no such file or folder"),
])
def test_weights_that_cannot_be_had_are_one_line_errors(weights, message):
    with pytest.raises(models.WeightsError) as error:
        models.create_model("lenet", weights=weights)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_pretrained_row_without_a_file_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(models.PRETRAINED, ("lenet", "cifar10"), None)
    with pytest.raises(models.WeightsError, match="no weights are published yet for lenet on cifar10"):
        models.create_model("lenet", weights="cifar10")


def test_the_pretrained_table_names_registered_models_and_checked_files():
    assert models.PRETRAINED
    for (name, dataset), row in models.PRETRAINED.items():
        models.get_entry(name)
        assert dataset == "cifar10"
        assert row is None or (set(row) == {"url", "sha256"} and len(row["sha256"]) == 64), (name, row)


def test_another_architecture_or_class_count_is_refused_with_what_differs(lenet_files):
    _, h5, keras_file = lenet_files
    with pytest.raises(models.WeightsError) as error:
        models.create_model("resnet20", weights=keras_file)
    message = str(error.value)
    assert message.startswith(f"{keras_file} (weights of lenet) does not fit resnet20: ") and "\n" not in message
    assert "layers the file lacks: stem_conv, stem_bn, " in message
    assert "layers the model lacks: conv1, conv2" in message
    with pytest.raises(models.WeightsError, match=r"shapes differ: logits \[\(84, 10\), \(10,\)\] in the file, "
                                                  r"\[\(84, 100\), \(100,\)\] in the model"):
        models.create_model("lenet", weights=h5, num_classes=100)


@pytest.mark.parametrize("name, head", [("lenet", ["logits"]), ("nin_bn", ["mlpconv3_bn3", "mlpconv3_conv3"])])
def test_another_class_count_reinitialises_the_head_only(name, head, tmp_path):
    source = models.create_model(name, num_classes=100)
    source.set_weights([w + 0.5 for w in source.get_weights()])
    source.save_weights(tmp_path / "w.weights.h5")
    fresh = models.create_model(name)
    before = {v.path: keras.ops.convert_to_numpy(v).copy() for v in fresh.weights}
    report = models.load_weights(fresh, tmp_path / "w.weights.h5", reinit_head=True)
    assert report["head_reinitialised"] and report["layers_reinitialised"] == head
    assert report["sha256"] == sha256(tmp_path / "w.weights.h5")
    theirs = {v.path: keras.ops.convert_to_numpy(v) for v in source.weights}
    for v in fresh.weights:
        now = keras.ops.convert_to_numpy(v)
        if v.path.split("/")[0] in head:
            np.testing.assert_array_equal(now, before[v.path], err_msg=v.path)  # the fresh initialisation
        else:
            np.testing.assert_array_equal(now, theirs[v.path], err_msg=v.path)
    assert report["layers_loaded"] == len({v.path.split("/")[0] for v in fresh.weights}) - len(head)


def test_reinit_head_refuses_any_other_difference(tmp_path):
    source = models.create_model("lenet", num_classes=100, input_shape=(36, 36, 3))
    source.save_weights(tmp_path / "w.weights.h5")
    with pytest.raises(models.WeightsError, match=r"shapes differ: fc1 \[\(576, 120\), \(120,\)\] in the file, "
                                                  r"\[\(400, 120\), \(120,\)\] in the model; logits"):
        models.load_weights(models.create_model("lenet"), tmp_path / "w.weights.h5", reinit_head=True)


# --------------------------------------------------------------------------- train.py --init-from

def tiny_args(data_dir, run_dir, *extra):
    return ["--model", "lenet", "--data-dir", str(data_dir), "--run-dir", str(run_dir), "--val-split", "40",
            "--batch-size", "32", "--epochs", "1", *extra]


def one_error_line(capsys):
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.fixture(scope="module")
def source_run(tiny_cifar, tmp_path_factory):
    root, _ = tiny_cifar
    run = tmp_path_factory.mktemp("source") / "run"
    assert train.main(tiny_args(root, run, "--lr", "0.05")) == 0
    return run


def test_init_from_a_run_folder_starts_from_its_best_model(source_run, tiny_cifar, tmp_path, capsys):
    root, _ = tiny_cifar
    run = tmp_path / "run"
    # An lr this small leaves the weights where they started (LeNet has no batch-norm statistics).
    args = tiny_args(root, run, "--lr", "1e-20", "--schedule", "constant", "--init-from", str(source_run))
    assert train.main(args) == 0
    best = source_run / "best.keras"
    config = json.loads((run / "config.json").read_text())
    assert config["settings"]["init_from"] == str(source_run) and config["sources"]["init_from"] == "flag"
    assert config["init_from"] == {"path": str(best), "sha256": sha256(best), "layers_loaded": 5,
                                   "head_reinitialised": False, "layers_reinitialised": []}
    started = keras.saving.load_model(run / "last.keras", compile=False)
    for a, b in zip(started.get_weights(), keras.saving.load_model(best, compile=False).get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-12)
    capsys.readouterr()
    # The starting weights are part of what the run is: another --init-from, or none, is another run.
    assert train.main(tiny_args(root, run, "--lr", "1e-20", "--schedule", "constant")) == 2
    assert f"holds a run with other settings (init_from: '{source_run}' there, None now" in one_error_line(capsys)
    other = tmp_path / "other.keras"
    shutil.copyfile(best, other)
    assert train.main(tiny_args(root, run, "--lr", "1e-20", "--schedule", "constant", "--init-from", str(other))) == 2
    assert f"(init_from: '{source_run}' there, '{other}' now" in one_error_line(capsys)


def test_a_run_started_from_weights_resumes_from_its_own_checkpoint(source_run, tiny_cifar, tmp_path, monkeypatch,
                                                                     capsys):
    root, _ = tiny_cifar
    source = tmp_path / "source"
    shutil.copytree(source_run, source)
    run = tmp_path / "run"
    args = tiny_args(root, run, "--init-from", str(source), "--epochs", "2")
    commit = runfolder.RunFolder.commit

    def commit_then_stop(self, model, state, row, is_best):
        commit(self, model, state, row, is_best)
        raise KeyboardInterrupt  # as a Ctrl-C after epoch 1

    monkeypatch.setattr(runfolder.RunFolder, "commit", commit_then_stop)
    assert train.main(args) == 130
    monkeypatch.undo()
    record = json.loads((run / "config.json").read_text())["init_from"]
    shutil.rmtree(source)  # gone: a resume must not need it
    capsys.readouterr()
    assert train.main(args) == 0
    assert f"Resuming {run} after epoch 1/2" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["init_from"] == record


def test_weights_for_another_class_count_start_a_run_with_a_fresh_head(tiny_cifar, tmp_path):
    root, _ = tiny_cifar
    other = models.create_model("lenet", num_classes=100)
    other.save_weights(tmp_path / "lenet100.weights.h5")
    run = tmp_path / "run"
    assert train.main(tiny_args(root, run, "--init-from", str(tmp_path / "lenet100.weights.h5"))) == 0
    record = json.loads((run / "config.json").read_text())["init_from"]
    assert record["head_reinitialised"] and record["layers_reinitialised"] == ["logits"]
    assert record["layers_loaded"] == 4


def test_init_from_that_cannot_be_used_is_one_line_and_no_run_is_written(source_run, tiny_cifar, tmp_path, capsys):
    root, _ = tiny_cifar
    empty = tmp_path / "empty"
    empty.mkdir()
    run = tmp_path / "run"
    for init, message in [
        (tmp_path / "nothing", f"--init-from {tmp_path / 'nothing'}: {tmp_path / 'nothing'}: no such file or folder"),
        (empty, f"{empty} holds no trained model (neither best.keras nor last.keras)"),
        (source_run / "config.json", f"{source_run / 'config.json'} is not a .weights.h5 or .keras file or a run"),
    ]:
        assert train.main(tiny_args(root, run, "--init-from", str(init))) == 2
        assert message in one_error_line(capsys)
        assert not run.exists()  # checked before the run folder is made
    # Whether the weights fit is known once the model is built (TensorFlow may not start earlier, see
    # distribute.place): before config.json is written, so the folder holds no run and takes the next command.
    assert train.main([*tiny_args(root, run, "--init-from", str(source_run)), "--model", "resnet20"]) == 2
    assert f"{source_run / 'best.keras'} (weights of lenet) does not fit resnet20: " in one_error_line(capsys)
    assert not [p for p in run.rglob("*") if p.is_file()]
    assert train.main(tiny_args(root, run, "--init-from", str(source_run))) == 0
