"""Training on Keras' JAX and PyTorch backends, end to end, in processes where TensorFlow cannot be
imported (tests/backend_run.py), as on a machine that has none.

The same run folder, resume and selection as on TensorFlow (test_train.py). Both backends' CPU
steps give the same numbers for the same program and inputs, so a run killed and resumed equals
one that was not, exactly. Several devices: keras.distribution over XLA host devices, on JAX. The
tests marked `gpu` need no TensorFlow at all: bench/gpu_check.sh runs them on the GPU machine.
"""

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import distribute

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = [pytest.param(b, marks=pytest.mark.skipif(importlib.util.find_spec(b) is None, reason=f"{b} is not installed"))
            for b in ("jax", "torch")]
needs_jax = pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")


def run_on(backend, *args, env=None, timeout=300):
    """tests/backend_run.py ARGS under KERAS_BACKEND=backend: (exit status, stdout, stderr)."""
    env = {**clean_env(), "KERAS_BACKEND": backend, **(env or {})}
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "backend_run.py"), *map(str, args)], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=timeout)
    return result.returncode, result.stdout, result.stderr


# On a GPU (bench/gpu_check.sh) JAX's XLA kernels repeat exactly only when asked to; the flag changes nothing on CPUs.
ON_GPU = shutil.which("nvidia-smi") is not None
GPU_FLAGS = "--xla_gpu_deterministic_ops=true"


def clean_env():
    """This process's environment, with the repository first on the path and no XLA_FLAGS of the caller's."""
    path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "PYTHONPATH": path, "XLA_FLAGS": GPU_FLAGS}


def tiny_run_args(data_dir, run_dir, *extra):
    return ["--model", "lenet", "--data-dir", data_dir, "--run-dir", run_dir, "--val-split", "40",
            "--batch-size", "32", "--epochs", "3", "--lr", "0.02", *extra]


def history(run_dir):
    with open(Path(run_dir) / "history.csv") as f:
        return list(csv.DictReader(f))


def numbers(rows):
    return [[float(r[k]) for k in ("lr", "loss", "accuracy", "val_loss", "val_accuracy")] for r in rows]


@pytest.fixture(scope="module", params=BACKENDS)
def backend_run(request, tiny_cifar, tmp_path_factory):
    """One uninterrupted 3-epoch LeNet run on the backend, one device: (backend, data, run folder, stdout)."""
    root, _ = tiny_cifar
    run = tmp_path_factory.mktemp(request.param) / "run"
    status, out, err = run_on(request.param, *tiny_run_args(root, run))
    assert status == 0, err
    return request.param, root, run, out


@pytest.mark.gpu
def test_trains_into_the_same_run_folder_without_tensorflow(backend_run):
    backend, _, run, out = backend_run
    config = json.loads((run / "config.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert config["execution"]["backend"] == backend and config["execution"]["batches"] == "numpy"
    assert config["execution"]["jit"] is (backend == "jax") and config["execution"]["batch_norm"] == "keras"
    assert config["execution"]["steps_per_execution"] == (16 if backend == "jax" else 1)
    assert backend in config["versions"] and "tensorflow" not in config["versions"]
    assert metrics["backends"] == {backend: 3} and metrics["epochs_completed"] == 3
    assert [int(r["epoch"]) for r in history(run)] == [1, 2, 3]
    # The loop's selection and final evaluation, as on TensorFlow; the colours of the tiny set are learnt.
    assert metrics["test_model"].startswith("best.keras") and metrics["test_accuracy"] > 0.4
    for name in ("best.keras", "last.keras", "inference.keras", "state.json"):
        assert (run / name).is_file()
    assert not (run / "tensorboard").exists()  # TensorFlow's log: history.csv is the log here
    assert f"Finished {run}" in out


@pytest.mark.gpu
def test_a_run_killed_and_resumed_equals_the_uninterrupted_one(backend_run, tmp_path):
    backend, root, reference, _ = backend_run
    run = tmp_path / "run"
    status, _, _ = run_on(backend, "--kill-after", "2", *tiny_run_args(root, run))
    assert status == -9 and json.loads((run / "state.json").read_text())["epochs_completed"] == 2
    assert not (run / "metrics.json").exists()
    status, out, err = run_on(backend, *tiny_run_args(root, run))
    assert status == 0, err
    assert f"Resuming {run} after epoch 2/3" in out
    ours, theirs = (json.loads((r / "metrics.json").read_text()) for r in (run, reference))
    if ON_GPU and backend == "torch":  # cuDNN's kernels choose their own order of sums: close, not equal
        np.testing.assert_allclose(numbers(history(run)), numbers(history(reference)), rtol=1e-3)
        return
    assert numbers(history(run)) == numbers(history(reference))
    assert ours["test_accuracy"] == theirs["test_accuracy"] and ours["test_loss"] == theirs["test_loss"]


@pytest.mark.parametrize("backend_run", BACKENDS[:1], indirect=True)
def test_jax_over_two_host_devices_follows_the_one_device_run(backend_run, tmp_path):
    """keras.distribution.DataParallel over 2 XLA host devices: the global batch of 32 split in two,
    the gradients summed; the same run as on one device but for the order of the sums."""
    _, root, reference, _ = backend_run
    run = tmp_path / "run"
    status, _, err = run_on("jax", *tiny_run_args(root, run, "--devices", "2"))
    assert status == 0, err
    execution = json.loads((run / "config.json").read_text())["execution"]
    assert execution["strategy"] == "data_parallel" and execution["devices"] == ["cpu:0", "cpu:1"]
    assert execution["replicas"] == 2 and execution["per_replica_batch"] == 16 and execution["global_batch"] == 32
    np.testing.assert_allclose(numbers(history(run)), numbers(history(reference)), rtol=1e-4)


@needs_jax
def test_jax_batch_norm_statistics_are_the_global_batchs(tmp_path):
    """distribute.py's claim: under DataParallel, batch norm computes its statistics over the whole
    global batch, as on one device (TensorFlow's MirroredStrategy: over each replica's share). Two
    devices whose halves of the batch differ: the moving variance and the weights after a few steps
    are the one-device model's, to float32 rounding."""
    script = textwrap.dedent("""
        import json, sys
        sys.modules["tensorflow"] = None  # as in backend_run.py: not needed, not imported
        import numpy as np
        import distribute, keras

        def trained(placement):
            with placement.scope():
                keras.utils.set_random_seed(0)
                model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3),
                                          keras.layers.BatchNormalization(momentum=0.5), keras.layers.Flatten(),
                                          keras.layers.Dense(2)])
                model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
                rng = np.random.default_rng(0)
                x = rng.normal(size=(64, 8, 8, 3)).astype("float32")
                x[32:] = 3 * x[32:] + 1  # each device's half of the batch has statistics of its own
                model.fit(x, rng.normal(size=(64, 2)).astype("float32"), batch_size=64, epochs=3, verbose=0,
                          shuffle=False)
                return [np.asarray(w).tolist() for w in model.get_weights()]

        one, two = trained(distribute.place(1)), trained(distribute.place(2))
        json.dump({"one": one, "two": two, "devices": distribute.place(2).devices}, sys.stdout)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**clean_env(), "KERAS_BACKEND": "jax",
                                 "XLA_FLAGS": f"{GPU_FLAGS} {distribute.HOST_DEVICES_FLAG}=2"})
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["devices"] == ["cpu:0", "cpu:1"]
    for a, b in zip(out["one"], out["two"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@needs_jax
def test_a_tensorflow_run_resumes_on_jax(tiny_cifar, tmp_path):
    """The checkpoints are stock Keras files: 2 epochs on TensorFlow (here, in-process, stopped after
    the second commit), the third on JAX; metrics.json counts the epochs of each."""
    import train

    class Stop(Exception):
        pass

    def stop_after_two(times):
        if times["epoch"] == 2:
            raise Stop

    root, _ = tiny_cifar
    run = tmp_path / "run"
    with pytest.raises(Stop):
        train.main([str(a) for a in tiny_run_args(root, run)], on_epoch=stop_after_two)
    status, out, err = run_on("jax", *tiny_run_args(root, run))
    assert status == 0, err
    assert f"Resuming {run} after epoch 2/3" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["backends"] == {"tensorflow": 2, "jax": 1} and metrics["execution"]["backend"] == "jax"
    assert json.loads((run / "config.json").read_text())["execution"]["backend"] == "tensorflow"
