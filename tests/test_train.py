import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

import data
import distribute
import execution
import loop
import patches
import runfolder
import train
from errors import TrainError

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
    assert metrics["machines"] == {execution.machine(): 3} and "cores" in execution.machine()
    # best.keras loads in a process that has nothing of this project imported.
    probe = subprocess.run([sys.executable, "-c", "import sys, keras; print(keras.saving.load_model(sys.argv[1]).name)",
                            str(run / "best.keras")], capture_output=True, text=True, timeout=120, cwd="/")
    assert probe.returncode == 0 and probe.stdout.strip() == "lenet", probe.stderr[-2000:]


@pytest.mark.parametrize("augment", ["standard", "shift"])
def test_learns_the_tiny_set(augment, tiny_cifar, tmp_path):
    """Colour tells the class in the tiny set: a working loop gets far above chance (0.1)."""
    root, _ = tiny_cifar
    metrics = loop.train("lenet", loaded=data.load_cifar10(root, verbose=False), run_dir=tmp_path / "r",
                          epochs=6, val_split=40, batch_size=16, verbose=0, augment=augment)
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


def test_a_finished_runs_small_files_are_not_taken_for_an_attempt_that_committed_nothing(tiny_cifar, tmp_path,
                                                                                         capsys):
    """results/runs keeps config.json, history.csv and metrics.json of a finished run, no state.json."""
    root, _ = tiny_cifar
    run = tmp_path / "run"
    assert train.main(tiny_args(root, run, "--epochs", "1")) == 0
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("config.json", "history.csv", "metrics.json"):
        shutil.copyfile(run / name, copy / name)
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    assert train.main(tiny_args(root, copy, "--epochs", "2")) == 2
    assert "holds a run with other settings (epochs: 1 there, 2 now" in one_error_line(capsys)
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before


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


def test_a_keras_backend_runs_do_not_train_on_is_refused_before_anything_is_written(tiny_cifar, tmp_path, capsys,
                                                                                    monkeypatch):
    root, _ = tiny_cifar
    monkeypatch.setattr(distribute, "BACKEND", "openvino")  # Keras' inference-only backend
    assert train.main(tiny_args(root, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert err == "error: KERAS_BACKEND=openvino: runs train on tensorflow, jax, torch\n"
    assert not (tmp_path / "run").exists()


def test_numpy_batches_train_on_tensorflow_too(tiny_cifar, tmp_path):
    """The other backends' pipeline (numpy_pipeline.py) through the whole loop, here on TensorFlow."""
    root, _ = tiny_cifar
    run = tmp_path / "run"
    assert train.main(tiny_args(root, run, "--epochs", "2", "--lr", "0.02", "--batches", "numpy")) == 0
    config = json.loads((run / "config.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert config["execution"]["batches"] == "numpy" and config["execution"]["backend"] == "tensorflow"
    assert metrics["backends"] == {"tensorflow": 2} and metrics["epochs_completed"] == 2
    assert 0 <= metrics["test_accuracy"] <= 1 and len(read_history(run)) == 2


def test_unusable_run_folders(tiny_cifar, tmp_path, capsys):
    root, _ = tiny_cifar
    (tmp_path / "file").write_text("")
    assert train.main(tiny_args(root, tmp_path / "file" / "run")) == 2
    assert "error: cannot write to run folder" in capsys.readouterr().err
    assert train.main(tiny_args(root, tmp_path / "file")) == 2
    assert capsys.readouterr().err == f"error: run folder {tmp_path / 'file'} is a file, not a folder; give a folder's path\n"
    assert (tmp_path / "file").read_text() == ""  # left as it was
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
    assert not (tmp_path / "r").exists()  # the refused start leaves no empty run folder


def test_a_refused_start_leaves_an_existing_folder_and_its_files(tmp_path, capsys):
    run = tmp_path / "r"
    (run / "checkpoints").mkdir(parents=True)
    (run / "notes.txt").write_text("mine")
    assert train.main(["--model", "lenet", "--data-dir", str(tmp_path / "none"), "--run-dir", str(run)]) == 2
    assert (run / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"  # created by the user before the command: kept too
    empty.mkdir()
    assert train.main(["--model", "lenet", "--data-dir", str(tmp_path / "none"), "--run-dir", str(empty)]) == 2
    assert empty.is_dir()


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
    capsys.readouterr()
    assert train.main(["--describe", ""]) == 2  # not ignored, which would start ResNet-20's 200 epochs
    assert capsys.readouterr().err.startswith("error: no model matches ''")


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
    record = {k: json.loads((run / "metrics.json").read_text())["execution"] for k, run in runs.items()}
    assert record[1]["steps_per_execution"] == 1 and record[3]["steps_per_execution"] == 3
    assert record[1]["onednn"] is patches.onednn_enabled()  # which kernels ran is on record
    assert json.loads((default / "config.json").read_text())["execution"]["steps_per_execution"] == \
        execution.STEPS_PER_EXECUTION
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


@pytest.fixture(scope="module")
def unfinished_run(tiny_cifar, tmp_path_factory):
    """A run folder holding one committed epoch of two, as a kill after epoch 1 leaves it."""
    root, _ = tiny_cifar
    run = tmp_path_factory.mktemp("unfinished") / "run"
    assert train.main(tiny_args(root, run, "--epochs", "2")) == 0
    state = json.loads((run / "state.json").read_text())
    (run / "metrics.json").unlink()
    # Back to "epoch 1 committed", as test_resume_rebuilds_from_the_commit_point does.
    ckpt = run / "checkpoints"
    (ckpt / state["checkpoint"]).rename(ckpt / "epoch-0001.keras")
    best_name = state["best"]["checkpoint"]
    if best_name != "best-0001.keras":
        (ckpt / best_name).unlink()
        runfolder.save_model(keras.saving.load_model(ckpt / "epoch-0001.keras", compile=False), ckpt / "best-0001.keras")
    state.update(history=state["history"][:1], epochs_completed=1, checkpoint="epoch-0001.keras",
                 best={"epoch": 1, "val_accuracy": state["history"][0]["val_accuracy"], "checkpoint": "best-0001.keras"})
    (run / "state.json").write_text(json.dumps(state))
    runfolder.RunFolder(run).sync(state)
    return run


def snapshot(folder):
    """Every file below `folder` and its bytes (tensorboard aside), to show nothing was changed."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and "tensorboard" not in p.parts}


def copy_run(run, dest):
    import shutil
    shutil.copytree(run, dest)
    return dest


def one_error_line(capsys):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_an_unfinished_run_resumes_from_the_fixture(unfinished_run, tiny_cifar, tmp_path, capsys):
    """The fixture the tests below damage is a sound, resumable run folder."""
    root, _ = tiny_cifar
    run = copy_run(unfinished_run, tmp_path / "run")
    assert train.main(tiny_args(root, run, "--epochs", "2")) == 0
    assert f"Resuming {run} after epoch 1/2" in capsys.readouterr().out
    assert [r["epoch"] for r in read_history(run)] == ["1", "2"]


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def _state_edit(edit):
    def damage(run):
        state = json.loads((run / "state.json").read_text())
        edit(state)
        (run / "state.json").write_text(json.dumps(state))
    return damage


DAMAGE = {
    "state.json truncated": (lambda run: _truncate(run / "state.json"), "state.json is damaged (JSONDecodeError"),
    "state.json garbled": (lambda run: (run / "state.json").write_bytes(b"\x00\xff[1, 2"), "state.json is damaged"),
    "state.json a list": (lambda run: (run / "state.json").write_text("[1, 2]"),
                          "state.json is damaged (holds a list, not an object)"),
    "state.json without history": (_state_edit(lambda s: s.pop("history")), "state.json is damaged (lacks 'history')"),
    "state.json with a bad count": (_state_edit(lambda s: s.update(epochs_completed=7)),
                                    "state.json is damaged (7 epochs completed of 2, 1 history rows)"),
    "state.json with a history row not an object": (_state_edit(lambda s: s.update(history=[5])),
                                                    "state.json is damaged (history row 1 is not epoch 1's figures)"),
    "state.json with a history row of another epoch": (_state_edit(lambda s: s["history"][0].update(epoch=3)),
                                                       "state.json is damaged (history row 1 is not epoch 1's"),
    "checkpoint deleted": (lambda run: (run / "checkpoints" / "epoch-0001.keras").unlink(),
                           "checkpoints/epoch-0001.keras, which"),
    "checkpoint outside its folder": (_state_edit(lambda s: s.update(checkpoint="../config.json")),
                                      "checkpoints/../config.json, which"),
    "best checkpoint deleted": (lambda run: (run / "checkpoints" / "best-0001.keras").unlink(),
                                "checkpoints/best-0001.keras, which"),
    # last.keras and best.keras are hard links to these (a copied folder has copies, rebuilt on resume).
    "last checkpoint truncated": (lambda run: _truncate(run / "checkpoints" / "epoch-0001.keras"),
                                  "epoch-0001.keras is damaged (not a readable .keras file"),
    "best checkpoint truncated": (lambda run: _truncate(run / "checkpoints" / "best-0001.keras", 0.9),
                                  "best-0001.keras is damaged (not a whole .keras file"),
    "config.json truncated": (lambda run: _truncate(run / "config.json"), "config.json is damaged (JSONDecodeError"),
    "config.json without settings": (lambda run: (run / "config.json").write_text("{}"),
                                     "config.json is damaged (it lacks 'settings')"),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_run_folder_is_named_in_one_line_and_left_as_it_is(case, unfinished_run, tiny_cifar, tmp_path,
                                                                     capsys):
    root, _ = tiny_cifar
    run = copy_run(unfinished_run, tmp_path / "run")
    damage, message = DAMAGE[case]
    damage(run)
    before = snapshot(run)
    capsys.readouterr()
    assert train.main(tiny_args(root, run, "--epochs", "2")) == 2
    line = one_error_line(capsys)
    assert message in line and str(run) in line
    assert f"nothing in {run} was changed" in line and "another --run-dir" in line
    assert snapshot(run) == before


def test_a_damaged_metrics_file_says_how_to_evaluate_again(unfinished_run, tiny_cifar, tmp_path, capsys):
    root, _ = tiny_cifar
    run = copy_run(unfinished_run, tmp_path / "run")
    assert train.main(tiny_args(root, run, "--epochs", "2")) == 0
    _truncate(run / "metrics.json")
    before = snapshot(run)
    capsys.readouterr()
    assert train.main(tiny_args(root, run, "--epochs", "2")) == 2
    line = one_error_line(capsys)
    assert "metrics.json is damaged" in line and "delete that file and run the same command again" in line
    assert snapshot(run) == before
    (run / "metrics.json").unlink()
    assert train.main(tiny_args(root, run, "--epochs", "2")) == 0  # as the message says
    assert json.loads((run / "metrics.json").read_text())["epochs_completed"] == 2


def test_a_second_process_on_a_run_folder_is_refused_with_the_owners_pid(unfinished_run, tiny_cifar, tmp_path,
                                                                          capsys):
    import runlock
    root, _ = tiny_cifar
    run = copy_run(unfinished_run, tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time, runlock\n"
                               "with runlock.hold(sys.argv[1]):\n print('held', flush=True); time.sleep(120)", str(run)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(run)
        capsys.readouterr()
        assert train.main(tiny_args(root, run, "--epochs", "2")) == 2
        line = one_error_line(capsys)
        assert f"{run} is in use by another process (pid {holder.pid})" in line and "another --run-dir" in line
        assert snapshot(run) == before
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert train.main(tiny_args(root, run, "--epochs", "2")) == 0  # the lock died with its process
    assert not runlock.lock_path(run).exists()


def test_two_trainings_started_at_once_one_trains_and_one_is_refused(tiny_cifar, tmp_path):
    root, _ = tiny_cifar
    run = tmp_path / "run"
    command = [sys.executable, "train.py", *tiny_args(root, run, "--epochs", "3")]
    procs = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    refused = [err for code, _, err in results if code == 2]
    # Either the second one found the folder in use, or it started after the first finished.
    if codes == [0, 2]:
        assert "is in use by another process (pid" in refused[0] and "Traceback" not in refused[0]
    else:
        assert codes == [0, 0] and any("already finished" in out for _, out, _ in results)
    assert [int(r["epoch"]) for r in read_history(run)] == [1, 2, 3]


def test_a_series_and_an_ensemble_output_are_owned_by_one_process(tiny_cifar, unfinished_run, tmp_path, capsys):
    import ensemble
    import runlock
    import series
    root, _ = tiny_cifar
    out = tmp_path / "series"
    out.mkdir()
    with runlock.hold(out):
        with pytest.raises(TrainError, match=f"{out} is in use by another process \\(pid {os.getpid()}\\)"):
            series.run_grid("lenet", {"a": {}}, [0], out, kind="test", data_dir=root, epochs=1, val_split=40,
                            batch_size=32)
    assert not (out / "runs").exists()
    report = tmp_path / "ensemble.json"
    with runlock.hold(report):
        assert ensemble.main([str(unfinished_run), "--data-dir", str(root), "--out", str(report)]) == 2
    assert f"{report} is in use by another process (pid {os.getpid()})" in one_error_line(capsys)
    assert not report.exists()


def _enospc_on(monkeypatch, name_part):
    """save_model fails with a full disk on the files whose name contains `name_part`, after half a file."""
    import errno
    original = runfolder.save_model

    def save_model(model, path):
        if name_part in Path(path).name:
            tmp = Path(path).with_name(f".{Path(path).stem}.tmp.keras")
            tmp.write_bytes(b"half a file")
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
        return original(model, path)

    monkeypatch.setattr(runfolder, "save_model", save_model)


@pytest.mark.parametrize("failing", ["epoch-0002", "best-0002"])
def test_a_full_disk_stops_with_one_line_and_the_folder_at_its_last_commit(failing, unfinished_run, tiny_cifar,
                                                                           tmp_path, capsys, monkeypatch):
    root, _ = tiny_cifar
    run = copy_run(unfinished_run, tmp_path / "run")
    before = snapshot(run)
    _enospc_on(monkeypatch, failing)
    # best-0002 is only written if epoch 2 is the best: make it so.
    state = json.loads((run / "state.json").read_text())
    state["best"]["val_accuracy"] = -1.0
    (run / "state.json").write_text(json.dumps(state))
    before = snapshot(run)
    capsys.readouterr()
    assert train.main(tiny_args(root, run, "--epochs", "2")) == 2
    line = one_error_line(capsys)
    assert f"the disk holding {run} is full (" in line and "MiB free): could not write" in line
    assert "as it was after epoch 1" in line and "run the same command again to resume" in line
    after = snapshot(run)
    assert after == before, sorted(set(after) ^ set(before))
    monkeypatch.undo()
    assert train.main(tiny_args(root, run, "--epochs", "2")) == 0
    assert [r["epoch"] for r in read_history(run)] == ["1", "2"]


def _mount_tmpfs(path, size):
    path.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({result.stderr.strip() or result.returncode})")


@pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0, reason="mounting a small file system needs root")
def test_a_really_full_disk_stops_with_one_line(tiny_cifar, tmp_path):
    """A real process on a 1.1 MB file system: one epoch's checkpoints (~0.8 MB) fit, the next epoch's do not."""
    root, _ = tiny_cifar
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "1100k")
    try:
        run = disk / "run"
        result = subprocess.run([sys.executable, "train.py", *tiny_args(root, run, "--epochs", "6")], cwd=ROOT,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and f"the disk holding {run} is full" in errors[0], result.stderr[-3000:]
        assert "Traceback" not in result.stderr
        state = json.loads((run / "state.json").read_text())
        assert f"as it was after epoch {state['epochs_completed']}" in errors[0]
        left = {p.name for p in (run / "checkpoints").iterdir()}
        assert left == {state["checkpoint"], state["best"]["checkpoint"]} and not list(run.rglob(".*.tmp*"))
        runfolder.RunFolder(run).load_model(Path("checkpoints") / state["checkpoint"])  # intact
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_resuming_on_other_data_is_refused_and_a_moved_copy_is_not(unfinished_run, tiny_cifar, tmp_path, capsys):
    import shutil
    from cifar_files import write_cifar_folder
    root, _ = tiny_cifar
    run = copy_run(unfinished_run, tmp_path / "run")
    other = tmp_path / "other"
    write_cifar_folder(other, seed=1)  # the same shape and counts, other pixels and labels
    before = snapshot(run)
    capsys.readouterr()
    assert train.main(tiny_args(other, run, "--epochs", "2")) == 2
    line = one_error_line(capsys)
    assert f"{run} was trained on other data (sha256: " in line and str(root) in line
    assert snapshot(run) == before
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    assert train.main(tiny_args(moved, run, "--epochs", "2")) == 0


@pytest.mark.parametrize("extra, message", [
    (["--weight-decay", "inf"], "weight decay must be a finite number; got inf"),
    (["--lr", "nan"], "lr must be a finite number; got nan"),
    (["--mixup", "inf"], "mixup must be a finite number; got inf"),
    (["--lr-factor", "0.1", "inf", "--lr-milestones", "1", "2"], "lr factor must be a finite number; got [0.1, inf]"),
    (["--seed", "-1"], "seed must be a whole number from 0 to 4294967295; got -1"),
    (["--seed", str(2**32)], "seed must be a whole number from 0 to 4294967295; got 4294967296"),
    (["--split-seed", str(2**40)], "split seed must be a whole number from 0 to 4294967295"),
    (["--val-split", "5"], "val split must be 0 (none) or a whole number of images from 10 (one per class)"),
    (["--seeds", "0", "1", "0"], "seeds must differ (each is one run); 0 given more than once"),
    (["--seeds", "0", "-3"], "seed must be a whole number from 0 to 4294967295; got -3"),
    (["--devices", "0"], "--devices must be a positive whole number; got 0"),
    (["--run-dir", " "], "--run-dir is empty; give a path, or leave the flag out"),
])
def test_out_of_range_flags_are_refused_before_anything_is_read_or_written(extra, message, tmp_path, capsys):
    """No data set exists at --data-dir: a flag checked after the data is read would say so instead."""
    run = tmp_path / "run"
    assert train.main(tiny_args(tmp_path / "no-data", run, *extra)) == 2
    assert message in one_error_line(capsys)
    assert not run.exists()


def test_a_batch_larger_than_the_training_images_and_a_run_inside_another_are_refused(tiny_cifar, unfinished_run,
                                                                                     tmp_path, capsys):
    root, _ = tiny_cifar
    assert train.main(tiny_args(root, tmp_path / "big", "--batch-size", "1000")) == 2
    assert "--batch-size 1000 is larger than the 160 training images" in one_error_line(capsys)
    host = copy_run(unfinished_run, tmp_path / "host")
    assert train.main(tiny_args(root, host / "checkpoints" / "x")) == 2
    assert f"is inside the run folder {host}" in one_error_line(capsys)
    assert not (host / "checkpoints" / "x").exists()


def test_after_a_nan_with_nothing_committed_the_advice_works_in_the_same_folder(tiny_cifar, tmp_path, capsys):
    root, _ = tiny_cifar
    run = tmp_path / "run"
    assert train.main(tiny_args(root, run, "--epochs", "2", "--lr", "1e30", "--schedule", "constant")) == 2
    line = one_error_line(capsys)
    assert "No epoch was committed, so the same --run-dir takes other settings: try a lower --lr" in line
    assert train.main(tiny_args(root, run, "--epochs", "2", "--lr", "0.01", "--schedule", "constant")) == 0
    assert "no epoch of its earlier settings was committed; starting with the new ones (lr: 1e+30 there, 0.01 now" \
        in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["settings"]["lr"] == 0.01


def test_after_a_nan_with_epochs_committed_the_advice_names_another_folder(unfinished_run, tiny_cifar, tmp_path,
                                                                            capsys, monkeypatch):
    root, _ = tiny_cifar
    run = copy_run(unfinished_run, tmp_path / "run")
    monkeypatch.setattr(keras.callbacks.TerminateOnNaN, "on_batch_end",
                        lambda self, batch, logs=None: setattr(self.model, "stop_training", True))
    assert train.main(tiny_args(root, run, "--epochs", "2")) == 2
    line = one_error_line(capsys)
    assert "The last good model (epoch 1) is kept in" in line and "use another --run-dir" in line


def test_a_full_disk_under_tensorboards_log_is_one_line_too(unfinished_run, tiny_cifar, tmp_path, capsys,
                                                           monkeypatch):
    """TensorFlow's summary writer raises its own ResourceExhaustedError on a full disk, not OSError."""
    import tensorflow as tf
    root, _ = tiny_cifar
    run = copy_run(unfinished_run, tmp_path / "run")

    def full(*args, **kwargs):
        raise tf.errors.ResourceExhaustedError(None, None, "events.out.tfevents; No space left on device")

    monkeypatch.setattr(loop.tf.summary, "scalar", full)
    assert train.main(tiny_args(root, run, "--epochs", "2")) == 2
    line = one_error_line(capsys)
    assert f"the disk holding {run} is full" in line and "tensorboard" in line and "after epoch 2" in line
    monkeypatch.undo()
    assert train.main(tiny_args(root, run, "--epochs", "2")) == 0  # epoch 2 was committed: evaluated now


def test_a_failed_atomic_write_leaves_no_temporary_file(tmp_path):
    (tmp_path / "target").mkdir()  # os.replace onto a folder fails after the temporary is written
    with pytest.raises(OSError):
        runfolder.write_json(tmp_path / "target", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]


@pytest.mark.parametrize("script", ["train.py", "ensemble.py", "inference.py"])
def test_ctrl_c_while_a_command_loads_is_one_line_not_a_traceback(script, tmp_path):
    """SIGINT to the process group (what Ctrl-C at a terminal sends) during TensorFlow's import, which
    takes seconds; if it lands after the imports instead, the command's own handling gives the same."""
    argv = ["--describe", "nonet*"] if script == "train.py" else [str(tmp_path / "nope")]  # no data, no network
    proc = subprocess.Popen([sys.executable, script, *argv], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, env=os.environ.copy())
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err and proc.returncode in (130, 2), err  # 2: it had loaded and refused its input
