"""Several devices and several workers, on this CPU: logical CPU devices and local worker processes."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

import data
import distribute
import loop
import train

ROOT = Path(__file__).resolve().parents[1]


def run_train(args, timeout=300, env=None):
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def tiny_args(root, run_dir, *extra, epochs=1):
    return ["--model", "lenet", "--data-dir", str(root), "--run-dir", str(run_dir), "--epochs", str(epochs),
            "--val-split", "37", "--batch-size", "32", *extra]


def accuracy_on_one_device(model_path, images, labels):
    model = keras.saving.load_model(model_path)
    logits = model.predict(data.make_dataset(images, labels, 64), verbose=0)
    return float(np.mean(logits.argmax(1) == labels))


def test_two_replicas_evaluate_every_image_once(tiny_cifar, tmp_path):
    root, _ = tiny_cifar
    run = tmp_path / "run"
    result = run_train(tiny_args(root, run, "--devices", "2"))
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["execution"]["replicas"] == 2 and metrics["execution"]["strategy"] == "mirrored"
    assert metrics["execution"]["per_replica_batch"] == 16 and metrics["execution"]["global_batch"] == 32
    assert metrics["execution"]["steps_per_execution"] == 1  # Keras' only working value with several replicas

    # 37 validation images do not split evenly over 2 replicas: none may be dropped or doubled.
    d = data.load_cifar10(root, verbose=False)
    _, val = data.stratified_split(d.y_train, 37, seed=0)
    assert metrics["val_accuracy"] == pytest.approx(
        accuracy_on_one_device(run / "best.keras", d.x_train[val], d.y_train[val]), abs=1e-6)
    assert metrics["test_accuracy"] == pytest.approx(
        accuracy_on_one_device(run / "best.keras", d.x_test, d.y_test), abs=1e-6)


def test_batch_must_split_over_replicas_and_jit_needs_one_cpu_device(tiny_cifar, tmp_path):
    root, _ = tiny_cifar
    result = run_train(tiny_args(root, tmp_path / "run", "--devices", "2", "--batch-size", "33"))
    assert result.returncode == 2
    assert "error: batch size 33 does not split evenly over 2 replicas" in result.stderr
    result = run_train(tiny_args(root, tmp_path / "run", "--devices", "2", "--jit"))
    assert result.returncode == 2
    assert "error: --jit cannot be combined with 2 logical CPU devices" in result.stderr
    result = run_train(tiny_args(root, tmp_path / "run", "--devices", "2", "--steps-per-execution", "4"))
    assert result.returncode == 2
    assert "error: --steps-per-execution 4 does not work with several replicas (2 here)" in result.stderr
    assert not (tmp_path / "run").exists()


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start_workers(root, run, scratch, epochs):
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    procs = []
    for index in range(2):
        env = {**os.environ, "TMPDIR": str(scratch),
               "TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen([sys.executable, "train.py", *tiny_args(root, run, epochs=epochs)], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def _finish_workers(procs, timeout):
    """Waits for every worker (killing them all on a time-out), checks they exited 0; their stdout."""
    try:
        outputs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    return [out for out, _ in outputs]


EPOCHS_TO_KILL = 8


@pytest.mark.slow
def test_two_workers_resume_after_both_are_killed(tiny_cifar, tmp_path):
    root, _ = tiny_cifar
    run, scratch = tmp_path / "run", tmp_path / "scratch"
    scratch.mkdir()
    # Long enough to be killed mid-run (an epoch of the tiny set takes about a second), short enough
    # to finish quickly once resumed.
    procs = _start_workers(root, run, scratch, epochs=EPOCHS_TO_KILL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            state = run / "state.json"
            if state.exists() and json.loads(state.read_text())["epochs_completed"] >= 2:
                break
            assert all(p.poll() is None for p in procs), procs[0].communicate()[1][-3000:]
            time.sleep(0.05)
        for p in procs:
            p.send_signal(signal.SIGKILL)
        for p in procs:
            p.wait(timeout=30)
    finally:
        for p in procs:
            p.kill()
    killed_at = json.loads((run / "state.json").read_text())["epochs_completed"]
    assert 2 <= killed_at < EPOCHS_TO_KILL and not (run / "metrics.json").exists()

    for out in _finish_workers(_start_workers(root, run, scratch, epochs=EPOCHS_TO_KILL), timeout=400):
        assert f"after epoch {killed_at}/{EPOCHS_TO_KILL}" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_completed"] == EPOCHS_TO_KILL and metrics["execution"]["workers"] == 2


@pytest.mark.slow
def test_two_workers_on_loopback(tiny_cifar, tmp_path):
    root, _ = tiny_cifar
    run, scratch = tmp_path / "run", tmp_path / "scratch"
    scratch.mkdir()
    outputs = _finish_workers(_start_workers(root, run, scratch, epochs=1), timeout=300)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["execution"]["strategy"] == "multi_worker"
    assert metrics["execution"]["workers"] == 2 and metrics["execution"]["replicas"] == 2
    assert (run / "best.keras").is_file() and (run / "last.keras").is_file()
    assert not [p for p in scratch.iterdir() if p.name.startswith("cifar10-worker")]  # the worker's folder is gone
    assert "Finished" in outputs[1]  # the other worker trained too, in its own temporary folder


def test_jit_trains_an_epoch(tiny_cifar, tmp_path):
    root, _ = tiny_cifar
    run = tmp_path / "run"
    metrics = loop.train("lenet", loaded=data.load_cifar10(root, verbose=False), run_dir=run, epochs=1,
                          val_split=37, batch_size=32, jit=True, verbose=0)
    assert metrics["execution"]["jit"] is True and metrics["epochs_completed"] == 1
    assert np.isfinite(metrics["test_loss"])


def test_mixed_precision_trains_or_is_refused(tiny_cifar, tmp_path, capsys):
    root, _ = tiny_cifar
    code = train.main(tiny_args(root, tmp_path / "run", "--mixed-precision"))
    if distribute.cpu_has_bfloat16() or distribute.tf.config.list_physical_devices("GPU"):
        assert code == 0
        metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
        assert metrics["execution"]["precision"].startswith("mixed_")
    else:
        assert code == 2
        assert "error: --mixed-precision: no GPU, and this CPU has no native bfloat16" in capsys.readouterr().err
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.parametrize("config, message", [
    ([], "not a JSON object"),
    ({}, "no 'cluster' object"),
    ({"cluster": {"worker": "127.0.0.1:1"}, "task": {"index": 0}}, "cluster.worker must be a list of 'host:port'"),
    ({"cluster": {"worker": ["127.0.0.1:1"], "ps": ["127.0.0.1:2"]}, "task": {"index": 0}}, "job 'ps'"),
    ({"cluster": {"worker": ["127.0.0.1:1"]}}, "no 'task' object"),
    ({"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "chief", "index": 0}}, "task.type 'chief' is not a job"),
    ({"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"index": 3}}, "task.index 3 is not one of job worker's tasks"),
    ({"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"index": -1}}, "task.index -1 is not one of"),
])
def test_a_cluster_description_tensorflow_would_stumble_on_is_refused_first(config, message, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps(config))
    with pytest.raises(distribute.DistributeError, match=f"TF_CONFIG is not a valid cluster description .*{re.escape(message)}"):
        distribute.place()


def test_the_chief_and_the_worker_count_of_a_cluster(monkeypatch):
    cluster = {"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2", "127.0.0.1:3"]}
    for task, expected in [({"type": "chief", "index": 0}, (True, 0, 3)), ({"type": "worker", "index": "1"}, (False, 1, 3))]:
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": task}))
        assert distribute._cluster() == expected


@pytest.mark.parametrize("extra, message", [
    (["--devices", "2"], "--devices 2 with TF_CONFIG"),
    (["--seeds", "0", "1"], "--seeds with TF_CONFIG"),
])
def test_flags_for_one_machine_are_refused_under_tf_config(extra, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"index": 0}}))
    assert train.main(tiny_args(tmp_path / "no-data", tmp_path / "run", *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "run").exists()
