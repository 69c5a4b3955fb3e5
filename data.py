"""CIFAR-10 and CIFAR-100 on disk -> validated uint8 arrays -> tf.data pipelines.

Finding the data (`find_source`), in this order:
  1. `data_dir` (the `--data-dir` flag): a folder holding `cifar-10-batches-py/` (CIFAR-100:
     `cifar-100-python/`), that folder itself, a folder holding the archive
     (`cifar-10-python.tar.gz`, `cifar-100-python.tar.gz`), or the archive's own path;
  2. `$CIFAR10_DIR` (`$CIFAR100_DIR`), read the same way;
  3. Keras' cache (`$KERAS_HOME` or `~/.keras`, under `datasets/`);
  4. the official archive, downloaded once into Keras' cache with its md5 checked.
The data sets differ in files, label keys and constants only: DATASETS holds what differs.
CIFAR-100 has 100 fine and 20 coarse classes (`labels="fine"` or `"coarse"`).

Reading never executes a pickle: the batch files are unpickled with an unpickler that knows
numpy's array reconstruction and Python 3's pickled bytes, and nothing else. What was read is
validated (shapes, dtype, labels, class counts) with the file at fault named, then cached as
`.npy` files outside the repository (`$CIFAR10_CACHE`, else `$XDG_CACHE_HOME/cifar10-keras`, else
`~/.cache/cifar10-keras`) beside a manifest of their sha256 sums, so the second load is a plain
`np.load`; what it loads must match those sums and pass the same checks, or the source is read
again. Writing the official format (`write_batch`, `write_meta`) is the inverse of reading, for
sets cut from the real one (bench/cifar_subset.py) or generated (the tests).

Preprocessing constants live here and nowhere else.
"""

import hashlib
import io
import json
import os
import pickle
import shutil
import struct
import tarfile
import tempfile
import time
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ARCHIVE_NAME = "cifar-10-python.tar.gz"
BATCHES_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck")
NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)
# Size of the official files; a set of this size must also have the official class balance.
OFFICIAL_COUNTS = {"train": 50000, "test": 10000}

# Per-channel (R, G, B) mean and standard deviation of the 50,000 official training images,
# in [0, 1] units (the standard deviation over all pixels of a channel; some repositories quote
# (0.2023, 0.1994, 0.2010), the mean of per-image deviations, instead). Fixed rather than
# recomputed per run so that every run, and every member of an ensemble, sees identical inputs.
# tests/test_data.py checks them against the real set where present.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# The same two for CIFAR-100's 50,000 official training images, computed the same way.
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
PREPROCESSING = ("standardize", "scale")  # (x - mean) / std, or x / 255
# standard: pad 4 + random 32x32 crop + random flip (He et al. 2016); none; kaggle: the colour and
# scale augmentation of the Kaggle MXNet/Gluon reference (random-resized crop of 64-100 % of the
# area, flip, brightness and hue jitter); shift: Keras 2's ImageDataGenerator(horizontal_flip=True,
# width_shift_range=0.125, height_shift_range=0.125, fill_mode="constant", cval=0) as the Keras
# reference scripts (BIGBALLON/cifar-10-cnn) apply it to standardised images: shifts drawn from a
# continuous range, so bilinearly interpolated, and the border filled with 0 after preprocessing,
# which is the mean colour. Cutout and mixup go on top of any of them.
AUGMENTATIONS = ("standard", "none", "kaggle", "shift")
KAGGLE_SCALE = (0.64, 1.0)   # area of the random-resized crop
KAGGLE_RATIO = (3 / 4, 4 / 3)  # aspect ratio of the random-resized crop
KAGGLE_BRIGHTNESS = 0.4      # brightness factor in [1 - b, 1 + b]
KAGGLE_HUE = 0.05            # hue shift in [-h, h] turns
PAD = 4
SHIFT = 4.0  # "shift": the largest shift in pixels, 0.125 of the image's side

CACHE_VERSION = 1

CIFAR100_FINE = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck",
    "pine_tree", "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm")
CIFAR100_COARSE = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
    "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees",
    "vehicles_1", "vehicles_2")


@dataclass(frozen=True)
class DatasetSpec:
    """What tells one CIFAR data set from the other: its files, where it comes from, its labels."""
    name: str          # as --dataset takes it
    title: str         # as messages write it
    archive: str       # the official archive's file name
    folder: str        # the folder the archive holds the batch files in
    train_files: tuple
    test_files: tuple
    url: str
    md5: str           # of the official archive
    env: str           # the environment variable naming a local copy
    labels: dict       # --labels -> (the batch files' key, the class names)
    mean: tuple
    std: tuple

    def class_names(self, labels="fine"):
        if labels not in self.labels:
            raise DataError(f"{self.title} has {' and '.join(self.labels)} labels, not {labels!r}")
        return self.labels[labels][1]

    def num_classes(self, labels="fine"):
        return len(self.class_names(labels))


DATASETS = {
    "cifar10": DatasetSpec("cifar10", "CIFAR-10", ARCHIVE_NAME, BATCHES_DIR, TRAIN_BATCHES, (TEST_BATCH,),
                           OFFICIAL_URL, OFFICIAL_MD5, "CIFAR10_DIR", {"fine": ("labels", CLASS_NAMES)},
                           CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": DatasetSpec("cifar100", "CIFAR-100", "cifar-100-python.tar.gz", "cifar-100-python", ("train",),
                            ("test",), "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                            "eb9058c3a382ffc7106e4002c42a8d85", "CIFAR100_DIR",
                            {"fine": ("fine_labels", CIFAR100_FINE), "coarse": ("coarse_labels", CIFAR100_COARSE)},
                            CIFAR100_MEAN, CIFAR100_STD),
}
LABELS = ("fine", "coarse")


def get_spec(dataset):
    """The DatasetSpec of a --dataset name; DataError naming the known ones for any other."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    return DATASETS[dataset]


class DataError(Exception):
    """The data set could not be found, read or validated; the message says where and why."""


# --------------------------------------------------------------------------- reading

def _latin1_bytes(text, encoding):
    """What Python 3's pickle protocols 0-2 write bytes as: codecs.encode(str, "latin1")."""
    if type(text) is not str or encoding != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode({type(text).__name__}, {encoding!r}) does not "
                                     "rebuild bytes")
    return text.encode("latin1")


def _empty_bytes(*args):
    """What Python 3's pickle protocols 0-2 write b"" as: bytes()."""
    if args:
        raise pickle.UnpicklingError(f"bytes() with {len(args)} argument(s) does not rebuild b''")
    return b""


# The globals a batch pickle may name: the names numpy and Python 3's pickle write for what a CIFAR
# batch holds, in every protocol (pickletools shows them). numpy 1 names its modules numpy.core,
# numpy 2 numpy._core.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),  # arrays, protocols 0-4 (5: non-contiguous ones)
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),      # contiguous arrays, protocol 5
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),                      # bytes, protocols 0-2
    ("__builtin__", "bytes"),                   # b"", protocols 0-2 (the pickler writes Python 2's name)
}
# _codecs.encode and bytes are answered with stand-ins doing the one call the pickler writes. The
# real ones have no side effects either, but _codecs.encode reaches every registered codec (zlib,
# bz2, ...) with any argument and bytes(n) allocates n bytes; the stand-ins only turn a str into
# latin-1 bytes, and make b"", so these two names can build nothing but bytes.
_STAND_INS = {("_codecs", "encode"): _latin1_bytes, ("__builtin__", "bytes"): _empty_bytes}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Resolves numpy's array reconstruction and bytes, and refuses every other global, so nothing runs."""

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refers to {module}.{name}, which is not numpy array data or bytes")
        if (module, name) in _STAND_INS:
            return _STAND_INS[module, name]
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            # numpy 2's numpy.core.numeric warns on every name: read numpy 1's names from numpy._core.
            module = "numpy._core." + module.removeprefix("numpy.core.")
        return super().find_class(module, name)


def parse_batch(raw: bytes, where: str, label_key="labels", num_classes=NUM_CLASSES):
    """Parses one CIFAR batch pickle; returns (images uint8 NHWC, labels uint8) of its `label_key`."""
    try:
        batch = _ArrayOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            ImportError, IndexError, KeyError, MemoryError) as e:
        raise DataError(f"{where}: not a CIFAR batch file ({e})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{where}: not a CIFAR batch file (holds a {type(batch).__name__}, not a dict)")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or label_key not in batch:
        raise DataError(f"{where}: missing 'data' or '{label_key}' (has {sorted(map(str, batch))})")
    data, labels = batch["data"], batch[label_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        kind = data.dtype if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{where}: 'data' must be a uint8 array; got {kind}")
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{where}: 'data' must have shape (N, 3072); got {data.shape}")
    try:
        labels = np.asarray(labels)
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: '{label_key}' is not a list of integers ({e})") from None
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise DataError(f"{where}: '{label_key}' must be {len(data)} integers; got {labels.dtype} "
                        f"with shape {labels.shape}")
    _check_label_range(labels, where, num_classes)
    # The rows are R, G and B planes of 32x32, row-major: NCHW -> NHWC as Keras' loader does.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.uint8)


def _check_label_range(labels, where, num_classes=NUM_CLASSES):
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{where}: labels must lie in 0..{num_classes - 1}; "
                        f"found {labels.min()}..{labels.max()}")


def _validate_split(split, images, labels, files, spec=None, label_set="fine"):
    """Checks a whole split, read from the batch files or from the cache: uint8 images (N, 32, 32, 3),
    N uint8 labels in 0..C-1, every class present, and the official balance at the official size."""
    spec = spec or DATASETS["cifar10"]
    names = spec.class_names(label_set)
    where = ", ".join(files)
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4
            and images.shape[1:] == IMAGE_SHAPE):
        kind = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise DataError(f"{where}: the {split} images must be uint8 of shape (N, 32, 32, 3); got {kind}")
    if not (isinstance(labels, np.ndarray) and labels.dtype == np.uint8 and labels.shape == (len(images),)):
        kind = f"{labels.dtype} {labels.shape}" if isinstance(labels, np.ndarray) else type(labels).__name__
        raise DataError(f"{where}: the {split} labels must be {len(images)} uint8 values; got {kind}")
    _check_label_range(labels, where, len(names))
    if len(images) == 0:
        raise DataError(f"{where}: the {split} set is empty")
    counts = np.bincount(labels, minlength=len(names))
    missing = [names[c] for c in range(len(names)) if counts[c] == 0]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(f"{where}: the {split} set has no images of class {shown}")
    if len(images) == OFFICIAL_COUNTS[split]:
        expected = OFFICIAL_COUNTS[split] // len(names)
        if not (counts == expected).all():
            raise DataError(f"{where}: a full {spec.title} {split} set has {expected} images per "
                            f"{'coarse ' if label_set == 'coarse' else ''}class; got {counts.tolist()}")


def _other_dataset(spec, present):
    """The name of the other data set whose files `present` (names found) are, or None."""
    for other in DATASETS.values():
        if other is not spec and (other.folder in present or set(other.train_files) <= present):
            return other
    return None


def _wrong_dataset(spec, where, present):
    other = _other_dataset(spec, present)
    if other is None:
        return None
    return DataError(f"{where} holds {other.title} ({other.folder}/), not {spec.title}: use --dataset {other.name}, "
                     f"or give the {spec.title} archive ({spec.archive})")


class _Folder:
    def __init__(self, path, spec):
        self.path, self.spec = Path(path), spec

    def read(self, name):
        path = self.path / name
        if not path.is_file():
            wrong = _wrong_dataset(self.spec, self.path, {p.name for p in self.path.iterdir()}
                                   if self.path.is_dir() else set())
            if wrong:
                raise wrong
            raise DataError(f"{path}: missing (expected the {self.spec.title} batch files "
                            f"{', '.join((*self.spec.train_files, *self.spec.test_files))} in {self.path})")
        return path.read_bytes(), str(path)


class _Archive:
    def __init__(self, path, spec):
        self.path, self.spec = Path(path), spec
        self.folders = set()
        try:
            with tarfile.open(self.path, "r:gz") as tar:
                self.members = {}
                for m in tar:  # reads the whole stream, so a truncated archive fails here
                    self.folders.add(Path(m.name).parts[0] if Path(m.name).parts else "")
                    if m.isfile() and m.size and Path(m.name).parent.name == spec.folder:
                        self.members[Path(m.name).name] = tar.extractfile(m).read()
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise DataError(f"{self.path}: truncated or corrupt archive ({type(e).__name__}: {e})") from None

    def read(self, name):
        where = f"{self.path}:{self.spec.folder}/{name}"
        if name not in self.members:
            raise _wrong_dataset(self.spec, self.path, self.folders) or DataError(f"{where}: missing from the archive")
        return self.members[name], where


def read_source(source, spec=None, label_set="fine"):
    """Reads and validates a CIFAR folder or archive: (x_train, y_train, x_test, y_test)."""
    spec = spec or DATASETS["cifar10"]
    label_key, names = spec.labels[label_set][0], spec.class_names(label_set)
    source = Path(source)
    reader = _Archive(source, spec) if source.is_file() else _Folder(source, spec)
    splits = {}
    for split, files_of_split in (("train", spec.train_files), ("test", spec.test_files)):
        parts, files = [], []
        for name in files_of_split:
            raw, where = reader.read(name)
            parts.append(parse_batch(raw, where, label_key, len(names)))
            files.append(where)
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        _validate_split(split, images, labels, files, spec, label_set)
        splits[split] = (images, labels)
    return (*splits["train"], *splits["test"])


# --------------------------------------------------------------------------- writing the official format

class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 `str` (SHORT_BINSTRING / BINSTRING), as the official files have them.

    Python 3's protocol 2 would wrap bytes in `_codecs.encode` calls instead, which no official
    CIFAR file contains (the reader takes those too: tests/test_data.py re-pickles batches so).
    The pure-Python pickler, because its dispatch table is the one place to change how bytes are
    written: the C pickler writes bytes before any hook (`reducer_override`) is asked.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_str(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_str


def dump_py2(obj, f):
    """Pickles `obj` into the binary file `f` as the official files are pickled (protocol 2, bytes as `str`)."""
    _Py2Pickler(f, protocol=2).dump(obj)


def write_batch(path, images, labels, batch_label):
    """One batch file exactly as the official archive has it (protocol 2, bytes keys, CHW rows)."""
    record = {
        b"batch_label": batch_label.encode(),
        b"labels": [int(v) for v in labels],
        b"data": np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(len(images), 3072),
        b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(images))],
    }
    with open(path, "wb") as f:
        dump_py2(record, f)


def write_meta(path, num_cases_per_batch):
    """CIFAR-10's batches.meta exactly as the official archive has it (the reader does not need it)."""
    with open(path, "wb") as f:
        dump_py2({b"num_cases_per_batch": num_cases_per_batch,
                  b"label_names": [name.encode() for name in CLASS_NAMES], b"num_vis": 3072}, f)


# --------------------------------------------------------------------------- finding

def _resolve(path, spec=None):
    """The folder of batch files or the archive that `path` designates, or None."""
    spec = spec or DATASETS["cifar10"]
    path = Path(path).expanduser()
    if path.is_file():
        return path
    for candidate in (path / spec.folder, path):
        if (candidate / spec.test_files[0]).is_file() or (candidate / spec.train_files[0]).is_file():
            return candidate
    if (path / spec.archive).is_file():
        return path / spec.archive
    return None


def keras_cache_dir():
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "datasets"


def _keras_cache_candidates(spec=None):
    spec = spec or DATASETS["cifar10"]
    cache = keras_cache_dir()
    # Keras 3 extracts to cifar-10-batches-py-target/ (cifar-100-python-target/); Keras 2 extracted
    # to cifar-10-batches-py/ (cifar-100-python/).
    return [cache / f"{spec.folder}-target", cache / spec.folder, cache / spec.archive]


def download(url=OFFICIAL_URL, md5=OFFICIAL_MD5, dest_dir=None, timeout=30, spec=None):
    """Downloads the archive into Keras' cache, checks its md5 and returns its path."""
    spec = spec or DATASETS["cifar10"]
    dest_dir = Path(dest_dir or keras_cache_dir())
    dest = dest_dir / spec.archive
    dest_dir.mkdir(parents=True, exist_ok=True)
    print(f"Downloading {spec.title} from {url} to {dest}", flush=True)
    digest = hashlib.md5()
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=".download-")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if total:
                    print(f"\r  {done >> 20} / {total >> 20} MiB", end="", flush=True)
        print(flush=True)
        if digest.hexdigest() != md5:
            raise DataError(f"download from {url} has md5 {digest.hexdigest()}, expected {md5}; "
                            "nothing was kept")
        os.replace(tmp, dest)
    except (OSError, ValueError) as e:
        raise DataError(f"could not download {url} ({e})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def find_source(data_dir=None, allow_download=True, url=None, spec=None):
    """The folder or archive to read, searched in the documented order; may download."""
    spec = spec or DATASETS["cifar10"]
    looked = []
    for label, path in (("--data-dir", data_dir), (f"${spec.env}", os.environ.get(spec.env))):
        if path:
            found = _resolve(path, spec)
            if found is None:
                wrong = _wrong_dataset(spec, f"{label} {path}", {p.name for p in Path(path).iterdir()}
                                       if Path(path).is_dir() else set())
                if wrong:
                    raise wrong
                raise DataError(f"{label} {path}: no {spec.title} there (expected {spec.folder}/ with the "
                                f"batch files, or {spec.archive})")
            return found
        looked.append(f"{label} (not given)")
    for candidate in _keras_cache_candidates(spec):
        found = _resolve(candidate, spec) if candidate.exists() else None
        if found is not None:
            return found
        looked.append(str(candidate))
    url_env = spec.env.replace("_DIR", "_URL")
    url = url or os.environ.get(url_env) or spec.url
    if allow_download:
        try:
            return download(url, spec.md5, spec=spec)
        except DataError as e:
            looked.append(f"download: {e}")
    else:
        looked.append("download: disabled")
    raise DataError(f"{spec.title} not found; looked in: " + "; ".join(looked) + f". Download {spec.url} "
                    "and pass --data-dir (the archive, or the folder holding it or "
                    f"{spec.folder}/), or set {spec.env}")


# --------------------------------------------------------------------------- caching

def cache_root():
    if os.environ.get("CIFAR10_CACHE"):
        return Path(os.environ["CIFAR10_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cifar10-keras"


def _fingerprint(source, spec=None, label_set="fine"):
    spec = spec or DATASETS["cifar10"]
    files = [source] if source.is_file() else [source / n for n in (*spec.train_files, *spec.test_files)]
    parts = [CACHE_VERSION, str(source.resolve())]
    if spec.name != "cifar10" or label_set != "fine":  # CIFAR-10's caches keep the names they had
        parts += [spec.name, label_set]
    for f in files:
        if f.is_file():  # a missing file is reported by the read that follows
            st = f.stat()
            parts += [f.name, st.st_size, st.st_mtime_ns]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
MANIFEST = "manifest.json"


def _describe(array):
    """An array's manifest entry. sha256 rather than blake2b: OpenSSL computes it with the SHA
    instructions of current x86 CPUs (AMD since Zen, Intel since Ice Lake), where it is the faster."""
    return {"dtype": array.dtype.str, "shape": list(array.shape),
            "sha256": hashlib.sha256(np.ascontiguousarray(array)).hexdigest()}


def _save_cache(folder, arrays, source):
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    try:
        for name, array in zip(_ARRAYS, arrays):
            np.save(tmp / f"{name}.npy", array, allow_pickle=False)
        manifest = {"source": str(source), "arrays": {name: _describe(a) for name, a in zip(_ARRAYS, arrays)}}
        (tmp / MANIFEST).write_text(json.dumps(manifest) + "\n")
        os.replace(tmp, folder)  # a whole folder or nothing: a killed writer leaves only .tmp-*
    except OSError:
        for f in tmp.glob("*"):
            f.unlink()
        tmp.rmdir()
        if not folder.is_dir():
            raise


def _load_cache(folder, spec=None, label_set="fine"):
    """(arrays, None), or (None, why not): every array must match what the manifest recorded when
    the cache was written (dtype, shape, sha256) and pass the checks the source passed."""
    try:
        recorded = json.loads((folder / MANIFEST).read_text())["arrays"]
        recorded = {name: recorded[name] for name in _ARRAYS}
    except FileNotFoundError:
        return None, f"no {MANIFEST}: written by an older version"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"unreadable {MANIFEST} ({type(e).__name__}: {e})"
    arrays = []
    for name in _ARRAYS:
        try:
            array = np.load(folder / f"{name}.npy", allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            return None, f"could not read {name}.npy ({e})"
        if _describe(array) != recorded[name]:
            return None, f"{name}.npy differs from what {MANIFEST} recorded when it was written"
        arrays.append(array)
    try:
        for split, images, labels in (("train", *arrays[:2]), ("test", *arrays[2:])):
            _validate_split(split, images, labels, [f"x_{split}.npy", f"y_{split}.npy"], spec, label_set)
    except DataError as e:
        return None, str(e)
    return tuple(arrays), None


def _discard_cache(folder):
    """Moves a cache folder aside, then deletes it, so that a new one can take its name."""
    try:
        stale = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".stale-"))
    except OSError:
        return
    try:
        os.replace(folder, stale)  # onto an empty folder: one rename, so no reader sees half a folder
    except OSError:
        stale.rmdir()  # _save_cache then keeps the old folder, and the next load refuses it again
        return
    shutil.rmtree(stale, ignore_errors=True)


@dataclass
class Cifar10:
    """A loaded data set: CIFAR-10, or CIFAR-100 with its fine or coarse labels."""
    x_train: np.ndarray  # uint8 (N, 32, 32, 3)
    y_train: np.ndarray  # uint8 (N,)
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    dataset: str = "cifar10"
    labels: str = "fine"

    @property
    def spec(self):
        return DATASETS[self.dataset]

    @property
    def class_names(self):
        return self.spec.class_names(self.labels)

    @property
    def num_classes(self):
        return len(self.class_names)


def load(dataset="cifar10", labels="fine", data_dir=None, allow_download=True, url=None, verbose=True):
    """Finds, reads, validates and caches a CIFAR data set; see the module docstring."""
    spec = get_spec(dataset)
    spec.class_names(labels)  # CIFAR-10 has no coarse labels: refused before anything is read
    source = find_source(data_dir, allow_download, url, spec)
    folder = cache_root() / _fingerprint(source, spec, labels)
    arrays = None
    if folder.is_dir():
        arrays, why = _load_cache(folder, spec, labels)
        if arrays is None:
            print(f"warning: {spec.title} cache {folder} not used ({' '.join(why.split())}); reading {source} again",
                  flush=True)
            _discard_cache(folder)
    if arrays is None:
        start = time.perf_counter()
        arrays = read_source(source, spec, labels)
        try:
            _save_cache(folder, arrays, source)
        except OSError as e:
            print(f"warning: could not cache {spec.title} in {folder} ({e}); it will be read again next time")
        if verbose:
            print(f"Read {spec.title} from {source} in {time.perf_counter() - start:.1f} s "
                  f"(cached in {folder})", flush=True)
    return Cifar10(*arrays, source=str(source), dataset=dataset, labels=labels)


def load_cifar10(data_dir=None, allow_download=True, url=None, verbose=True):
    """load("cifar10", ...)."""
    return load("cifar10", "fine", data_dir, allow_download, url, verbose)


# --------------------------------------------------------------------------- splitting

def stratified_split(labels, val_count, seed):
    """Indices (train, val): `val_count` images with the class proportions of `labels`, seeded."""
    labels = np.asarray(labels)
    n = len(labels)
    if not isinstance(val_count, (int, np.integer)) or not 0 <= val_count < n:
        raise ValueError(f"the validation split must be a whole number from 0 to {n - 1}; got {val_count!r}")
    rng = np.random.default_rng([seed, 1])
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    exact = counts * val_count / n
    quota = np.floor(exact).astype(int)
    # Largest remainders take the images that flooring left over (ties to the lower class).
    for c in np.argsort(-(exact - quota), kind="stable")[: val_count - quota.sum()]:
        quota[c] += 1
    emptied = np.flatnonzero((counts > 0) & (quota == counts))
    if len(emptied):
        raise ValueError(f"a validation split of {val_count} of {n} images leaves class {emptied[0]} with no training "
                         f"image ({counts[emptied[0]]} in all); give a smaller --val-split")
    val = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in enumerate(quota)])
    val = np.sort(val)
    train = np.setdiff1d(np.arange(n), val, assume_unique=True)
    return train, val


# --------------------------------------------------------------------------- pipelines

def _tf():
    import tfenv  # noqa: F401  (TensorFlow's load-time settings, before it loads)
    import tensorflow as tf  # imported here so that reading data does not need TensorFlow
    return tf


def preprocess(images, mode, dataset="cifar10"):
    """uint8 (or float 0..255) images -> float32 network input, per `mode` (see PREPROCESSING),
    with the normalisation constants of `dataset`."""
    tf = _tf()
    x = tf.cast(images, tf.float32) / 255.0
    if mode == "standardize":
        spec = get_spec(dataset)
        # Constants of the image's whole shape where it is known: TensorFlow's CPU kernels broadcast
        # a [3] operand over the channels several times slower. The same arithmetic either way.
        shape = tuple(x.shape[1:]) if x.shape[1:].is_fully_defined() else (len(spec.mean),)
        mean, std = (np.broadcast_to(np.float32(v), shape) for v in (spec.mean, spec.std))
        return (x - tf.constant(mean)) / tf.constant(std)
    if mode == "scale":
        return x
    raise ValueError(f"preprocess must be one of {', '.join(PREPROCESSING)}; got {mode!r}")


def augment_batch(images, seed):
    """Pad 4 with zeros, take a random 32x32 crop and flip half of the images, for a whole batch.

    uint8 (or float 0..255) pixels in, float32 pixels 0..255 out; the padding is black, as in
    torchvision's RandomCrop(32, 4). Every image gets its own offsets and flip from a stateless
    generator keyed by `seed` (shape [2]), so the same seed gives the same batch whatever the
    pipeline's parallelism.
    """
    tf = _tf()
    return crop_and_flip(images, *crop_flip_draws(tf.shape(images)[0], seed))


def crop_flip_draws(n, seed):
    """augment_batch's random draws for `n` images: (row, column) offsets in -PAD..PAD (int32
    [n, 2]) and whether each image is mirrored (bool [n])."""
    tf = _tf()
    offsets = tf.random.stateless_uniform([n, 2], seed, maxval=2 * PAD + 1, dtype=tf.int32)
    flip = tf.random.stateless_uniform([n], seed + 1, maxval=2, dtype=tf.int32)
    return offsets - PAD, flip == 1


def batch_seeds(augment_seed, step):
    """The stateless seeds of training batch `step` (int64) of the epoch keyed by `augment_seed`:
    [augmentation, cutout, mixup]."""
    tf = _tf()
    return tf.random.experimental.stateless_split(tf.random.experimental.stateless_fold_in(augment_seed, step), 3)


def epoch_order(n, seed, epoch, shuffle=True):
    """The order in which an epoch visits the `n` training images, fixed by (seed, epoch)."""
    return np.random.default_rng([seed, 2, epoch]).permutation(n) if shuffle else np.arange(n)


def crop_and_flip(images, offsets, flip):
    """Each image's crop of its own size starting at (row, column) `offsets` (int32 [n, 2], may lie
    outside the image: zeros there), mirrored where `flip` (bool [n]); float32 out.

    One crop_and_resize with nearest sampling on boxes that land exactly on the pixels, a flip
    being a box whose left edge lies right of its right edge: about twice as fast on CPU as the
    pad and gathers it replaces. crop_and_resize measures positions in units of (size - 1) and
    treats a position even a rounding error outside the image as outside (black); so the images
    get one more row and column of zeros (what lies outside anyway), making that unit the image's
    size: 32 for CIFAR-10, a power of two, in which every position and step is exact in float32,
    whatever order TensorFlow's graph optimiser computes them in (with 31 they were not: traced
    with tf.function, edge rows came out black; tf.data's map, as it ran them, was exact).
    tests/test_data.py checks every offset and flip against slicing the padded image, eagerly
    and traced.
    """
    tf = _tf()
    h, w = images.shape[1], images.shape[2]
    images = tf.pad(images, [[0, 0], [0, 1], [0, 1], [0, 0]])
    boxes = crop_boxes(offsets, flip, (h, w), (h, w))
    return tf.image.crop_and_resize(images, boxes, tf.range(tf.shape(images)[0]), [h, w], method="nearest",
                                    extrapolation_value=0.0)


def crop_boxes(offsets, flip, size, unit):
    """crop_and_resize boxes for crops of `size` (rows, columns) whose top-left pixels are
    `offsets` (int32 [n, 2]), mirrored where `flip`: a mirrored box's left edge lies right of its
    right edge. crop_and_resize's coordinates are normalised: pixel p of an image of R rows lies
    at p / (R - 1), so `unit` is the source image's (rows - 1, columns - 1)."""
    tf = _tf()
    top, left = tf.cast(offsets[:, 0], tf.float32), tf.cast(offsets[:, 1], tf.float32)
    y1, y2 = top / unit[0], (top + size[0] - 1) / unit[0]
    x1, x2 = left / unit[1], (left + size[1] - 1) / unit[1]
    return tf.stack([y1, tf.where(flip, x2, x1), y2, tf.where(flip, x1, x2)], axis=1)


def kaggle_augment_batch(images, seed):
    """Random-resized crop (64-100 % of the area, aspect 3/4-4/3) back to 32x32, random flip,
    brightness and hue jitter, per image, for a whole uint8 batch; returns float32 pixels 0..255."""
    tf = _tf()
    n = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, 6)
    area = tf.random.stateless_uniform([n], seeds[0], *KAGGLE_SCALE)
    log_ratio = tf.random.stateless_uniform([n], seeds[1], *np.log(KAGGLE_RATIO))
    h = tf.minimum(tf.sqrt(area / tf.exp(log_ratio)), 1.0)
    w = tf.minimum(tf.sqrt(area * tf.exp(log_ratio)), 1.0)
    corner = tf.random.stateless_uniform([n, 2], seeds[2]) * tf.stack([1 - h, 1 - w], axis=1)
    boxes = tf.concat([corner, corner + tf.stack([h, w], axis=1)], axis=1)
    flip = tf.random.stateless_uniform([n], seeds[3]) < 0.5
    boxes = tf.where(flip[:, None], tf.gather(boxes, [0, 3, 2, 1], axis=1), boxes)  # x1 > x2 mirrors the crop
    x = tf.image.crop_and_resize(tf.cast(images, tf.float32), boxes, tf.range(n), IMAGE_SHAPE[:2])
    brightness = tf.random.stateless_uniform([n, 1, 1, 1], seeds[4], 1 - KAGGLE_BRIGHTNESS, 1 + KAGGLE_BRIGHTNESS)
    hsv = tf.image.rgb_to_hsv(tf.clip_by_value(x * brightness, 0, 255) / 255)
    hue = tf.random.stateless_uniform([n, 1, 1], seeds[5], -KAGGLE_HUE, KAGGLE_HUE)
    hsv = tf.stack([tf.math.floormod(hsv[..., 0] + hue, 1.0), hsv[..., 1], hsv[..., 2]], axis=-1)
    return tf.image.hsv_to_rgb(hsv) * 255


def shift_flip_batch(images, seed):
    """The "shift" augmentation of a preprocessed float32 batch: every image moved by its own
    (rows, columns) offsets drawn uniformly from -SHIFT..SHIFT pixels, bilinearly interpolated, 0
    where the moved image leaves no pixel, and mirrored with probability 1/2."""
    tf = _tf()
    n, w = tf.shape(images)[0], images.shape[2]
    offsets, flip = shift_flip_draws(n, seed)
    return shift_and_flip(images, offsets, flip, w)


def shift_flip_draws(n, seed):
    """shift_flip_batch's random draws for `n` images: float32 (row, column) offsets [n, 2] in
    -SHIFT..SHIFT, and whether each image is mirrored (bool [n])."""
    tf = _tf()
    offsets = tf.random.stateless_uniform([n, 2], seed, -SHIFT, SHIFT)
    flip = tf.random.stateless_uniform([n], seed + 1) < 0.5
    return offsets, flip


def shift_and_flip(images, offsets, flip, width):
    """`images` moved down and right by `offsets` (float32 [n, 2], rows then columns; negative moves
    up or left), then mirrored where `flip`: output pixel (r, c) is the input sampled bilinearly at
    (r - dr, c' - dc), c' being c or its mirror width - 1 - c; 0 outside the input."""
    tf = _tf()
    n = tf.shape(images)[0]
    dr, dc = offsets[:, 0], offsets[:, 1]
    sign = tf.where(flip, -1.0, 1.0)
    zero, one = tf.zeros([n]), tf.ones([n])
    # ImageProjectiveTransformV3 maps each output point (x, y) to the input point (a0 x + a1 y + a2,
    # b0 x + b1 y + b2): here x' = sign * x + (width - 1 if mirrored) - dc, y' = y - dr.
    a2 = tf.where(flip, float(width - 1), 0.0) - dc
    transforms = tf.stack([sign, zero, a2, zero, one, -dr, zero, zero], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.shape(images)[1:3], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="CONSTANT")


def cutout_batch(images, seed, size):
    """Zeroes one size x size square per image (DeVries & Taylor 2017), its centre uniform over the
    image so that part of the square may fall outside; applied to normalised images, as there."""
    tf = _tf()
    n, h, w = tf.shape(images)[0], images.shape[1], images.shape[2]
    unit = tf.random.stateless_uniform([n, 2], seed)
    top_left = tf.cast(unit * tf.constant([h, w], tf.float32), tf.int32) - size // 2
    rows = tf.range(h)[None, :] - top_left[:, :1]
    cols = tf.range(w)[None, :] - top_left[:, 1:]
    square = ((rows >= 0) & (rows < size))[:, :, None] & ((cols >= 0) & (cols < size))[:, None, :]
    return images * tf.cast(~square, images.dtype)[..., None]


def mixup_batch(images, labels, seed, alpha):
    """Mixup (Zhang et al. 2018): one weight lam ~ Beta(alpha, alpha) per batch, each image mixed with
    another of the batch (a random permutation), labels likewise; label rows still sum to 1."""
    tf = _tf()
    seeds = tf.random.experimental.stateless_split(seed, 3)
    g = tf.random.stateless_gamma([2], seeds[0], alpha=alpha)
    lam = g[0] / (g[0] + g[1])
    perm = tf.argsort(tf.random.stateless_uniform([tf.shape(images)[0]], seeds[1]))
    return (lam * images + (1 - lam) * tf.gather(images, perm),
            lam * labels + (1 - lam) * tf.gather(labels, perm))


def check_pipeline_options(*, preprocess_mode, augment, cutout, mixup):
    """ValueError, saying what is allowed, for an option make_dataset does not take. A run's settings
    are checked with it too, before any data is read, so each message is written once."""
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}; got {augment!r}")
    if preprocess_mode not in PREPROCESSING:
        raise ValueError(f"preprocess must be one of {', '.join(PREPROCESSING)}; got {preprocess_mode!r}")
    if isinstance(cutout, bool) or not (isinstance(cutout, int) and 0 <= cutout <= IMAGE_SHAPE[0]):
        raise ValueError(f"cutout must be a square side from 0 (off) to {IMAGE_SHAPE[0]}; got {cutout!r}")
    if not mixup >= 0:
        raise ValueError(f"mixup alpha must be >= 0 (0 = off); got {mixup!r}")


def make_dataset(images, labels, batch_size, *, preprocess_mode="standardize", augment="none",
                 cutout=0, mixup=0.0, flip=False, shuffle=False, seed=0, epoch=0, dataset="cifar10",
                 num_classes=NUM_CLASSES):
    """A tf.data pipeline of (float32 images, one-hot float32 labels) batches.

    For training, pass `shuffle=True` and the epoch: the order and the augmentation of each epoch
    are fixed by (seed, epoch), so a resumed run sees exactly the epochs it would have seen.
    Images stay uint8 in memory and are gathered, augmented and normalised a batch at a time.
    `images` and `labels` are arrays or tensors: a run that makes a pipeline each epoch passes
    tensors made once, so that the images are not copied into TensorFlow again every epoch.
    `cutout` (square side, 0 = off) and `mixup` (alpha, 0 = off) act after normalisation. `flip`
    mirrors every image (for test-time augmentation). `dataset` chooses the normalisation
    constants, `num_classes` the one-hot width.
    """
    check_pipeline_options(preprocess_mode=preprocess_mode, augment=augment, cutout=cutout, mixup=mixup)
    tf = _tf()
    order = epoch_order(len(images), seed, epoch, shuffle)
    x = tf.convert_to_tensor(images)
    y = tf.one_hot(tf.cast(labels, tf.int32), num_classes)
    augment_seed = tf.constant([seed, epoch], tf.int64)

    # Plain Python branches on settings, traced once: no autograph, which would also re-read this
    # file's source while a long run is going, and trip over any edit made to it meanwhile.
    @tf.autograph.experimental.do_not_convert
    def load(step, index):
        batch, onehot = tf.gather(x, index), tf.gather(y, index)
        seeds = batch_seeds(augment_seed, step)
        if augment == "standard":
            batch = augment_batch(batch, seeds[0])
        elif augment == "kaggle":
            batch = kaggle_augment_batch(batch, seeds[0])
        batch = preprocess(batch, preprocess_mode, dataset)
        if augment == "shift":  # after preprocessing, as the reference fills its border with 0 there
            batch = shift_flip_batch(batch, seeds[0])
        if flip:
            batch = tf.reverse(batch, axis=[2])
        if cutout:
            batch = cutout_batch(batch, seeds[1], cutout)
        if mixup:
            batch, onehot = mixup_batch(batch, onehot, seeds[2], mixup)
        return batch, onehot

    ds = tf.data.Dataset.from_tensor_slices(order.astype(np.int32)).batch(batch_size).enumerate()
    ds = ds.map(load, num_parallel_calls=parallel_calls(), deterministic=True)
    return ds.prefetch(PREFETCH_BATCHES).with_options(pipeline_options())


# Batches the pipeline keeps ready ahead of the training step: it fills them while the step runs,
# and a batch takes the pipeline ~1 ms against LeNet's ~15 ms step (BENCHMARKS.md).
PREFETCH_BATCHES = 4


def parallel_calls():
    """Batches prepared at once: one per CPU core this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def pipeline_options():
    """tf.data options for every pipeline of make_dataset: fixed parallelism, no autotuning.

    With autotuning on, tf.data runs a tuning thread beside each iterator, and deleting the
    iterator waits for that thread: Keras' `fit` stalled for 4-5 s on returning, after 21 of 36
    LeNet epochs measured, most of the time a whole LeNet epoch takes (BENCHMARKS.md, "The
    stall at the end of an epoch"). The map's parallelism and the prefetch depth are fixed instead
    (parallel_calls, PREFETCH_BATCHES); the pipeline alone delivers as much as with autotuning.
    """
    tf = _tf()
    options = tf.data.Options()
    options.autotune.enabled = False
    return options


class EpochBatches:
    """Each epoch's batches computed all at once, before the epoch, instead of beside the step.

    The same batches as make_dataset's (the same order, crops and flips; the same normalisation,
    but for the rounding, which TensorFlow may do differently in the two graphs on some CPUs:
    tests/test_data.py), for the settings it covers: augment "standard" or "none", no
    cutout or mixup. Why: on a CPU the training step's kernels split over all cores, and a
    pipeline computing batches beside them takes a core from them at every step; on the 2-core
    machine a LeNet epoch took 1.25 s longer with augmentation than without, for ~0.3 s of
    work (BENCHMARKS.md, "LeNet epoch on the real data"). Here an epoch's batches are one
    multi-threaded crop over the whole epoch (~0.3 s for 45,000 images on 2 cores), and the step
    reads them in place.

    The images are normalised once per run and kept in memory with PAD + 1 pixels of normalised
    black around them (45,000 images: 952 MB of float32); an epoch's batches take 553 MB more.
    The extra pixel keeps every crop one pixel inside the padded image: crop_and_resize finds
    each sample by rounding a computed position that may be off by a rounding error, harmless
    inside, but a position even a rounding error outside the image would come out as
    `extrapolation_value` (see crop_and_flip). The tests find every offset exact without it too,
    eagerly and traced; with it, that does not depend on how the arithmetic happens to round.
    """

    AUGMENTATIONS = ("standard", "none")

    def __init__(self, images, labels, *, preprocess_mode="standardize", augment="none", chunk=4096,
                 dataset="cifar10", num_classes=NUM_CLASSES):
        if augment not in self.AUGMENTATIONS:
            raise ValueError(f"EpochBatches computes augment 'standard' or 'none', not {augment!r}")
        tf = _tf()
        self.n, self.augment = len(images), augment
        margin = PAD + 1 if augment == "standard" else 0
        h, w, c = IMAGE_SHAPE
        # Normalised black, per channel: what the crop's zero padding becomes after normalisation.
        black = preprocess(tf.zeros([1, h, w, c], tf.uint8), preprocess_mode, dataset).numpy()[0, 0, 0]
        # Written in place in numpy, then handed to TensorFlow without a copy: memory new to the
        # process is slow to write the first time (seconds per GB on the virtual machines of
        # BENCHMARKS.md), so this is written once.
        padded = _aligned_empty((self.n, h + 2 * margin, w + 2 * margin, c), np.float32)
        if margin:
            for border in (padded[:, :margin], padded[:, -margin:], padded[:, :, :margin], padded[:, :, -margin:]):
                border[:] = black
        for start in range(0, self.n, chunk):
            batch = tf.convert_to_tensor(images[start:start + chunk])
            padded[start:start + chunk, margin:margin + h, margin:margin + w] = preprocess(batch, preprocess_mode, dataset).numpy()
        self.images = tf.experimental.dlpack.from_dlpack(padded.__dlpack__())
        self.labels = tf.one_hot(tf.cast(labels, tf.int32), num_classes)
        self.margin = margin

    def dataset(self, batch_size, *, shuffle=False, seed=0, epoch=0):
        """The epoch's batches, as make_dataset(..., shuffle, seed, epoch) gives them."""
        tf = _tf()
        order = tf.constant(epoch_order(self.n, seed, epoch, shuffle).astype(np.int32))
        if self.augment == "standard":
            offsets, flip = _epoch_draws(tf.constant([seed, epoch], tf.int64), tf.constant(self.n),
                                         tf.constant(batch_size))
            unit = (self.images.shape[1] - 1, self.images.shape[2] - 1)
            boxes = crop_boxes(offsets + self.margin, flip, IMAGE_SHAPE[:2], unit)
            images = tf.image.crop_and_resize(self.images, boxes, order, IMAGE_SHAPE[:2], method="nearest")
        else:
            images = tf.gather(self.images, order)
        labels = tf.gather(self.labels, order)
        steps = -(-self.n // batch_size)

        # The epoch's tensors travel as the dataset's elements, not captured by the map function:
        # a captured tensor stays alive as long as the function's graph does, 553 MB per epoch.
        @tf.autograph.experimental.do_not_convert
        def batch(step, epoch_tensors):
            return tuple(t[step * batch_size:(step + 1) * batch_size] for t in epoch_tensors)

        whole = tf.data.Dataset.from_tensors((images, labels)).repeat()
        ds = tf.data.Dataset.zip(tf.data.Dataset.range(steps), whole).map(batch)
        return ds.prefetch(PREFETCH_BATCHES).with_options(pipeline_options())


_EPOCH_DRAWS = []


def _epoch_draws(augment_seed, n, batch_size):
    """crop_flip_draws of every batch of an epoch, as make_dataset's batches draw them (each
    batch's seed from its int64 step), concatenated: offsets int32 [n, 2], flip bool [n]."""
    if not _EPOCH_DRAWS:  # one graph for every epoch, made on first use
        tf = _tf()

        @tf.function
        @tf.autograph.experimental.do_not_convert
        def draws(augment_seed, n, batch_size):
            steps = (n + batch_size - 1) // batch_size

            def body(step, offsets, flips):
                size = tf.minimum(batch_size, n - step * batch_size)
                o, f = crop_flip_draws(size, batch_seeds(augment_seed, tf.cast(step, tf.int64))[0])
                return step + 1, offsets.write(step, o), flips.write(step, f)

            arrays = (tf.TensorArray(tf.int32, steps, infer_shape=False), tf.TensorArray(tf.bool, steps, infer_shape=False))
            _, offsets, flips = tf.while_loop(lambda step, *_: step < steps, body, (tf.constant(0), *arrays))
            return offsets.concat(), flips.concat()

        _EPOCH_DRAWS.append(draws)
    return _EPOCH_DRAWS[0](augment_seed, n, batch_size)


def _aligned_empty(shape, dtype, align=64):
    """np.empty whose data starts on an `align`-byte boundary, as TensorFlow's CPU kernels need of
    memory they are handed (they check, and abort the process, where it is not)."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(size + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + size].view(dtype).reshape(shape)
