"""Every reliance of this project on Keras' or TensorFlow's internals, each checked against the code it was written for.

The rest of the repository uses public APIs only (tests/test_patches.py scans it for imports of
`keras.src` or `tensorflow.python` and for replaced layer calls). Where no public API does what the
project needs, the reliance lives here, as an entry of PATCHES: the upstream issue it works around
(or why no public API serves), the library versions it was written and tested for, and the sha256
of the source of each upstream function it replaces, reproduces or relies on.

Applying a patch first compares those fingerprints with the installed code (once per process);
where one differs, PatchError names the patch, the function and the versions, and nothing is
applied. So an upgrade of Keras or TensorFlow is a decision, not a silent change of behaviour: read
the patch against the new code, delete it if upstream fixed the issue, else update its
fingerprints (`python patches.py` prints the installed ones) and its tested versions.

    patch_keras_fit()                       distribute.py, under a strategy other than the default
    route_call(layer, function, **options)  fused.py and padded.py: one stock layer's call, rerouted
    routed_call(layer)                      ... and which function it is routed through
    onednn_enabled()                        whether TensorFlow runs its oneDNN kernels
    saved_weights(raw, path)                models/registry.py: a weights file read by layer name
"""

import contextlib
import functools
import hashlib
import importlib
import importlib.metadata
import inspect
import types
import zipfile
from dataclasses import dataclass
from typing import Callable, NamedTuple

import tfenv  # noqa: F401  (before keras: TensorFlow reads its settings when it loads)
import h5py


class PatchError(Exception):
    """The installed Keras or TensorFlow is not the code a patch was written for."""


@dataclass(frozen=True)
class Patch:
    issues: tuple         # the upstream issues it works around; () where none is filed
    why: str              # what breaks, or what no public API offers
    tested: dict          # {library: version} it was written and tested for
    fingerprints: dict    # {"module:qualified.name": sha256 of its source}, see fingerprint()
    routes: str = ""      # for a route_call patch: the "module.function" layer calls are routed through


# The route_call mechanism relies on Keras looking a layer's `call` up on the instance each time it
# is called (Operation.__call__), with the call signature Layer.__init__ read from the class.
_OPERATION_CALL = "keras.src.ops.operation:Operation.__call__"

PATCHES = {
    "keras_distributed_fit": Patch(
        issues=("keras-team/keras#20585", "tensorflow/tensorflow#72388"),
        why="fit/evaluate under MirroredStrategy fail on a batch that does not split evenly over the "
            "replicas, and under MultiWorkerMirroredStrategy on the first batch and on scalar metrics",
        tested={"keras": "3.15.1", "tensorflow": "2.21.0"},
        fingerprints={
            "keras.src.backend.tensorflow.trainer:reduce_per_replica":
                "2e7d54b1e6edc29a8c6a7e6b66cd4c8be3ba7842412c93753ac3afe169fa7fb8",
            "keras.src.backend.tensorflow.trainer:TensorFlowTrainer._maybe_symbolic_build":
                "92a504f5eba9b29f81f1bf26180bdd5bf5186b06b7bda426534b90d2d02bc1c2",
            "keras.src.backend.tensorflow.trainer:_collective_all_reduce_multi_worker":
                "0302369d850e6694978fa7691c0e97b79cd0cf83a6bbef7caed8738e1f1a5c24",
        }),
    "fused_batch_norm": Patch(
        issues=("keras-team/keras-core#225",),
        why="Keras 3 computes batch norm on TensorFlow from separate ops, not TensorFlow's fused kernel; "
            "fused._fused_call computes what BatchNormalization.call computes with the kernel",
        tested={"keras": "3.15.1", "tensorflow": "2.21.0"},
        routes="fused._fused_call",
        fingerprints={
            _OPERATION_CALL:
                "54fc9fcb8839877d91d0d0c17672c579721ba28d9f5151106f58dc7b41b8c0ae",
            "keras.layers:BatchNormalization.call":
                "31502bd832c5eb64f0bb108a4db21f204b906fff8bebd34ffa3a4f68eab00eb5",
            "keras.layers:BatchNormalization._moments":
                "2ba739b46f4fadea719cd8e41e56d591ef86adae38d58c11930efba046093378",
        }),
    "padded_conv": Patch(
        issues=(),
        why="oneDNN's CPU kernels run partly empty vectors for channel counts not a multiple of the "
            "vector width; padded._padded_call computes what Conv2D.call computes with zero channels added",
        tested={"keras": "3.15.1", "tensorflow": "2.21.0"},
        routes="padded._padded_call",
        fingerprints={
            _OPERATION_CALL:
                "54fc9fcb8839877d91d0d0c17672c579721ba28d9f5151106f58dc7b41b8c0ae",
            "keras.layers:Conv2D.call":
                "ca1f1ff7ee71514e3583a231ed0c67041935b7f49ec567fa06bb3d53da76837f",
            "keras.layers:Conv2D.convolution_op":
                "11338f3149be6a3cab31413da9e1fd82faf0ffba0f3b5a7806cfbdd002aa064f",
            "keras.layers:Conv2D.build":
                "70c017931346e95c7f2b89d9f5309149c775363076c8b5addb060eb5d84495f1",
        }),
    "onednn_check": Patch(
        issues=(),
        why="no public API says whether oneDNN kernels run (tf.sysconfig.get_build_info says how "
            "TensorFlow was built, not what TF_ENABLE_ONEDNN_OPTS turned on)",
        tested={"tensorflow": "2.21.0"},
        fingerprints={
            "tensorflow.python.util._pywrap_util_port:IsMklEnabled":
                "f2e336a54266904a3f9244d57b55ea9aeb6f74acfb0f34bd8c571f38f8cf5c50",
        }),
    "keras_weights_layout": Patch(
        issues=(),
        why="no public API reads a weights file by layer name without the architecture that saved it; "
            "saved_weights reads the h5 layout Keras' saving code writes",
        tested={"keras": "3.15.1"},
        fingerprints={
            "keras.src.saving.saving_lib:_VARS_FNAME_H5":
                "c083284ca36ddd26b7ad31644749ad9bebbd48c23513f13361ac0fc2f94ec28e",
            "keras.src.saving.saving_lib:_save_state":
                "472e9cc9267e3c4b23f189a8fc2179d3cd3d21d5270a4cce9e98415e383a2347",
            "keras.src.saving.saving_lib:_save_container_state":
                "2ef3b8c0ca3bedec291487f07c3671be6e310c006f2cfd847f20361bb990e618",
            "keras.src.saving.saving_lib:_walk_saveable":
                "c71ae4a33956e66e58381e4f3b3cca8a5bcc041b732ce8daac6ee925be3d5190",
            "keras.src.saving.saving_lib:H5IOStore._create_h5_group":
                "56b53f32fcd0c8413bc2c461f98b2992717ffeb98f92861f887267a70677841e",
            "keras.layers:Layer.save_own_variables":
                "911efd0328907677c2717f7da922a8caad4851533d43677331429f36315e90bc",
        }),
}


# --------------------------------------------------------------------------- the check

def fingerprint(target):
    """sha256 of the installed code of `target` ("module:qualified.name"): its source; for a compiled
    function its signature line (pybind11 writes it in the docstring); for a constant its repr. A
    function a patch replaced is read through its `__wrapped__`, so a patched process reads upstream's."""
    module, _, qualname = target.partition(":")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if inspect.isfunction(obj):
        obj = inspect.unwrap(obj)
    try:
        text = inspect.getsource(obj)
    except TypeError:
        text = obj.__doc__ if callable(obj) else repr(obj)
    return hashlib.sha256(text.encode()).hexdigest()


def verify(name):
    """Raises PatchError unless the installed code patch `name` relies on is the code it was written for."""
    patch = PATCHES[name]
    changed = []
    for target, recorded in patch.fingerprints.items():
        try:
            if fingerprint(target) != recorded:
                changed.append(target)
        except (ImportError, AttributeError, OSError):  # gone, or no source to read
            changed.append(f"{target} (missing)")
    if changed:
        libraries = sorted({target.split(".")[0] for target in changed})
        installed = ", ".join(f"{library} {_version(library)}" for library in libraries)
        tested = ", ".join(f"{library} {version}" for library, version in patch.tested.items())
        upstream = f" (upstream: {', '.join(patch.issues)})" if patch.issues else ""
        raise PatchError(
            f"patch {name!r} in patches.py was written for {tested}, and the code it relies on has changed in "
            f"the installed {installed}: {', '.join(changed)}. Re-check the patch against the installed code"
            f"{upstream}; delete it if upstream fixed the issue, else update its fingerprints (python patches.py "
            f"prints them) and its tested versions")


_verified = set()


def require(name):
    """verify(name), once per process."""
    if name not in _verified:
        verify(name)
        _verified.add(name)


def _version(library):
    try:
        return importlib.metadata.version(library)
    except importlib.metadata.PackageNotFoundError:
        return getattr(importlib.import_module(library), "__version__", "(version unknown)")


def _replace(owner, name, replacement):
    replacement.__wrapped__ = getattr(owner, name)  # what fingerprint() reads once this is in place
    setattr(owner, name, replacement)


# --------------------------------------------------------------------------- keras_distributed_fit

def patch_keras_fit():
    """Two spots where Keras 3 `fit`/`evaluate` break under distribution (keras-team/keras#20585,
    tensorflow/tensorflow#72388), replaced process-wide:

    1. before the first step, Keras takes one distributed batch and averages it across replicas,
       only to learn its shapes. Under MultiWorkerMirroredStrategy the collective reduce of a
       per-replica batch cannot be converted to a tensor; under MirroredStrategy the average fails
       when the batch does not split evenly over the replicas. The first local replica's batch has
       the shapes it needs.
    2. under MultiWorkerMirroredStrategy the per-step metric values are scalars, which Keras
       all-reduces with `axis=0`; a scalar has no axis 0. They are averaged with no axis instead.

    Under the default strategy both run Keras' own code. Applying it again changes nothing.
    """
    require("keras_distributed_fit")
    import keras
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer

    if trainer.reduce_per_replica.__module__ == __name__:
        return
    original_reduce = trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            def mean(v):
                first = v.values[0] if isinstance(v, tf.distribute.DistributedValues) else v
                return strategy.reduce("MEAN", v, axis=0 if first.shape.rank else None)
            return keras.tree.map_structure(mean, values)
        return original_reduce(values, strategy, reduction)

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is None:
            return
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = keras.tree.map_structure(
                    lambda x: (self.distribute_strategy.experimental_local_results(x)[0]
                               if isinstance(x, tf.distribute.DistributedValues) else x), next(it))
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    _replace(trainer, "reduce_per_replica", reduce_per_replica)
    _replace(trainer.TensorFlowTrainer, "_maybe_symbolic_build", maybe_symbolic_build)


# --------------------------------------------------------------------------- fused_batch_norm, padded_conv

class Route(NamedTuple):
    function: Callable
    options: dict


def route_call(layer, function, **options):
    """From now on, calls of this one stock `layer` run `function(layer, *args, **kwargs, **options)`
    in place of its class's `call`; `function` takes the arguments the class's `call` takes. The
    layer stays an instance of its stock class, so its config and saved file are unchanged (a saved
    model reloads with the class's own call). Routing a layer again replaces its route.

    `function` must be the `routes` of an entry of PATCHES, whose fingerprints say which upstream
    code it reproduces; PatchError where it is not, or where that code changed."""
    where = f"{function.__module__}.{function.__qualname__}"
    names = [name for name, patch in PATCHES.items() if patch.routes == where]
    if not names:
        raise PatchError(f"no entry of patches.PATCHES routes layer calls through {where}: add one, with the "
                         "upstream code it reproduces (its fingerprints) and the versions it was tested with")
    require(names[0])
    layer.call = types.MethodType(functools.partial(function, **options), layer)


def routed_call(layer):
    """The Route (function, options) route_call gave `layer`; None where it runs its class's own call."""
    method = vars(layer).get("call")
    bound = getattr(method, "__func__", None)
    return Route(bound.func, dict(bound.keywords)) if isinstance(bound, functools.partial) else None


# --------------------------------------------------------------------------- onednn_check

def onednn_enabled():
    """Whether the loaded TensorFlow runs its oneDNN kernels (False also where it was built without them)."""
    require("onednn_check")
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


# --------------------------------------------------------------------------- keras_weights_layout

class LayoutError(ValueError):
    """A file that does not hold weights in the layout Keras 3 writes."""


@contextlib.contextmanager
def saved_weights(raw, path):
    """The weights in `raw`, an open `.weights.h5` or `.keras` file named `path`, as Keras 3's saving
    code lays them out: (the saved model's name, or "?", {layer name: [its h5 datasets, in the order
    Layer.save_own_variables wrote them]}), readable while the context is open. LayoutError where the
    file is not laid out so."""
    require("keras_weights_layout")
    with _h5_of(raw, path) as h5, h5py.File(h5, "r") as f:
        layers = _layers(f, path)
        model = f["vars"].attrs.get("name", "?") if isinstance(f.get("vars"), h5py.Group) else "?"
        yield (model.decode() if isinstance(model, bytes) else str(model)), layers


@contextlib.contextmanager
def _h5_of(raw, path):
    """The h5 file to read: the open `.weights.h5` file itself, or the one inside an open `.keras` archive."""
    if not path.name.endswith(".keras"):
        yield raw
        return
    with zipfile.ZipFile(raw) as archive:
        if "model.weights.h5" not in archive.namelist():
            raise LayoutError(f"{path} holds no model.weights.h5 (not a .keras file Keras 3 wrote)")
        with archive.open("model.weights.h5") as member:
            yield member


def _layers(f, path):
    # Each layer of a functional model is the group layers/<its class, numbered>/vars, named in the
    # group's "name" attribute, its variables the datasets "0", "1", ...
    layers = {}
    groups = f.get("layers")
    if not isinstance(groups, h5py.Group):
        raise LayoutError(f"{path} holds no layers (not a weights file Keras 3 wrote)")
    for key, group in groups.items():
        variables = group.get("vars")
        if not isinstance(variables, h5py.Group):
            continue
        nested = []
        group.visititems(lambda sub, obj: nested.append(sub) if isinstance(obj, h5py.Dataset)
                         and not sub.startswith("vars/") else None)
        if nested:
            raise LayoutError(f"{path} holds weights of nested layers ({key}/{nested[0]}), which are not read")
        name = variables.attrs.get("name")
        if name is None:
            raise LayoutError(f"{path} does not record its layer names (written by Keras before 3.x that does); "
                              "load it with model.load_weights instead")
        name = name.decode() if isinstance(name, bytes) else str(name)
        layers[name] = [variables[str(i)] for i in range(len(variables))]
    return layers


if __name__ == "__main__":
    # The installed code's fingerprints, to paste into PATCHES once a patch has been re-checked against it.
    for name, patch in PATCHES.items():
        print(f"{name}:")
        for target, recorded in patch.fingerprints.items():
            try:
                installed = fingerprint(target)
            except (ImportError, AttributeError, OSError) as e:
                installed = f"missing ({type(e).__name__}: {e})"
            note = "" if installed == recorded else "  # differs"
            print(f'            "{target}":\n                "{installed}",{note}')
