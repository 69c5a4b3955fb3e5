import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

import data
import tfenv
import train

ROOT = Path(__file__).resolve().parents[1]


def tiny_args(data_dir, run_dir, *extra):
    return ["--model", "lenet", "--data-dir", str(data_dir), "--run-dir", str(run_dir),
            "--val-split", "40", "--batch-size", "32", *extra]


def read_history(run_dir):
    with open(run_dir / "history.csv") as f:
        return list(csv.DictReader(f))


def test_end_to_end_writes_every_file(tiny_cifar, tmp_path, capsys):
    root, (x_train, y_train, x_test, y_test) = tiny_cifar
    run = tmp_path / "run"
    assert train.main(tiny_args(root, run, "--epochs", "3", "--lr", "0.02")) == 0

    for name in ("config.json", "state.json", "history.csv", "metrics.json", "last.keras", "best.keras"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert not list(run.glob(".*"))  # no temporary file left

    config = json.loads((run / "config.json").read_text())
    assert config["settings"]["lr"] == 0.02 and config["sources"]["lr"] == "flag"
    assert config["settings"]["momentum"] == 0.9 and config["sources"]["momentum"] == "recipe"
    assert config["sources"]["val_split"] == "flag" and config["data"]["val_images"] == 40
    assert config["command"][:3] == ["train.py", "--model", "lenet"]

    history = read_history(run)
    assert [int(r["epoch"]) for r in history] == [1, 2, 3]
    assert float(history[0]["lr"]) == pytest.approx(0.02)
    assert all(float(r["train_seconds"]) > 0 for r in history)

    metrics = json.loads((run / "metrics.json").read_text())
    best_epoch = max(history, key=lambda r: float(r["val_accuracy"]))
    assert metrics["epochs_completed"] == 3
    assert metrics["val_accuracy"] == pytest.approx(float(best_epoch["val_accuracy"]))
    assert metrics["test_model"].startswith(f"best.keras (epoch {best_epoch['epoch']}")
    assert metrics["train_images"] == 160 and metrics["val_images"] == 40 and metrics["test_images"] == 40
    assert metrics["wall_seconds"] > 0 and metrics["train_images_per_second"] > 0

    # The reported test accuracy is that of best.keras on the test set.
    model = keras.saving.load_model(run / "best.keras")
    logits = model.predict(data.make_dataset(x_test, y_test, 64), verbose=0)
    assert metrics["test_accuracy"] == pytest.approx(np.mean(logits.argmax(1) == y_test))
    assert model.name == "lenet"
    # ... and the last epoch's, which peers quote too, is that of last.keras.
    last = keras.saving.load_model(run / "last.keras", compile=False)
    last_logits = last.predict(data.make_dataset(x_test, y_test, 64), verbose=0)
    assert metrics["last_epoch_test_accuracy"] == pytest.approx(np.mean(last_logits.argmax(1) == y_test))
    assert metrics["machines"] == {train.machine(): 3} and "cores" in train.machine()
    # best.keras loads in a process that has nothing of this project imported.
    probe = subprocess.run([sys.executable, "-c", "import sys, keras; print(keras.saving.load_model(sys.argv[1]).name)",
                            str(run / "best.keras")], capture_output=True, text=True, timeout=120, cwd="/")
    assert probe.returncode == 0 and probe.stdout.strip() == "lenet", probe.stderr[-2000:]


def test_learns_the_tiny_set(tiny_cifar, tmp_path):
    """Colour tells the class in the tiny set: a working loop gets far above chance (0.1)."""
    root, _ = tiny_cifar
    metrics = train.train("lenet", dataset=data.load_cifar10(root, verbose=False), run_dir=tmp_path / "r",
                          epochs=6, val_split=40, batch_size=16, verbose=0)
    assert metrics["val_accuracy"] > 0.5
    assert metrics["test_accuracy"] > 0.5


def test_finished_run_is_left_alone(tiny_cifar, tmp_path, capsys):
    root, _ = tiny_cifar
    run = tmp_path / "run"
    args = tiny_args(root, run, "--epochs", "1")
    assert train.main(args) == 0
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    capsys.readouterr()
    assert train.main(args) == 0
    assert "already finished" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before
    assert train.main(tiny_args(root, run, "--epochs", "2")) == 2
    assert "holds a run with other settings (epochs: 1 there, 2 now" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--model", "lenet5"], "unknown model 'lenet5'; known models: "),
    (["--epochs", "0"], "epochs must be a positive whole number; got 0"),
    (["--batch-size", "-4"], "batch size must be a positive whole number; got -4"),
    (["--lr", "0"], "lr must be positive"),
    (["--lr-milestones", "5", "3"], "schedule: "),
    (["--val-split", "200"], "validation split must be a whole number from 0 to 199"),
    (["--batches", "precomputed", "--cutout", "8"],
     "--batches precomputed computes --augment standard or none without --cutout or --mixup; this run has "
     "--augment standard, --cutout 8, --mixup 0.0: use --batches streamed"),
])
def test_bad_settings_exit_with_one_line(extra, message, tiny_cifar, tmp_path, capsys):
    root, _ = tiny_cifar
    assert train.main(tiny_args(root, tmp_path / "run", *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_another_keras_backend_is_refused_before_anything_is_written(tiny_cifar, tmp_path, capsys, monkeypatch):
    """Under KERAS_BACKEND=jax, tf.distribute and the fused kernels would be silently left out."""
    root, _ = tiny_cifar
    monkeypatch.setattr(train.keras.backend, "backend", lambda: "jax")
    assert train.main(tiny_args(root, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: train.py trains on Keras' TensorFlow backend") and "not 'jax'" in err
    assert err.count("\n") == 1 and not (tmp_path / "run").exists()


def test_unusable_run_folders(tiny_cifar, tmp_path, capsys):
    root, _ = tiny_cifar
    (tmp_path / "file").write_text("")
    assert train.main(tiny_args(root, tmp_path / "file" / "run")) == 2
    assert "error: cannot write to run folder" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("")
    assert train.main(tiny_args(root, tmp_path / "busy")) == 2
    assert "is not empty and holds no run (thesis.tex" in capsys.readouterr().err


def test_data_not_found_exits_cleanly(tmp_path):
    """A real process: one line on stderr, no traceback, exit 2 (downloads go to a closed local port)."""
    result = subprocess.run([sys.executable, "train.py", "--model", "lenet", "--run-dir", str(tmp_path / "r")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "CIFAR-10 not found; looked in: --data-dir (not given)" in lines[0]
    assert "Traceback" not in result.stderr


def test_nan_loss_stops_without_committing(tiny_cifar, tmp_path, capsys):
    root, _ = tiny_cifar
    run = tmp_path / "run"
    assert train.main(tiny_args(root, run, "--epochs", "2", "--lr", "1e30", "--schedule", "constant")) == 2
    assert "loss became nan in epoch 1; stopped" in capsys.readouterr().err
    assert not (run / "state.json").exists() and not (run / "last.keras").exists()


def test_resume_rebuilds_from_the_commit_point(tiny_cifar, tmp_path):
    """What a kill between two writes leaves behind is discarded or rebuilt from state.json."""
    root, _ = tiny_cifar
    run = tmp_path / "run"
    assert train.main(tiny_args(root, run, "--epochs", "2")) == 0
    state = json.loads((run / "state.json").read_text())
    # Back to "epoch 1 committed", as if killed after saving epoch 2's checkpoint.
    (run / "metrics.json").unlink()
    state["history"] = state["history"][:1]
    state["epochs_completed"] = 1
    ckpt = run / "checkpoints"
    (ckpt / state["checkpoint"]).rename(ckpt / "epoch-0001.keras")
    (ckpt / state["best"]["checkpoint"]).rename(ckpt / "best-0001.keras")
    state["checkpoint"] = "epoch-0001.keras"
    state["best"] = {"epoch": 1, "val_accuracy": state["history"][0]["val_accuracy"], "checkpoint": "best-0001.keras"}
    (run / "state.json").write_text(json.dumps(state))
    (ckpt / "epoch-0002.keras").write_bytes(b"half")
    (ckpt / "best-0002.keras").write_bytes(b"half")
    (run / ".history.csv.tmp").write_text("half")
    (run / "history.csv").write_text("garbage")

    assert train.main(tiny_args(root, run, "--epochs", "2")) == 0
    assert [r["epoch"] for r in read_history(run)] == ["1", "2"]
    assert not (run / ".history.csv.tmp").exists()
    left = {p.name for p in ckpt.iterdir()}
    assert "epoch-0002.keras" in left and left <= {"epoch-0002.keras", "best-0001.keras", "best-0002.keras"}
    assert all(p.read_bytes() != b"half" for p in ckpt.iterdir())
    keras.saving.load_model(run / "best.keras")  # plain load: no optimizer, no custom classes needed
    assert json.loads((run / "metrics.json").read_text())["epochs_completed"] == 2


def _wait_for_epoch(state_file, epoch, proc, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if state_file.exists():
            try:
                if json.loads(state_file.read_text())["epochs_completed"] >= epoch:
                    return
            except (json.JSONDecodeError, KeyError):
                pytest.fail("state.json was half-written")
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    pytest.fail(f"epoch {epoch} not reached in {timeout} s")


def test_sigkill_and_rerun_resumes(tiny_cifar, tmp_path):
    root, _ = tiny_cifar
    run = tmp_path / "run"
    command = [sys.executable, "train.py", *tiny_args(root, run, "--epochs", "25")]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_epoch(run / "state.json", 3, proc)
        time.sleep(0.13)  # somewhere inside a later epoch or its checkpoint
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    killed_at = json.loads((run / "state.json").read_text())["epochs_completed"]
    assert 3 <= killed_at < 25 and not (run / "metrics.json").exists()

    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"Resuming {run} after epoch {killed_at}/25" in result.stdout
    assert [int(r["epoch"]) for r in read_history(run)] == list(range(1, 26))
    assert json.loads((run / "metrics.json").read_text())["epochs_completed"] == 25
    assert len(list((run / "tensorboard").glob("events.*"))) == 2


# --------------------------------------------------------------------------- settings

def test_recipe_flags_and_scaled_milestones():
    settings, sources = train.resolve_settings("resnet20", epochs=100, lr=0.05)
    assert settings["lr"] == 0.05 and sources["lr"] == "flag"
    assert settings["weight_decay"] == 1e-4 and sources["weight_decay"] == "recipe"
    assert settings["lr_milestones"] == [40, 61] and "scaled from 200 to 100" in sources["lr_milestones"]
    settings, sources = train.resolve_settings("resnet20", epochs=100, lr_milestones=[10, 20])
    assert settings["lr_milestones"] == [10, 20] and sources["lr_milestones"] == "flag"
    settings, _ = train.resolve_settings("lenet", epochs=4)
    assert settings["lr_milestones"] == [2, 3] and settings["lr_factor"] == [0.5, 0.2]
    settings, _ = train.resolve_settings("lenet", epochs=2)
    assert settings["lr_milestones"] == [1] and settings["lr_factor"] == [0.5]


def test_describe_recipe_prints_resolved_settings(capsys):
    assert train.main(["--model", "resnet56", "--describe-recipe", "--batch-size", "64"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["settings"]["batch_size"] == 64 and out["sources"]["batch_size"] == "flag"
    assert out["settings"]["lr_milestones"] == [81, 122] and out["sources"]["epochs"] == "recipe"


def test_list_models_prints_names(capsys):
    assert train.main(["--list-models"]) == 0
    names = capsys.readouterr().out.split()
    assert {"lenet", "resnet20", "resnet110"} <= set(names) and names == sorted(names)


def test_describe_prints_the_model_table(capsys):
    assert train.main(["--describe", "resnet2*"]) == 0
    out = capsys.readouterr().out
    assert "| `resnet20` | 269,722 | 0.270M |" in out and "| 0.27M | He et al. 2016" in out
    assert train.main(["--describe", "nonet*"]) == 2


def test_weight_decay_is_the_papers_coupled_l2():
    """One SGD-momentum step gives w - lr * (grad + wd * w) for the kernel, and leaves the bias undecayed."""
    from models.layers import l2

    wd, lr = 5e-4, 0.1
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2, kernel_regularizer=l2(wd), name="d")(inputs))
    model.compile(optimizer=keras.optimizers.SGD(lr, momentum=0.9), loss="mse")
    x, y = np.ones((4, 3), np.float32), np.zeros((4, 2), np.float32)
    kernel, bias = (w.copy() for w in model.get_weights())
    pred = x @ kernel + bias
    grad_out = 2 * (pred - y) / pred.size  # d mean-squared-error / d pred
    expected_kernel = kernel - lr * (x.T @ grad_out + wd * kernel)
    expected_bias = bias - lr * grad_out.sum(0)
    model.train_on_batch(x, y)
    np.testing.assert_allclose(model.get_weights()[0], expected_kernel, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(model.get_weights()[1], expected_bias, rtol=1e-5, atol=1e-7)


def test_steps_per_execution_runs_the_same_steps(tiny_cifar, tmp_path, capsys):
    """Several steps per call into TensorFlow, the last call short: the same weights and history as one."""
    root, _ = tiny_cifar
    runs = {k: tmp_path / f"spe{k}" for k in (1, 3)}
    for k, run in runs.items():
        assert train.main(tiny_args(root, run, "--epochs", "2", "--steps-per-execution", str(k))) == 0
    default = tmp_path / "default"
    assert train.main(tiny_args(root, default, "--epochs", "1")) == 0
    execution = {k: json.loads((run / "metrics.json").read_text())["execution"] for k, run in runs.items()}
    assert execution[1]["steps_per_execution"] == 1 and execution[3]["steps_per_execution"] == 3
    assert execution[1]["onednn"] is tfenv.onednn_enabled()  # which kernels ran is on record
    assert json.loads((default / "config.json").read_text())["execution"]["steps_per_execution"] == \
        train.STEPS_PER_EXECUTION
    one, three = (keras.saving.load_model(run / "last.keras") for run in runs.values())
    assert (one.steps_per_execution, three.steps_per_execution) == (1, 3)  # as compiled and saved
    assert one.optimizer.iterations.numpy() == three.optimizer.iterations.numpy() > 3
    for a, b in zip(one.get_weights(), three.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert [float(r["loss"]) for r in read_history(runs[1])] == pytest.approx(
        [float(r["loss"]) for r in read_history(runs[3])], rel=1e-5)

    assert train.main(tiny_args(root, tmp_path / "bad", "--steps-per-execution", "0")) == 2
    assert "error: --steps-per-execution must be a whole number >= 1, not 0" in capsys.readouterr().err


def test_precomputed_and_streamed_batches_train_alike(tiny_cifar, tmp_path):
    """The CPU default computes each epoch's batches before it; streamed, tf.data computes them
    beside the step: the same batches (tests/test_data.py), so the same training."""
    root, _ = tiny_cifar
    runs = {b: tmp_path / b for b in ("precomputed", "streamed")}
    for b, run in runs.items():
        assert train.main(tiny_args(root, run, "--epochs", "2", "--batches", b)) == 0
    default = tmp_path / "default"
    assert train.main(tiny_args(root, default, "--epochs", "1")) == 0
    assert json.loads((default / "metrics.json").read_text())["execution"]["batches"] == "precomputed"
    assert json.loads((runs["streamed"] / "metrics.json").read_text())["execution"]["batches"] == "streamed"
    a, b = (keras.saving.load_model(run / "last.keras") for run in runs.values())
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-6)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert [float(r[key]) for r in read_history(runs["precomputed"])] == pytest.approx(
            [float(r[key]) for r in read_history(runs["streamed"])], rel=1e-5)


def test_where_the_batches_are_computed():
    settings, _ = train.resolve_settings("lenet")
    cpu, gpu = (train.distribute.Placement(None, kind, ["d"], 1, True, 0, 1) for kind in ("default", "one_device"))
    two = train.distribute.Placement(None, "mirrored", ["a", "b"], 2, True, 0, 1)
    assert train.choose_batches("auto", settings, cpu) == "precomputed"
    assert train.choose_batches("auto", settings, gpu) == "streamed"  # the pipeline hides behind a GPU's step
    assert train.choose_batches("auto", settings, two) == "streamed"
    assert train.choose_batches("auto", {**settings, "augment": "none"}, cpu) == "precomputed"
    for other in ({"augment": "kaggle"}, {"cutout": 16}, {"mixup": 0.2}):  # computed per batch only
        assert train.choose_batches("auto", {**settings, **other}, cpu) == "streamed"
        with pytest.raises(train.TrainError, match="use --batches streamed"):
            train.choose_batches("precomputed", {**settings, **other}, cpu)
    assert train.choose_batches("precomputed", settings, gpu) == "precomputed"
    assert train.choose_batches("streamed", settings, cpu) == "streamed"
    with pytest.raises(train.TrainError, match="feeds one device; this run has 2 replicas"):
        train.choose_batches("precomputed", settings, two)
    with pytest.raises(train.TrainError, match="--batches must be one of auto, precomputed, streamed"):
        train.choose_batches("ahead", settings, cpu)
