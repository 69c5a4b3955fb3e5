"""Every reliance on Keras' or TensorFlow's internals is an entry of patches.py, checked against the installed code."""

import ast
import importlib
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import keras
import pytest

import fused
import models
import padded
import patches
from conftest import ROOT

CHANGED = "0" * 64


def test_every_entry_names_its_upstream_versions_and_fingerprints():
    for name, patch in patches.PATCHES.items():
        assert patch.why and patch.fingerprints, name
        libraries = {target.split(".")[0] for target in patch.fingerprints}
        assert libraries <= set(patch.tested), f"{name}: no tested version for {libraries - set(patch.tested)}"
        assert all(re.fullmatch(r"[0-9a-f]{64}", f) for f in patch.fingerprints.values()), name
        if patch.routes:  # the function route_call is given must be found under this name
            module, function = patch.routes.rsplit(".", 1)
            assert callable(getattr(importlib.import_module(module), function)), patch.routes


@pytest.mark.parametrize("name", list(patches.PATCHES))
def test_the_installed_code_is_what_each_patch_was_written_for(name):
    """Fails after an upgrade that changed what a patch relies on: re-check the patch, then update patches.py."""
    try:
        patches.verify(name)
    except patches.PatchError as e:
        pytest.fail(str(e), pytrace=False)


def bn_model():
    inputs = keras.Input((4, 4, 6))
    return keras.Model(inputs, keras.layers.BatchNormalization()(keras.layers.Conv2D(6, 1)(inputs)))


def saved_weights_file(tmp_path):
    path = tmp_path / "m.weights.h5"
    bn_model().save_weights(path)
    return path


# How each patch is applied where the project applies it.
APPLY = {
    "keras_distributed_fit": lambda tmp_path: patches.patch_keras_fit(),
    "fused_batch_norm": lambda tmp_path: fused.use_fused_batch_norm(bn_model()),
    "padded_conv": lambda tmp_path: padded.pad_channels(models.create_model("lenet")),
    "onednn_check": lambda tmp_path: patches.onednn_enabled(),
    "keras_weights_layout": lambda tmp_path: models.weights_layout(saved_weights_file(tmp_path)),
}


def test_every_patch_has_a_way_to_apply_it_here():
    assert set(APPLY) == set(patches.PATCHES)


@pytest.mark.parametrize("name", list(patches.PATCHES))
def test_a_changed_upstream_function_stops_its_patch_with_what_to_do(name, monkeypatch, tmp_path):
    patch = patches.PATCHES[name]
    target = list(patch.fingerprints)[-1]
    monkeypatch.setitem(patch.fingerprints, target, CHANGED)
    monkeypatch.setattr(patches, "_verified", set())
    with pytest.raises(patches.PatchError) as error:
        APPLY[name](tmp_path)
    message = str(error.value)
    library = target.split(".")[0]
    for expected in (f"patch {name!r}", target, f"installed {library} {importlib.metadata.version(library)}",
                     *(f"{lib} {version}" for lib, version in patch.tested.items()),
                     "Re-check the patch", "update its fingerprints (python patches.py prints them)"):
        assert expected in message
    assert "\n" not in message
    assert [t for t in patch.fingerprints if t in message] == [target]  # only the function that changed


def test_each_patch_is_checked_once_per_process(monkeypatch):
    read = []
    fingerprint = patches.fingerprint
    monkeypatch.setattr(patches, "fingerprint", lambda target: read.append(target) or fingerprint(target))
    monkeypatch.setattr(patches, "_verified", set())
    for _ in range(3):
        patches.onednn_enabled()
    assert read == list(patches.PATCHES["onednn_check"].fingerprints)


def test_applying_the_fit_patch_twice_patches_once_and_the_check_still_reads_upstream():
    # In a process of its own: the patch is process-wide.
    code = ("import json, patches\n"
            "from keras.src.backend.tensorflow import trainer\n"
            "def current(): return trainer.reduce_per_replica, trainer.TensorFlowTrainer._maybe_symbolic_build\n"
            "upstream = current(); patches.patch_keras_fit(); patched = current(); patches.patch_keras_fit()\n"
            "patches.verify('keras_distributed_fit')\n"
            "print(json.dumps([all(p is not u for p, u in zip(patched, upstream)), current() == patched,\n"
            "                  [p.__wrapped__ for p in patched] == list(upstream)]))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr.strip().splitlines()[-1:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [True, True, True]


def doubled_call(self, inputs):
    return inputs * 2


def test_route_call_routes_one_layer_and_a_second_route_replaces_the_first():
    model = bn_model()
    bn, twin = model.layers[2], keras.layers.BatchNormalization()
    assert patches.routed_call(bn) is None
    fused.fuse_layer(bn, extra_channels=2)
    fused.fuse_layer(bn)
    assert patches.routed_call(bn) == (fused._fused_call, {"extra_channels": 0})
    assert fused.is_fused(bn) and patches.routed_call(twin) is None  # this layer only


def test_a_function_no_patch_registers_cannot_be_routed():
    where = f"{doubled_call.__module__}.doubled_call"
    message = f"no entry of patches.PATCHES routes layer calls through {where}"
    with pytest.raises(patches.PatchError, match=re.escape(message)):
        patches.route_call(keras.layers.Conv2D(2, 1), doubled_call)


# --------------------------------------------------------------------------- nothing outside patches.py

INTERNAL = ("keras.src", "tensorflow.python", "tf.python")
PRIVATE = ("_pywrap", "__internal__")


def _dotted(node):
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _internal(name):
    return any(name == p or name.startswith(p + ".") for p in INTERNAL) or any(p in name for p in PRIVATE)


def reliances(path):
    """{(line, what)} of the uses of a library's internals in the Python file `path`: imports or
    attributes of `keras.src` / `tensorflow.python` / TensorFlow's `_pywrap` modules, and replaced
    layer calls. Strings are not read (a docstring may quote an error message naming keras.src)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Attribute):
            names = [_dotted(node)]
        elif (isinstance(node, ast.Call) and _dotted(node.func).split(".")[-1] in ("import_module", "__import__")
              and node.args and isinstance(node.args[0], ast.Constant)):
            names = [str(node.args[0].value)]
        found |= {(node.lineno, name) for name in names if _internal(name)}
        targets = (node.targets if isinstance(node, ast.Assign)
                   else [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else [])
        found |= {(node.lineno, f"{_dotted(t)} = ...") for t in targets
                  if isinstance(t, ast.Attribute) and t.attr == "call"}
        if (isinstance(node, ast.Call) and _dotted(node.func) == "setattr" and len(node.args) > 1
                and isinstance(node.args[1], ast.Constant) and node.args[1].value == "call"):
            found.add((node.lineno, "setattr(..., 'call', ...)"))
    return found


def scan(root):
    """{file: sorted reliances} for the Python files under `root`, but patches.py, tests/ and hidden folders (.venv)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if (parts == ("patches.py",) or parts[0] == "tests"
                or any(p.startswith(".") or p == "site-packages" for p in parts)):
            continue
        if found := reliances(path):
            out["/".join(parts)] = sorted(found)
    return out


def test_nothing_outside_patches_py_relies_on_library_internals():
    found = scan(Path(ROOT))
    assert not found, f"move these into an entry of patches.py, or use a public API: {found}"


def test_the_scan_finds_each_kind_of_reliance(tmp_path):
    bad = ["import keras.src.backend",
           "from keras.src import tree",
           "from keras import src",
           "from tensorflow.python.util import _pywrap_util_port",
           "import tensorflow as tf",
           "x = tf.python.eager",
           "y = keras.src.layers.Layer",
           "layer.call = types.MethodType(function, layer)",
           "setattr(layer, 'call', function)",
           "m = importlib.import_module('keras.src.saving.saving_lib')",
           "z = tf.__internal__.CompositeTensor"]
    good = ['"""Quotes an error: <class \'keras.src.optimizers.sgd.SGD\'> could not be deserialized."""',
            "import keras",
            "y = keras.layers.BatchNormalization.call(layer, inputs)",
            "layer.calls = 1",
            "layer.input_spec = None"]
    (tmp_path / "bad.py").write_text("\n".join(bad) + "\n")
    (tmp_path / "good.py").write_text("\n".join(good) + "\n")
    for exempt in ("patches.py", "tests/test_x.py", ".venv/lib/x.py"):
        (tmp_path / exempt).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / exempt).write_text("\n".join(bad) + "\n")
    found = scan(tmp_path)
    assert list(found) == ["bad.py"]
    public = {"import tensorflow as tf"}
    assert {line for line, _ in found["bad.py"]} == {i + 1 for i, line in enumerate(bad) if line not in public}
