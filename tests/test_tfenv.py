"""TensorFlow's load-time settings (tfenv.py) reach TensorFlow from every entry point."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

import patches
import tfenv
from conftest import ROOT

# Each entry point as a user starts it, stopped right after its imports. (tricks/ imports series, and
# bench/__init__.py tfenv, first; ensemble.py and htd import keras themselves. tests/test_layout.py checks
# that every module importing Keras or TensorFlow imports tfenv before them.)
ENTRY_POINTS = {
    "train.py": "import train",
    "ensemble.py": "import ensemble",
    "python -m htd": "import htd.__main__",
}

REPORT = ("import json, sys, os, tfenv, keras, patches; "
          "print(json.dumps([tfenv.LOADED_TOO_LATE, os.environ.get('TF_ENABLE_ONEDNN_OPTS'), patches.onednn_enabled(), "
          "keras.backend.backend()]))")
SETTINGS = ("TF_ENABLE_ONEDNN_OPTS", "KERAS_BACKEND")


def run_python(code, **env):
    environment = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    environment.update(env)
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=environment, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def report(proc):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.strip().splitlines()[-1:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """Every case in its own fresh Python (TensorFlow reads its settings once), all started at once."""
    cases = {name: (f"import sys; {imports}; {REPORT}", {}) for name, imports in ENTRY_POINTS.items()}
    # A user's Keras configuration naming another backend (keras.json is where Keras keeps it).
    keras_home = tmp_path_factory.mktemp("keras_home")
    (keras_home / "keras.json").write_text(json.dumps({"backend": "jax"}))
    cases["train.py, TF_ENABLE_ONEDNN_OPTS=0, keras.json says jax"] = (
        f"import train; {REPORT}", {"TF_ENABLE_ONEDNN_OPTS": "0", "KERAS_HOME": str(keras_home)})
    cases["tensorflow imported first"] = (f"import tensorflow; {REPORT}", {})
    # Whether this TensorFlow build runs oneDNN kernels when asked to (x86 Linux builds do).
    cases["oneDNN available"] = ("import json, tensorflow, patches; print(json.dumps(patches.onednn_enabled()))",
                                 {"TF_ENABLE_ONEDNN_OPTS": "1"})
    procs = {name: run_python(code, **env) for name, (code, env) in cases.items()}
    return {name: report(proc) for name, proc in procs.items()}


def test_every_entry_point_sets_the_environment_before_tensorflow_loads(reports):
    expected = [False, "1", reports["oneDNN available"], "tensorflow"]
    assert {name: reports[name] for name in ENTRY_POINTS} == {name: expected for name in ENTRY_POINTS}


def test_a_value_in_the_environment_wins_and_keras_json_does_not(reports):
    assert reports["train.py, TF_ENABLE_ONEDNN_OPTS=0, keras.json says jax"] == [False, "0", False, "tensorflow"]


def test_tensorflow_loaded_first_is_noticed(reports):
    late, _, _, _ = reports["tensorflow imported first"]
    assert late is True


def test_this_process_runs_onednn_kernels(reports):
    """The test suite itself measures the default path: conftest imports tfenv before TensorFlow."""
    assert not tfenv.LOADED_TOO_LATE
    assert patches.onednn_enabled() == reports["oneDNN available"]


def test_a_backend_keras_cannot_load_is_one_line_before_keras_fails():
    cases = [("foo", "error: KERAS_BACKEND=foo: Keras' backends are tensorflow, jax, torch, numpy, openvino\n")]
    if importlib.util.find_spec("openvino") is None:
        cases.append(("openvino", "error: KERAS_BACKEND=openvino: openvino is not installed here\n"))
    for backend, message in cases:
        proc = run_python("import train", KERAS_BACKEND=backend)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2 and err == message and out == ""
