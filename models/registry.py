"""Model registry: one name per architecture variant, in the manner of timm.

    create_model("resnet20")                 # CIFAR-10 ResNet-20, 10 classes
    create_model("wrn_28_10", num_classes=100, dropout=0.3)
    create_model("resnet20", weights="runs/resnet20-seed0/best.keras")
    list_models("resnet*")

Each family file registers its variants at its bottom, one line each, with the paper, the
parameter count the paper prints, and the training recipe of the reference result.

Weights load by layer name (the builders name every layer), from the `.weights.h5` file Keras
writes or the one inside a `.keras` file, without rebuilding the architecture that saved them
(patches.saved_weights reads Keras' file layout); a file that does not fit the model is refused
with what differs. Published weights are looked up in PRETRAINED and downloaded once, their
sha256 checked, into Keras' cache.
"""

import fnmatch
import hashlib
import os
import sys
import urllib.parse
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import keras

import patches


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable
    kwargs: dict
    paper: str
    paper_params: str  # as the paper prints it, e.g. "0.27M"; "" where the paper gives none
    recipe: dict = field(default_factory=dict)


_REGISTRY: dict[str, ModelEntry] = {}


def register(name, builder, *, paper, paper_params="", recipe=None, **kwargs):
    """Registers `builder(**kwargs)` under `name`; `recipe` holds its default training settings."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    _REGISTRY[name] = ModelEntry(name, builder, dict(kwargs), paper, paper_params, dict(recipe or {}))


def list_models(pattern="*"):
    """Registered names matching a shell-style `pattern`, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def get_entry(name) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(list_models())
        raise ValueError(f"unknown model {name!r}; known models: {known}") from None


def create_model(name, weights=None, **overrides):
    """Builds the registered model `name`; keyword arguments override its architecture arguments.

    The model returns logits and is named `name`. `weights`: None (random initialisation), a
    local `.weights.h5` or `.keras` file (or a run folder: its best.keras), `{"url": ..., "sha256": ...}` (any scheme
    keras.utils.get_file reads, file:// included; downloaded once into Keras' cache), or a data
    set name looked up in PRETRAINED ("cifar10"). The file must fit the model exactly (every
    layer's weights, by name and shape); WeightsError says what differs.
    """
    entry = get_entry(name)
    # Keras walks a functional graph recursively to build, save and load it; resnet1202's ~4,800
    # layers need more than Python's default limit of 1,000, for the rest of the process.
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20_000))
    source = None if weights is None else _weights_source(name, weights)  # a bad name fails before the build
    model = entry.builder(**{**entry.kwargs, **overrides, "name": name})
    if source is not None:
        load_weights(model, source)
    return model


def get_recipe(name):
    """The default training settings of `name` (a copy), with their source under "source"."""
    return dict(get_entry(name).recipe)


# --------------------------------------------------------------------------- weights

# (model, data set) -> {"url": ..., "sha256": ...}: the weights this repository publishes. None:
# none yet; there is no release host, so every row is None until there is one.
PRETRAINED = {
    ("lenet", "cifar10"): None,
    ("nin", "cifar10"): None,
    ("nin_bn", "cifar10"): None,
    ("vgg19", "cifar10"): None,
    ("resnet20", "cifar10"): None,
    ("resnet32", "cifar10"): None,
    ("resnet44", "cifar10"): None,
    ("resnet56", "cifar10"): None,
    ("resnet110", "cifar10"): None,
    ("preact_resnet164", "cifar10"): None,
    ("wrn_28_10", "cifar10"): None,
    ("densenet_bc_100_12", "cifar10"): None,
    ("resnext29_8x64d", "cifar10"): None,
}
WEIGHTS_CACHE_SUBDIR = "models/cifar10-keras"  # under Keras' cache ($KERAS_HOME, else ~/.keras)
WEIGHTS_SUFFIXES = (".weights.h5", ".keras")


class WeightsError(ValueError):
    """Weights that cannot be had or do not fit: a missing or unreadable file, a bad hash, another architecture."""


def _weights_source(name, weights):
    """The local file `weights` (see create_model) stands for, downloading it if need be."""
    if isinstance(weights, dict):
        if set(weights) != {"url", "sha256"}:
            raise WeightsError(f"weights given as a dict need exactly 'url' and 'sha256'; got {sorted(weights)}")
        return download_weights(weights["url"], weights["sha256"])
    if not isinstance(weights, (str, os.PathLike)):
        raise WeightsError(f"weights must be None, a file, {{'url': ..., 'sha256': ...}} or a data set name; "
                           f"got {weights!r}")
    text = os.fspath(weights)
    if "://" in text:
        raise WeightsError(f"a URL needs its sha256: pass weights={{'url': {text!r}, 'sha256': ...}}")
    if not text.endswith(WEIGHTS_SUFFIXES) and os.sep not in text and not os.path.exists(text):
        key = (name, text)
        if key not in PRETRAINED:
            known = sorted(d for m, d in PRETRAINED if m == name)
            raise WeightsError(f"no pretrained weights {text!r} for {name}; data sets in PRETRAINED for it: "
                               f"{', '.join(known) or 'none'} (or give a .weights.h5 / .keras file)")
        if PRETRAINED[key] is None:
            raise WeightsError(f"no weights are published yet for {name} on {text} (this repository has no release "
                               "host yet); train it (python train.py --model ...) and give its best.keras")
        return download_weights(PRETRAINED[key]["url"], PRETRAINED[key]["sha256"])
    return weights_file(text)


def download_weights(url, sha256):
    """The path of `url` in Keras' cache, downloaded there once and checked against `sha256`.

    A download whose sha256 differs is deleted (keras.utils.get_file 3.15 raises but keeps it).
    """
    if not (isinstance(sha256, str) and len(sha256) == 64 and all(c in "0123456789abcdef" for c in sha256.lower())):
        raise WeightsError(f"the sha256 of {url} must be 64 hexadecimal digits; got {sha256!r}")
    sha256 = sha256.lower()
    fname = urllib.parse.unquote(os.path.basename(urllib.parse.urlsplit(url).path))
    if not fname.endswith(WEIGHTS_SUFFIXES):
        raise WeightsError(f"{url} does not name a {' or '.join(WEIGHTS_SUFFIXES)} file")
    # Read now, as data.py does: Keras reads $KERAS_HOME once, when it is imported.
    home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass  # get_file falls back to /tmp/.keras where it cannot write
    where = dict(cache_dir=str(home), cache_subdir=WEIGHTS_CACHE_SUBDIR)
    try:
        return Path(keras.utils.get_file(fname, origin=url, file_hash=sha256, hash_algorithm="sha256", **where))
    except ValueError as e:
        error = e
    except Exception as e:  # get_file raises a bare Exception for a failed fetch
        raise WeightsError(f"could not download {url}: {e}") from None
    # Without a hash, get_file returns the file it kept in the cache and does not fetch it again.
    try:
        kept = Path(keras.utils.get_file(fname, origin=url, **where))
    except Exception:
        raise WeightsError(f"could not download {url}: {error}") from None
    found = file_sha256(kept)
    if found == sha256:  # not a hash problem after all
        raise WeightsError(f"could not download {url}: {error}") from None
    kept.unlink(missing_ok=True)
    raise WeightsError(f"{url} has sha256 {found}, expected {sha256}; the download was deleted from {kept.parent}")


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_file(path):
    """`path` if it is a .weights.h5 or .keras file; for a run folder its best.keras, else last.keras."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.keras", "last.keras"):
            if (path / name).is_file():
                return path / name
        raise WeightsError(f"{path} holds no trained model (neither best.keras nor last.keras)")
    if not path.exists():
        raise WeightsError(f"{path}: no such file or folder")
    if not path.name.endswith(WEIGHTS_SUFFIXES):
        raise WeightsError(f"{path} is not a {' or '.join(WEIGHTS_SUFFIXES)} file or a run folder")
    return path


def _shapes(arrays):
    return "[" + ", ".join(str(tuple(a.shape)) for a in arrays) + "]"


def _listed(names, limit=4):
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def weights_layout(path):
    """{layer name: [weight shapes]} of a .weights.h5 or .keras file, read with h5py (no TensorFlow op runs),
    so that a command can check a file before TensorFlow sets up its devices; WeightsError where it is not readable."""
    path = Path(path)
    try:
        with open(path, "rb") as raw, patches.saved_weights(raw, path) as (_, layers):
            return {name: [tuple(d.shape) for d in datasets] for name, datasets in layers.items()}
    except patches.LayoutError as e:
        raise WeightsError(str(e)) from None
    except (OSError, zipfile.BadZipFile, KeyError, EOFError) as e:
        raise WeightsError(f"{path} is not a readable Keras weights file ({type(e).__name__}: {e})") from None


def load_weights(model, path, *, reinit_head=False, dry_run=False):
    """Loads the weights in `path` (.weights.h5 or .keras) into `model` by layer name.

    Every layer of `model` with weights must be in the file with the same shapes, and the file
    must hold no other layer with weights. With `reinit_head`, layers whose shapes differ only in
    the class count (the last axis: the model's class count here, one other count in the file; the
    classifier, NIN's last convolution and its batch norm) keep their fresh initialisation.
    `dry_run` checks and loads nothing. Returns {"sha256" (of the file read), "layers_loaded",
    "head_reinitialised", "layers_reinitialised"}; WeightsError where the file does not fit.
    """
    path = Path(path)
    mine = {}
    for layer in model.layers:
        store = {}
        layer.save_own_variables(store)
        if store:
            mine[layer.name] = (layer, [store[str(i)] for i in range(len(store))])
    if sum(len(arrays) for _, arrays in mine.values()) != len(model.weights):
        raise WeightsError(f"{model.name} has nested layers, whose weights load_weights does not read")
    try:
        with open(path, "rb") as raw:  # one open file: hashed and read, even if the path is replaced meanwhile
            digest = hashlib.sha256()
            for chunk in iter(lambda: raw.read(1 << 20), b""):
                digest.update(chunk)
            raw.seek(0)
            with patches.saved_weights(raw, path) as (saved_as, layers):
                theirs = {k: v for k, v in layers.items() if v}
                head = _plan(model, mine, theirs, path, saved_as, reinit_head)
                if not dry_run:
                    for name, (layer, _) in mine.items():
                        if name not in head:
                            layer.load_own_variables({str(i): d[()] for i, d in enumerate(theirs[name])})
    except patches.LayoutError as e:
        raise WeightsError(str(e)) from None
    except (OSError, zipfile.BadZipFile, KeyError, EOFError) as e:
        raise WeightsError(f"{path} is not a readable Keras weights file ({type(e).__name__}: {e})") from None
    return {"sha256": digest.hexdigest(), "layers_loaded": len(mine) - len(head),
            "head_reinitialised": bool(head), "layers_reinitialised": sorted(head)}


def _plan(model, mine, theirs, path, saved_as, reinit_head):
    """The layers to leave as initialised (the classifier head, where allowed); WeightsError for any other
    difference."""
    missing = [n for n in mine if n not in theirs]
    extra = [n for n in theirs if n not in mine]
    differ = [n for n in mine if n in theirs and
              [tuple(a.shape) for a in mine[n][1]] != [tuple(d.shape) for d in theirs[n]]]
    classes = model.outputs[0].shape[-1]
    head = set()
    if reinit_head and differ and not missing and not extra:
        widths = set()
        for n in differ:
            layer, arrays = mine[n]
            pairs = list(zip((tuple(a.shape) for a in arrays), (tuple(d.shape) for d in theirs[n])))
            if (len(arrays) != len(theirs[n]) or layer.output.shape[-1] != classes
                    or any(len(a) != len(b) or a[:-1] != b[:-1] or a[-1] != classes for a, b in pairs)):
                break
            widths |= {b[-1] for a, b in pairs if a != b}
        else:
            if len(widths) == 1:
                return set(differ)
    if not (missing or extra or differ):
        return head
    what = []
    if missing:
        what.append(f"layers the file lacks: {_listed(missing)}")
    if extra:
        what.append(f"layers the model lacks: {_listed(extra)}")
    if differ:
        what.append("shapes differ: " + "; ".join(
            f"{n} {_shapes(theirs[n])} in the file, {_shapes(mine[n][1])} in the model" for n in differ[:3])
            + (f" (+{len(differ) - 3} more)" if len(differ) > 3 else ""))
    raise WeightsError(f"{path} (weights of {saved_as}) does not fit {model.name}: {'; '.join(what)}")
