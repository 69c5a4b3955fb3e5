"""Tests of inference.py on two tiny finished runs made by train.main (one standardized, one
scaled): the model from uint8 images to probabilities, the one computation ensemble.py shares, the
saved file in a fresh process, the exports, and the command line's errors."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import data
import ensemble
import inference
import runlock
import train

ROOT = Path(__file__).resolve().parents[1]
# Probabilities computed by other graphs than the Keras model's (the reference preprocessing, the
# LiteRT and ONNX runtimes) differ from it by float32 rounding: sums in other orders, x / 255 against
# x * (1 / 255). A few ulp of float32 at probabilities near 1 are ~1e-7; 1e-5 leaves room for other CPUs.
FLOAT32_ATOL = 1e-5


@pytest.fixture(scope="module")
def runs(tiny_cifar, tmp_path_factory):
    """{"standardize": RUN, "scale": RUN}: one-epoch lenet runs by the real entry point."""
    root, _ = tiny_cifar
    base = tmp_path_factory.mktemp("inference-runs")
    made = {}
    for preprocess in ("standardize", "scale"):
        run = base / f"lenet-{preprocess}"
        assert train.main(["--model", "lenet", "--data-dir", str(root), "--run-dir", str(run), "--epochs", "1",
                           "--val-split", "40", "--batch-size", "32", "--preprocess", preprocess]) == 0
        made[preprocess] = run
    return made


@pytest.fixture(scope="module")
def images(tiny_cifar):
    """The tiny set's test images as data.py reads them from the batch files: uint8 (40, 32, 32, 3)."""
    root, _ = tiny_cifar
    x_test = data.read_source(root / data.BATCHES_DIR)[2]
    assert x_test.dtype == np.uint8 and x_test.shape == (40, *data.IMAGE_SHAPE)
    return x_test


def softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def one_line_error(capsys):
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def leftovers(folder):
    """Temporary or lock files left in `folder`."""
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith(".") and ".tmp" in p.name)


# --------------------------------------------------------------------------- the model

@pytest.mark.parametrize("preprocess", ["standardize", "scale"])
def test_uint8_images_in_probabilities_out_with_the_runs_preprocessing(preprocess, runs, images):
    model = inference.inference_model(runs[preprocess])
    assert model.inputs[0].dtype == "uint8" and tuple(model.input_shape) == (None, 32, 32, 3)
    layers = {layer.name: layer for layer in model.layers}
    assert [type(layer).__name__ for layer in model.layers] == [
        "InputLayer", "Rescaling", *(["Rescaling"] if preprocess == "standardize" else []), "Functional", "Activation"]
    assert all(type(layer).__module__.startswith("keras.") for layer in model.layers)  # stock layers, no Lambda
    assert layers["unit_range"].scale == pytest.approx(1 / 255)
    if preprocess == "standardize":
        mean, std = np.array(data.CIFAR10_MEAN), np.array(data.CIFAR10_STD)
        np.testing.assert_allclose(layers["standardize"].scale, 1 / std)
        np.testing.assert_allclose(layers["standardize"].offset, -mean / std)
    probs = model.predict(images, verbose=0)
    assert probs.dtype == np.float32 and probs.shape == (len(images), data.NUM_CLASSES)
    assert (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-6)


@pytest.mark.parametrize("preprocess", ["standardize", "scale"])
def test_the_ensemble_computes_exactly_the_inference_models_probabilities(preprocess, runs, images):
    """ensemble.py's members run the same layers, so the numbers are the same bit for bit (at the same
    batch size, so that no kernel may sum in another order)."""
    model = inference.inference_model(runs[preprocess])
    member = ensemble.load_member(runs[preprocess])
    probs = model.predict(images, batch_size=16, verbose=0)
    np.testing.assert_array_equal(ensemble.predict_probs(member, images, batch_size=16), probs)
    mirrored = model.predict(images[:, :, ::-1], batch_size=16, verbose=0)
    np.testing.assert_array_equal(ensemble.predict_probs(member, images, batch_size=16, tta=True),
                                  (probs + mirrored) / 2)


@pytest.mark.parametrize("preprocess", ["standardize", "scale"])
def test_agrees_with_data_preprocess_the_raw_model_and_a_softmax(preprocess, runs, images):
    """An independent reference: data.preprocess (what training fed the model), best.keras, softmax in
    float64. Not bit for bit: the inference model rescales by x * (1/255) * (1/std) - mean/std where
    data.preprocess computes (x / 255 - mean) / std, so its inputs differ in the last bits of float32."""
    raw = keras.saving.load_model(runs[preprocess] / "best.keras", compile=False)
    reference = softmax(raw.predict(data.preprocess(images, preprocess), verbose=0).astype(np.float64))
    probs = inference.inference_model(runs[preprocess]).predict(images, verbose=0)
    np.testing.assert_allclose(probs, reference, rtol=0, atol=FLOAT32_ATOL)
    assert (probs.argmax(1) == reference.argmax(1)).all()
    # The other preprocessing would give other numbers: the test tells the two modes apart.
    other = "scale" if preprocess == "standardize" else "standardize"
    wrong = softmax(raw.predict(data.preprocess(images, other), verbose=0).astype(np.float64))
    assert np.abs(wrong - reference).max() > 100 * FLOAT32_ATOL


def test_only_uint8_images_of_32x32x3_are_taken(runs, images):
    model = inference.inference_model(runs["standardize"])
    for bad, message in [(images.astype(np.float32), "expected dtype=uint8, found dtype=float32"),
                         (images.astype(np.float32) / 255, "expected dtype=uint8"),
                         (images[:, :16], r"expected shape=\(None, 32, 32, 3\)"),
                         (images[..., :1], r"expected shape=\(None, 32, 32, 3\)"),
                         (images[0], "expected ndim=4")]:
        with pytest.raises(ValueError, match=message):
            model(bad)
    with pytest.raises(ValueError, match="expected dtype=uint8"):
        model.predict(images.astype(np.float32), verbose=0)


def test_normalisation_constants_are_looked_up_by_data_set():
    config = {"settings": {"preprocess": "standardize"}}
    assert inference.normalisation(config) == (data.CIFAR10_MEAN, data.CIFAR10_STD)
    assert inference.normalisation({"settings": {"preprocess": "standardize", "dataset": "cifar10"}}) == (
        data.CIFAR10_MEAN, data.CIFAR10_STD)
    assert inference.normalisation({"settings": {"preprocess": "scale"}}) is None
    assert inference.normalisation({"settings": {"preprocess": "standardize", "dataset": "cifar100"}}) == (
        data.CIFAR100_MEAN, data.CIFAR100_STD)
    for settings, message in [({"preprocess": "scale", "dataset": "svhn"}, "unknown dataset 'svhn'; known: cifar10, cifar100"),
                              ({"preprocess": "whiten"}, "preprocess must be one of standardize, scale")]:
        with pytest.raises(inference.InferenceError, match=message):
            inference.normalisation({"settings": settings})


def test_an_unknown_data_set_is_refused_by_the_ensemble_too(runs, tmp_path):
    run = shutil.copytree(runs["scale"], tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    config["settings"]["dataset"] = "svhn"
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(ensemble.EnsembleError, match="unknown dataset 'svhn'"):
        ensemble.load_member(run)


# --------------------------------------------------------------------------- inference.keras

def test_inference_keras_loads_in_a_fresh_process_with_plain_keras(runs, images, tmp_path, capsys):
    expected = {}
    for preprocess, run in runs.items():
        assert inference.main([str(run)]) == 0
        assert f"Wrote {run / 'inference.keras'}" in capsys.readouterr().out
        assert leftovers(run) == []
        expected[preprocess] = inference.inference_model(run).predict(images, batch_size=16, verbose=0)
    np.save(tmp_path / "images.npy", images)
    script = textwrap.dedent("""
        import sys
        import keras, numpy as np
        images = np.load("images.npy")
        for name, path in zip(sys.argv[1::2], sys.argv[2::2]):
            model = keras.saving.load_model(path, safe_mode=True)
            np.save(name + ".npy", model.predict(images, batch_size=16, verbose=0))
        ours = {"data", "train", "ensemble", "inference", "models", "htd", "tfenv", "fused", "padded"}
        print("project modules:", sorted(ours & set(sys.modules)))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    args = [a for p, r in runs.items() for a in (p, str(r / "inference.keras"))]
    result = subprocess.run([sys.executable, "-c", script, *args], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "project modules: []" in result.stdout
    for preprocess in runs:
        # The same file, the same layers, the same machine: the same numbers.
        np.testing.assert_array_equal(np.load(tmp_path / f"{preprocess}.npy"), expected[preprocess])


def test_a_loaded_file_refuses_images_of_another_size(runs, images):
    inference.save_inference_model(runs["scale"])
    model = keras.saving.load_model(runs["scale"] / "inference.keras")
    with pytest.raises(ValueError, match=r"expected shape=\(None, 32, 32, 3\)"):
        model(images[:, :16, :16])
    np.testing.assert_array_equal(model.predict(images, batch_size=16, verbose=0),
                                  inference.inference_model(runs["scale"]).predict(images, batch_size=16, verbose=0))


def test_last_checkpoint(runs, images):
    run = runs["standardize"]
    last = keras.saving.load_model(run / "last.keras", compile=False)
    reference = softmax(last.predict(data.preprocess(images, "standardize"), verbose=0).astype(np.float64))
    probs = inference.inference_model(run, "last").predict(images, verbose=0)
    np.testing.assert_allclose(probs, reference, rtol=0, atol=FLOAT32_ATOL)


def test_a_run_without_validation_split_ships_its_last_checkpoint(runs, images, tmp_path, capsys):
    run = shutil.copytree(runs["standardize"], tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    config["settings"]["val_split"] = 0  # what train.py --val-split 0 records; it keeps no best.keras
    (run / "config.json").write_text(json.dumps(config))
    (run / "best.keras").unlink()
    assert inference.main([str(run)]) == 0
    assert "last.keras between its preprocessing" in capsys.readouterr().out
    expected = inference.inference_model(run, "last").predict(images, verbose=0)
    np.testing.assert_array_equal(keras.saving.load_model(run / "inference.keras").predict(images, verbose=0),
                                  expected)
    with pytest.raises(inference.InferenceError, match=r"keeps only last.keras: use --checkpoint last"):
        inference.inference_model(run, "best")


# --------------------------------------------------------------------------- exports

def export(run, fmt, out, capsys):
    assert inference.main([str(run), "--export", fmt, "--out", str(out)]) == 0
    assert f"Wrote {out}" in capsys.readouterr().out
    assert leftovers(out.parent) == []


@pytest.mark.slow
def test_savedmodel_serves_uint8_images(runs, images, tmp_path, capsys):
    out = tmp_path / "savedmodel"
    export(runs["standardize"], "savedmodel", out, capsys)
    expected = inference.inference_model(runs["standardize"]).predict(images, verbose=0)
    loaded = tf.saved_model.load(str(out))
    probs = loaded.serve(tf.constant(images)).numpy()
    # The same TensorFlow ops as the Keras model's: equal here; float32 rounding allowed elsewhere.
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-6)
    with pytest.raises((TypeError, ValueError)):
        loaded.serve(tf.constant(images.astype(np.float32)))


def litert_interpreter(path):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = getattr(tf.lite, "Interpreter", None)
    if Interpreter is None:
        pytest.skip("no LiteRT interpreter: pip install ai-edge-litert")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter: deprecated in favour of ai-edge-litert
        return Interpreter(model_path=str(path))


@pytest.mark.slow
def test_tflite_runs_in_the_litert_interpreter(runs, images, tmp_path, capsys):
    out = tmp_path / "model.tflite"
    export(runs["scale"], "tflite", out, capsys)
    expected = inference.inference_model(runs["scale"]).predict(images, verbose=0)
    interpreter = litert_interpreter(out)
    (given,), (output,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert given["dtype"] == np.uint8 and list(given["shape_signature"]) == [-1, 32, 32, 3]
    interpreter.resize_tensor_input(given["index"], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(given["index"], images)
    interpreter.invoke()
    probs = interpreter.get_tensor(output["index"])
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs, expected, rtol=0, atol=FLOAT32_ATOL)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:In the future `np.object`:FutureWarning")  # Keras' own tf2onnx patch
def test_onnx_runs_in_onnx_runtime(runs, images, tmp_path, capsys):
    pytest.importorskip("tf2onnx", reason="--export onnx needs tf2onnx and onnx (not in requirements.txt)")
    ort = pytest.importorskip("onnxruntime", reason="the ONNX test needs onnxruntime (not in requirements.txt)")
    out = tmp_path / "model.onnx"
    export(runs["standardize"], "onnx", out, capsys)
    expected = inference.inference_model(runs["standardize"]).predict(images, verbose=0)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (given,) = session.get_inputs()  # the images only: the preprocessing's constants are in the graph
    assert given.type == "tensor(uint8)" and given.shape[1:] == [32, 32, 3]
    probs = session.run(None, {given.name: images})[0]
    np.testing.assert_allclose(probs, expected, rtol=0, atol=FLOAT32_ATOL)


def test_onnx_without_tf2onnx_is_refused_with_what_to_install(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # what find_spec reports for a package not installed
    out = tmp_path / "model.onnx"
    assert inference.main([str(runs["scale"]), "--export", "onnx", "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert "--export onnx needs tf2onnx" in err and "pip install tf2onnx==" in err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("raised, code", [(RuntimeError("converter said no\nin two lines"), 2), (KeyboardInterrupt(), 130)])
def test_a_failed_or_interrupted_export_leaves_nothing(raised, code, runs, tmp_path, monkeypatch, capsys):
    def half_written(self, filepath, **kwargs):
        Path(filepath).write_bytes(b"half")
        raise raised

    monkeypatch.setattr(keras.Model, "export", half_written)
    assert inference.main([str(runs["scale"]), "--export", "tflite", "--out", str(tmp_path / "m.tflite")]) == code
    if code == 2:
        assert "--export tflite failed: RuntimeError: converter said no in two lines" in one_line_error(capsys)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- command line errors

def _unfinished(run):
    config = json.loads((run / "config.json").read_text())
    config["settings"]["epochs"] = 2
    (run / "config.json").write_text(json.dumps(config))


def _other_dataset(run):
    config = json.loads((run / "config.json").read_text())
    config["settings"]["dataset"] = "cifar100"  # a 10-class model under a 100-class config
    (run / "config.json").write_text(json.dumps(config))


def _damaged(run):
    (run / "best.keras").unlink()  # a link to the checkpoint: replace it, do not write through it
    (run / "best.keras").write_bytes(b"PK\x03\x04 not a whole zip")


@pytest.mark.parametrize("case, message", [
    ("missing", "run folder {tmp}/nope does not exist"),
    ("a_file", "{tmp}/image.png is a file, not a run folder"),
    ("not_a_run", "{tmp}/run holds no config.json"),
    ("unfinished", "{tmp}/run is not finished (1 of 2 epochs completed)"),
    ("small_files_only", "{tmp}/run holds a finished run's small files only"),
    ("damaged", "cannot load {tmp}/run/best.keras: damaged or not a Keras model file"),
    ("no_best", "has no best.keras, which train.py keeps in such a finished run: the folder is damaged"),
    ("last_over_best", "{tmp}/run/inference.keras is the model of best.keras, whose test accuracy the run's "
                       "metrics.json reports; export last.keras instead"),
    ("other_classes", "{tmp}/run/best.keras: expected a model from (None, 32, 32, 3) images to (None, 100) logits"),
    ("bad_config", "{tmp}/run/config.json is damaged"),
    ("unknown_format", "argument --export: invalid choice: 'pdf'"),
    ("out_exists", "{tmp}/taken exists; remove it or choose another --out (nothing was written)"),
    ("out_folder", "cannot write {tmp}/no/model.tflite: folder {tmp}/no does not exist"),
    ("no_out", "--export savedmodel needs --out PATH"),
    ("out_alone", "--out needs --export FORMAT"),
])
def test_errors_are_one_line_with_exit_2_and_nothing_written(case, message, runs, tmp_path, capsys):
    run = tmp_path / "run"
    if case == "small_files_only":  # a copy such as results/runs/ keeps
        run.mkdir()
        for name in ("config.json", "history.csv", "metrics.json"):
            shutil.copyfile(runs["standardize"] / name, run / name)
    elif case not in ("missing", "not_a_run", "a_file"):
        shutil.copytree(runs["standardize"], run)
    {"not_a_run": lambda: run.mkdir(), "unfinished": lambda: _unfinished(run), "damaged": lambda: _damaged(run),
     "no_best": lambda: (run / "best.keras").unlink(), "other_classes": lambda: _other_dataset(run),
     "bad_config": lambda: (run / "config.json").write_text("{"),
     "out_exists": lambda: (tmp_path / "taken").mkdir(),
     "a_file": lambda: (tmp_path / "image.png").write_bytes(b"")}.get(case, lambda: None)()
    argv = {
        "missing": [str(tmp_path / "nope")],
        "a_file": [str(tmp_path / "image.png")],
        "unknown_format": [str(run), "--export", "pdf", "--out", str(tmp_path / "x")],
        "out_exists": [str(run), "--export", "savedmodel", "--out", str(tmp_path / "taken")],
        "out_folder": [str(run), "--export", "tflite", "--out", str(tmp_path / "no" / "model.tflite")],
        "no_out": [str(run), "--export", "savedmodel"],
        "out_alone": [str(run), "--out", str(tmp_path / "x")],
        "last_over_best": [str(run), "--checkpoint", "last"],
    }.get(case, [str(run)])
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert inference.main(argv) == 2
    assert message.format(tmp=tmp_path) in one_line_error(capsys)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written, nothing left


def test_a_run_folder_in_use_is_refused(runs, capsys):
    with runlock.hold(runs["scale"], "--run-dir"):
        assert inference.main([str(runs["scale"])]) == 2
    assert "is in use by another process" in one_line_error(capsys)


def test_error_in_a_real_process_has_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "inference", str(tmp_path / "nope")], cwd=ROOT,
                            capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == f"error: run folder {tmp_path / 'nope'} does not exist"
    assert "Traceback" not in result.stderr
