import codecs
import hashlib
import http.server
import io
import json
import pickle
import pickletools
import re
import shutil
import tarfile
import threading
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

import data
from cifar_files import write_archive, write_archive_of, write_cifar100_folder, write_cifar_folder
from data import dump_py2, write_batch


def assert_arrays(loaded, expected):
    x_train, y_train, x_test, y_test = expected
    np.testing.assert_array_equal(loaded.x_train, x_train)
    np.testing.assert_array_equal(loaded.y_train, y_train)
    np.testing.assert_array_equal(loaded.x_test, x_test)
    np.testing.assert_array_equal(loaded.y_test, y_test)
    assert loaded.x_train.dtype == np.uint8 and loaded.x_train.shape[1:] == (32, 32, 3)


@pytest.mark.parametrize("form", ["parent", "batches", "archive", "archive_parent"])
def test_loads_every_documented_form(form, tiny_cifar, tiny_archive):
    root, arrays = tiny_cifar
    archive, _ = tiny_archive
    path = {"parent": root, "batches": root / "cifar-10-batches-py", "archive": archive,
            "archive_parent": archive.parent}[form]
    assert_arrays(data.load_cifar10(path, verbose=False), arrays)


def test_identical_to_keras_loader(tmp_path, monkeypatch):
    """Keras' own loader parses the same files (full-size batches, which it insists on) the same way."""
    import keras.src.datasets.cifar10 as keras_cifar10

    rng = np.random.default_rng(1)
    folder, _ = write_cifar_folder(tmp_path, train_per_class=5000, test_per_class=1000,
                                   images_fn=lambda labels: rng.integers(0, 256, (len(labels), 32, 32, 3), np.uint8))
    monkeypatch.setattr(keras_cifar10, "get_file", lambda *a, **k: str(tmp_path))
    (kx_train, ky_train), (kx_test, ky_test) = keras_cifar10.load_data()
    ours = data.load_cifar10(tmp_path, verbose=False)
    np.testing.assert_array_equal(ours.x_train, kx_train)
    np.testing.assert_array_equal(ours.y_train, ky_train[:, 0])
    np.testing.assert_array_equal(ours.x_test, kx_test)
    np.testing.assert_array_equal(ours.y_test, ky_test[:, 0])


class _Payload:
    """Unpickling this would create a file: what a malicious batch file does."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_malicious_pickle_is_refused_and_nothing_runs(tiny_cifar, tmp_path):
    root, _ = tiny_cifar
    copy = tmp_path / "data"
    shutil.copytree(root, copy)
    victim = tmp_path / "pwned"
    with open(copy / "cifar-10-batches-py" / "data_batch_3", "wb") as f:
        dump_py2({b"data": _Payload(str(victim)), b"labels": [0]}, f)
    # Python's own unpickler really would run it:
    pickle.loads(pickle.dumps(_Payload(str(tmp_path / "control"))))
    assert (tmp_path / "control").exists()
    with pytest.raises(data.DataError, match=r"data_batch_3: not a CIFAR batch file \(refers to io.open"):
        data.load_cifar10(copy, verbose=False)
    assert not victim.exists()


class _Recorder(pickle.Unpickler):
    """Python's own unpickler, noting the globals a pickle names (for pickles this file wrote)."""

    def find_class(self, module, name):
        self.names.add((module, name))
        return super().find_class(module, name)


def _globals_named(raw):
    recorder = _Recorder(io.BytesIO(raw), encoding="bytes")
    recorder.names = set()
    recorder.load()
    return recorder.names


class _Numpy1Pickler(pickle._Pickler):
    """Python's pickler naming numpy's functions as numpy 1 did: numpy.core, not numpy._core."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", None) or ""
        if not module.startswith("numpy._core."):
            return super().save_global(obj, name)
        module = "numpy.core." + module.removeprefix("numpy._core.")
        if self.proto >= 4:
            self.save(module)
            self.save(obj.__name__)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{module}\n{obj.__name__}\n".encode())
        self.memoize(obj)

    dispatch[types.FunctionType] = save_global  # numpy's _frombuffer; its C functions reach save_global


def _repickle(root, dest, dumps):
    """Loads each official-format batch of `root` with Python's pickle and saves it with `dumps`, as a
    user saving a copy of the batches does; returns the new files' bytes by name."""
    folder = dest / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for name in (*data.TRAIN_BATCHES, data.TEST_BATCH):
        with open(root / "cifar-10-batches-py" / name, "rb") as f:
            batch = pickle.load(f, encoding="bytes")  # the files tiny_cifar wrote, not untrusted ones
        written[name] = dumps(batch)
        (folder / name).write_bytes(written[name])
    return written


@pytest.mark.parametrize("keys", ["bytes", "str"])
@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_batches_pickled_again_by_python_3_load_the_same(protocol, keys, tiny_cifar, tmp_path):
    """Protocols 0-2 write bytes as _codecs.encode(str, "latin1"), protocol 5 contiguous arrays as
    numpy._core.numeric._frombuffer (pickletools shows what each writes): the standard pickles of
    arrays and bytes, which the loader must read (the malicious-pickle tests: and nothing else)."""
    root, arrays = tiny_cifar

    def dumps(batch):
        if keys == "str":
            batch = {k.decode(): v for k, v in batch.items()}
        return pickle.dumps(batch, protocol=protocol)

    written = _repickle(root, tmp_path / "d", dumps)
    names = _globals_named(written["test_batch"])
    assert (("_codecs", "encode") in names) == (protocol <= 2)
    assert (("numpy._core.numeric", "_frombuffer") in names) == (protocol == 5)
    assert_arrays(data.load_cifar10(tmp_path / "d", verbose=False), arrays)
    x, y = data.read_source(tmp_path / "d" / "cifar-10-batches-py")[2:]
    np.testing.assert_array_equal(x, arrays[2])
    np.testing.assert_array_equal(y, arrays[3])


@pytest.mark.parametrize("protocol", [2, 5])
def test_batches_pickled_by_numpy_1_load_the_same(protocol, tiny_cifar, tmp_path):
    """numpy 1 names numpy.core.multiarray._reconstruct and numpy.core.numeric._frombuffer; read
    without numpy 2's deprecation warning for numpy.core."""
    root, arrays = tiny_cifar

    def dumps(batch):
        out = io.BytesIO()
        _Numpy1Pickler(out, protocol=protocol).dump(batch)
        return out.getvalue()

    written = _repickle(root, tmp_path / "d", dumps)
    raw = written["test_batch"]
    assert {2: b"numpy.core.multiarray", 5: b"numpy.core.numeric"}[protocol] in raw and b"numpy._core" not in raw
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_arrays(data.load_cifar10(tmp_path / "d", verbose=False), arrays)


class _Call:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("call", [
    _Call(codecs.encode, b"x" * 100, "zlib_codec"),  # bytes in: another codec's transform
    _Call(codecs.encode, "x", "rot13"),
    _Call(codecs.encode, "x", "utf-16"),
    _Call(bytes, 10 ** 6),  # an allocation of any size
    _Call(bytes, [1, 2, 3]),
], ids=["zlib", "rot13", "utf16", "bytes_n", "bytes_list"])
def test_allowed_bytes_globals_build_nothing_but_bytes(call, tiny_cifar, tmp_path):
    """_codecs.encode and bytes are allowed for the one call pickle writes for bytes, and no other."""
    root, _ = tiny_cifar
    shutil.copytree(root, tmp_path / "d")
    raw = pickle.dumps({b"data": call, b"labels": [0]}, protocol=2)
    assert {("_codecs", "encode"), ("__builtin__", "bytes")} & _globals_named(raw)
    (tmp_path / "d" / "cifar-10-batches-py" / "test_batch").write_bytes(raw)
    with pytest.raises(data.DataError, match=r"test_batch: not a CIFAR batch file \((_codecs.encode|bytes)"):
        data.load_cifar10(tmp_path / "d", verbose=False)


def test_empty_bytes_pickled_by_python_3_load(tiny_cifar, tmp_path):
    """Protocols 0-2 write b"" as bytes(): an empty batch label or file name."""
    root, arrays = tiny_cifar

    def dumps(batch):
        batch[b"batch_label"], batch[b"filenames"][0] = b"", b""
        return pickle.dumps(batch, protocol=2)

    written = _repickle(root, tmp_path / "d", dumps)
    assert ("__builtin__", "bytes") in _globals_named(written["test_batch"])
    assert_arrays(data.load_cifar10(tmp_path / "d", verbose=False), arrays)


def test_truncated_archive_is_named(tiny_archive, tmp_path):
    archive, _ = tiny_archive
    cut = tmp_path / "cifar-10-python.tar.gz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(data.DataError, match=r"cifar-10-python.tar.gz: truncated or corrupt archive"):
        data.load_cifar10(cut, verbose=False)


def test_missing_batch_is_named(tiny_cifar, tmp_path):
    root, _ = tiny_cifar
    shutil.copytree(root, tmp_path / "d")
    (tmp_path / "d" / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(data.DataError, match=r"data_batch_4: missing"):
        data.load_cifar10(tmp_path / "d", verbose=False)
    archive = write_archive(tmp_path / "d" / "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz")
    with pytest.raises(data.DataError, match=r"tar.gz:cifar-10-batches-py/data_batch_4: missing"):
        data.load_cifar10(archive, verbose=False)


@pytest.mark.parametrize("record, message", [
    ({b"data": np.zeros((4, 3000), np.uint8), b"labels": [0, 1, 2, 3]}, r"shape \(N, 3072\); got \(4, 3000\)"),
    ({b"data": np.zeros((4, 3072), np.float32), b"labels": [0, 1, 2, 3]}, r"uint8 array; got float32"),
    ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2]}, r"'labels' must be 4 integers"),
    ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 10]}, r"labels must lie in 0..9"),
    ({b"labels": [0]}, r"missing 'data' or 'labels'"),
])
def test_bad_batch_contents_are_named(record, message, tiny_cifar, tmp_path):
    root, _ = tiny_cifar
    shutil.copytree(root, tmp_path / "d")
    with open(tmp_path / "d" / "cifar-10-batches-py" / "test_batch", "wb") as f:
        dump_py2(record, f)
    with pytest.raises(data.DataError, match=r"test_batch: .*" + message):
        data.load_cifar10(tmp_path / "d", verbose=False)


def test_missing_class_is_reported(tmp_path):
    folder, _ = write_cifar_folder(tmp_path)
    x = np.zeros((10, 32, 32, 3), np.uint8)
    write_batch(folder / "test_batch", x, np.arange(10) % 9, "test")
    with pytest.raises(data.DataError, match=r"test_batch: the test set has no images of class truck"):
        data.load_cifar10(tmp_path, verbose=False)


def test_second_load_reads_the_cache(tiny_cifar, monkeypatch):
    root, arrays = tiny_cifar
    data.load_cifar10(root, verbose=False)

    def fail(*args):
        raise AssertionError("read the source again instead of the cache")

    monkeypatch.setattr(data, "read_source", fail)
    assert_arrays(data.load_cifar10(root, verbose=False), arrays)
    assert any(data.cache_root().iterdir())


def test_changed_source_is_read_again(tmp_path):
    write_cifar_folder(tmp_path / "a", seed=1)
    first = data.load_cifar10(tmp_path / "a", verbose=False)
    shutil.rmtree(tmp_path / "a")
    _, arrays = write_cifar_folder(tmp_path / "a", seed=2)
    second = data.load_cifar10(tmp_path / "a", verbose=False)
    assert not np.array_equal(first.x_train, second.x_train)
    assert_arrays(second, arrays)


def _cache_of(source):
    """The folder load_cifar10 caches `source`'s arrays in."""
    return data.cache_root() / data._fingerprint(data.find_source(source))


@pytest.fixture
def cached(tmp_path, monkeypatch):
    """A tiny set of its own, loaded once: (root, arrays, its cache folder)."""
    monkeypatch.setenv("CIFAR10_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "src"
    _, arrays = write_cifar_folder(root, seed=4)
    data.load_cifar10(root, verbose=False)
    return root, arrays, _cache_of(root)


def _assert_rebuilt(root, arrays, capsys, monkeypatch, reason):
    """load_cifar10 reads the source again and says why in one line; then its new cache is used."""
    capsys.readouterr()
    assert_arrays(data.load_cifar10(root, verbose=False), arrays)
    lines = capsys.readouterr().out.splitlines()
    folder = _cache_of(root)
    assert len(lines) == 1 and f"cache {folder} not used" in lines[0], lines
    assert re.search(reason, lines[0]), lines[0]
    assert [p.name for p in data.cache_root().iterdir()] == [folder.name]  # nothing .tmp- or .stale- left

    def fail(*args):
        raise AssertionError("read the source again instead of the rebuilt cache")

    monkeypatch.setattr(data, "read_source", fail)
    assert_arrays(data.load_cifar10(root, verbose=False), arrays)
    assert capsys.readouterr().out == ""


def _edit(path, change):
    array = np.load(path)
    np.save(path, change(array))


def _set(array, index, value):
    array[index] = value
    return array


@pytest.mark.parametrize("tamper, reason", [
    (lambda f: _edit(f / "y_train.npy", lambda a: _set(a, 0, 12)), r"y_train.npy differs from what manifest.json"),
    (lambda f: _edit(f / "x_train.npy", lambda a: _set(a, (0, 0, 0, 0), a[0, 0, 0, 0] ^ 1)), r"x_train.npy differs"),
    (lambda f: _edit(f / "x_test.npy", lambda a: a.astype(np.int16)), r"x_test.npy differs"),
    (lambda f: (f / "x_train.npy").write_bytes((f / "x_train.npy").read_bytes()[:5000]), r"could not read x_train.npy"),
    (lambda f: (f / "y_test.npy").write_bytes(b""), r"could not read y_test.npy \(No data left in file"),
    (lambda f: (f / "manifest.json").unlink(), r"no manifest.json: written by an older version"),
    (lambda f: (f / "manifest.json").write_text("{"), r"unreadable manifest.json \(JSONDecodeError"),
], ids=["label_12", "pixel", "dtype", "truncated", "empty", "older_version", "bad_manifest"])
def test_cache_changed_after_it_was_written_is_rebuilt(tamper, reason, cached, capsys, monkeypatch):
    root, arrays, folder = cached
    tamper(folder)
    _assert_rebuilt(root, arrays, capsys, monkeypatch, reason)


def _with(arrays, **changes):
    named = dict(zip(("x_train", "y_train", "x_test", "y_test"), arrays))
    return tuple({**named, **changes}.values())


def _unbalanced_full_test_set():
    y = (np.arange(10000) % 10).astype(np.uint8)
    y[0] = 1  # 999 airplanes, 1001 automobiles
    return {"x_test": np.zeros((10000, 32, 32, 3), np.uint8), "y_test": y}


@pytest.mark.parametrize("changes, reason", [
    (lambda a: {"y_train": _set(a[1].copy(), 0, 12)}, r"y_train.npy: labels must lie in 0..9; found 0..12"),
    (lambda a: {"x_train": a[0].astype(np.float32)}, r"the train images must be uint8"),
    (lambda a: {"y_test": a[3].astype(np.int64)}, r"the test labels must be 40 uint8 values; got int64"),
    (lambda a: {"y_train": a[1][:-1]}, r"the train labels must be 200 uint8 values"),
    (lambda a: {"y_test": np.minimum(a[3], 8)}, r"the test set has no images of class truck"),
    (lambda a: _unbalanced_full_test_set(), r"a full CIFAR-10 test set has 1000 images per class"),
], ids=["label_12", "float_images", "int64_labels", "short_labels", "missing_class", "unbalanced_full_set"])
def test_cache_matching_its_manifest_is_still_validated(changes, reason, cached, capsys, monkeypatch):
    """Arrays that match their manifest, but that the source's checks refuse (written by a bug, or by
    hand): refused as the source would be."""
    root, arrays, folder = cached
    shutil.rmtree(folder)
    data._save_cache(folder, _with(arrays, **changes(arrays)), data.find_source(root))
    assert data._load_cache(folder)[0] is None
    _assert_rebuilt(root, arrays, capsys, monkeypatch, reason)


def test_cache_manifest_records_each_arrays_sha256(cached):
    root, arrays, folder = cached
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["source"] == str(data.find_source(root))
    for name, array in zip(("x_train", "y_train", "x_test", "y_test"), arrays):
        assert manifest["arrays"][name] == {"dtype": "|u1", "shape": list(array.shape),
                                            "sha256": hashlib.sha256(array.tobytes()).hexdigest()}


def test_search_order(tiny_cifar, tmp_path, monkeypatch):
    root, arrays = tiny_cifar
    monkeypatch.setenv("CIFAR10_DIR", str(root))
    assert data.find_source() == root / "cifar-10-batches-py"
    other, _ = write_cifar_folder(tmp_path / "other", seed=3)
    assert data.find_source(tmp_path / "other") == other  # --data-dir comes first
    monkeypatch.delenv("CIFAR10_DIR")
    keras_copy = data.keras_cache_dir() / "cifar-10-batches-py-target"
    shutil.copytree(root, keras_copy)
    try:
        assert data.find_source() == keras_copy / "cifar-10-batches-py"
    finally:
        shutil.rmtree(keras_copy)


def test_not_found_names_every_place(tmp_path, monkeypatch):
    with pytest.raises(data.DataError) as info:
        data.find_source()
    message = str(info.value)
    for place in ("--data-dir", "$CIFAR10_DIR", "cifar-10-batches-py-target", "download", "--data-dir"):
        assert place in message
    assert "\n" not in message
    with pytest.raises(data.DataError, match=r"--data-dir .*nowhere: no CIFAR-10 there"):
        data.find_source(tmp_path / "nowhere")


@pytest.fixture
def local_server(tiny_archive):
    """Serves the tiny archive on 127.0.0.1 only."""
    archive, _ = tiny_archive
    payload = archive.read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/cifar-10-python.tar.gz", hashlib.md5(payload).hexdigest()
    server.shutdown()


def test_download_checks_md5(local_server, tmp_path):
    url, md5 = local_server
    with pytest.raises(data.DataError, match=r"has md5 .*, expected 0+; nothing was kept"):
        data.download(url, md5="0" * 32, dest_dir=tmp_path)
    assert not list(tmp_path.iterdir())
    path = data.download(url, md5=md5, dest_dir=tmp_path)
    assert path == tmp_path / "cifar-10-python.tar.gz"
    assert hashlib.md5(path.read_bytes()).hexdigest() == md5


def test_constants_match_the_real_training_set(real_archive):
    d = data.load_cifar10(real_archive, verbose=False)
    assert d.x_train.shape == (50000, 32, 32, 3) and d.x_test.shape == (10000, 32, 32, 3)
    x = d.x_train.reshape(-1, 3) / 255.0
    # The shared copy is partly JPEG-decoded, which blurs: the std comes out slightly lower.
    np.testing.assert_allclose(x.mean(axis=0), data.CIFAR10_MEAN, atol=3e-3)
    np.testing.assert_allclose(x.std(axis=0), data.CIFAR10_STD, atol=5e-3)


# --------------------------------------------------------------------------- CIFAR-100

REAL_CIFAR100 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar-100-python.tar.gz"


@pytest.fixture(scope="module")
def tiny_cifar100(tmp_path_factory):
    """cifar-100-python/ with 2 training and 1 test image per fine class, and its archive."""
    root = tmp_path_factory.mktemp("tiny-cifar100")
    folder, arrays = write_cifar100_folder(root)
    archive = tmp_path_factory.mktemp("tiny-cifar100-archive") / "cifar-100-python.tar.gz"
    write_archive_of(folder, archive)
    return root, archive, arrays


@pytest.mark.parametrize("labels", ["fine", "coarse"])
def test_cifar100_loads_fine_or_coarse_labels_from_a_folder_or_the_archive(labels, tiny_cifar100):
    root, archive, (x_train, fine_train, coarse_train, x_test, fine_test, coarse_test) = tiny_cifar100
    expected_train, expected_test = (fine_train, fine_test) if labels == "fine" else (coarse_train, coarse_test)
    for where in (root, root / "cifar-100-python", archive, archive.parent):
        d = data.load("cifar100", labels, where, verbose=False)
        np.testing.assert_array_equal(d.x_train, x_train)
        np.testing.assert_array_equal(d.y_train, expected_train)
        np.testing.assert_array_equal(d.x_test, x_test)
        np.testing.assert_array_equal(d.y_test, expected_test)
    assert (d.dataset, d.labels, d.num_classes) == ("cifar100", labels, 100 if labels == "fine" else 20)
    assert d.class_names[:2] == (("apple", "aquarium_fish") if labels == "fine" else ("aquatic_mammals", "fish"))


def test_cifar100_fine_and_coarse_labels_are_cached_apart(tiny_cifar100):
    root, _, (_, fine_train, coarse_train, *_) = tiny_cifar100
    for _ in range(2):  # the second time from the caches
        np.testing.assert_array_equal(data.load("cifar100", "fine", root, verbose=False).y_train, fine_train)
        np.testing.assert_array_equal(data.load("cifar100", "coarse", root, verbose=False).y_train, coarse_train)


def test_the_official_names_and_constants_of_cifar100():
    spec = data.get_spec("cifar100")
    assert spec.num_classes("fine") == len(set(spec.class_names("fine"))) == 100
    assert spec.num_classes("coarse") == len(set(spec.class_names("coarse"))) == 20
    assert list(spec.class_names("fine")) == sorted(spec.class_names("fine"))  # the meta file's order
    assert (spec.archive, spec.folder, spec.train_files, spec.test_files) == \
        ("cifar-100-python.tar.gz", "cifar-100-python", ("train",), ("test",))
    assert spec.md5 == "eb9058c3a382ffc7106e4002c42a8d85"
    assert spec.mean != data.CIFAR10_MEAN and spec.std != data.CIFAR10_STD


def test_a_cifar10_copy_given_as_cifar100_and_back_is_named(tiny_cifar, tiny_archive, tiny_cifar100):
    root10, _ = tiny_cifar
    archive10, _ = tiny_archive
    root100, archive100, _ = tiny_cifar100
    for where in (root10, archive10):
        with pytest.raises(data.DataError, match="holds CIFAR-10 .cifar-10-batches-py/., not CIFAR-100: use "
                                                 "--dataset cifar10"):
            data.load("cifar100", "fine", where, verbose=False)
    for where in (root100, archive100):
        with pytest.raises(data.DataError, match="holds CIFAR-100 .cifar-100-python/., not CIFAR-10: use "
                                                 "--dataset cifar100"):
            data.load("cifar10", "fine", where, verbose=False)


def test_unknown_datasets_and_label_sets_are_refused(tiny_cifar):
    root, _ = tiny_cifar
    with pytest.raises(data.DataError, match="unknown dataset 'svhn'; known: cifar10, cifar100"):
        data.load("svhn", "fine", root)
    with pytest.raises(data.DataError, match="CIFAR-10 has fine labels, not 'coarse'"):
        data.load("cifar10", "coarse", root)


def test_a_full_size_cifar100_set_must_have_the_official_balance():
    spec = data.get_spec("cifar100")
    images = np.zeros((50000, 32, 32, 3), np.uint8)
    fine = np.repeat(np.arange(100), 500).astype(np.uint8)
    data._validate_split("train", images, fine, ["train"], spec, "fine")
    data._validate_split("train", images, (fine % 20).astype(np.uint8), ["train"], spec, "coarse")
    fine[0] = 1  # 499 apples, 501 aquarium fish
    with pytest.raises(data.DataError, match="a full CIFAR-100 train set has 500 images per class"):
        data._validate_split("train", images, fine, ["train"], spec, "fine")
    with pytest.raises(data.DataError, match="labels must lie in 0..19; found 0..99"):
        data._validate_split("train", images, np.repeat(np.arange(100), 500).astype(np.uint8), ["train"], spec,
                             "coarse")


def test_cifar100_standardises_with_its_own_constants(tiny_cifar100):
    import tensorflow as tf
    x = tf.constant(np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), np.uint8))
    spec = data.get_spec("cifar100")
    expected = (x.numpy() / 255.0 - np.array(spec.mean)) / np.array(spec.std)
    np.testing.assert_allclose(data.preprocess(x, "standardize", "cifar100").numpy(), expected, atol=1e-5)
    root, _, _ = tiny_cifar100
    d = data.load("cifar100", "coarse", root, verbose=False)
    images, onehot = next(iter(data.make_dataset(d.x_train, d.y_train, 8, dataset="cifar100", num_classes=20)))
    assert onehot.shape == (8, 20)
    np.testing.assert_allclose(images.numpy(), (d.x_train[:8] / 255.0 - np.array(spec.mean)) / np.array(spec.std),
                               atol=1e-5)
    batches = data.EpochBatches(d.x_train, d.y_train, dataset="cifar100", num_classes=20)
    images_b, onehot_b = next(iter(batches.dataset(8)))
    np.testing.assert_allclose(images_b.numpy(), images.numpy(), atol=1e-5)
    np.testing.assert_array_equal(onehot_b.numpy(), onehot.numpy())


def test_cifar100_download_checks_its_own_md5(tiny_cifar100, tmp_path, monkeypatch):
    """The CIFAR-100 archive is fetched from $CIFAR100_URL (here a closed local port) into Keras'
    cache; with nothing found, every place is named."""
    monkeypatch.setenv("CIFAR100_URL", "http://127.0.0.1:9/cifar-100-python.tar.gz")
    with pytest.raises(data.DataError) as info:
        data.load("cifar100", "fine")
    message = str(info.value)
    for place in ("--data-dir", "$CIFAR100_DIR", "cifar-100-python-target", "download", "127.0.0.1:9"):
        assert place in message
    root, archive, _ = tiny_cifar100
    monkeypatch.setenv("CIFAR100_DIR", str(archive))
    assert data.load("cifar100", "fine", verbose=False).num_classes == 100


@pytest.mark.skipif(not REAL_CIFAR100.is_file(), reason=f"no real CIFAR-100 archive at {REAL_CIFAR100}")
def test_cifar100_constants_match_the_real_training_set():
    d = data.load("cifar100", "fine", REAL_CIFAR100, verbose=False)
    x = d.x_train.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(x.mean(axis=0), data.CIFAR100_MEAN, atol=1e-3)
    np.testing.assert_allclose(x.std(axis=0), data.CIFAR100_STD, atol=1e-3)


# --------------------------------------------------------------------------- split and pipeline

def test_split_is_stratified_disjoint_and_seeded():
    labels = np.repeat(np.arange(10), [500, 500, 500, 500, 500, 500, 500, 500, 500, 497])
    train, val = data.stratified_split(labels, 1000, seed=0)
    assert len(val) == 1000 and len(train) == len(labels) - 1000
    assert not set(train) & set(val) and set(train) | set(val) == set(range(len(labels)))
    counts = np.bincount(labels[val], minlength=10)
    assert counts.min() >= 99 and counts.max() <= 101
    again = data.stratified_split(labels, 1000, seed=0)[1]
    other = data.stratified_split(labels, 1000, seed=1)[1]
    np.testing.assert_array_equal(val, again)
    assert not np.array_equal(val, other)
    assert len(data.stratified_split(labels, 0, seed=0)[1]) == 0
    with pytest.raises(ValueError, match="whole number from 0 to"):
        data.stratified_split(labels, len(labels), seed=0)


def test_a_split_that_leaves_a_class_without_training_images_is_refused():
    labels = np.repeat(np.arange(10), 10)
    assert len(data.stratified_split(labels, 90, seed=0)[0]) == 10  # one training image a class
    with pytest.raises(ValueError, match=r"of 91 of 100 images leaves class \d with no training image"):
        data.stratified_split(labels, 91, seed=0)


def _batches(ds):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(xs), np.concatenate(ys)


def test_pipeline_normalises_and_keeps_order_without_shuffle(tiny_cifar):
    _, (x, y, _, _) = tiny_cifar
    images, onehot = _batches(data.make_dataset(x, y, 64))
    assert images.shape == (200, 32, 32, 3) and images.dtype == np.float32
    np.testing.assert_array_equal(onehot.argmax(1), y)
    expected = (x / 255.0 - np.array(data.CIFAR10_MEAN)) / np.array(data.CIFAR10_STD)
    np.testing.assert_allclose(images, expected, atol=1e-5)
    scaled, _ = _batches(data.make_dataset(x, y, 64, preprocess_mode="scale"))
    np.testing.assert_allclose(scaled, x / 255.0, atol=1e-6)


def test_augmentation_is_a_padded_crop_or_its_mirror(tiny_cifar):
    _, (x, y, _, _) = tiny_cifar
    aug, onehot = _batches(data.make_dataset(x, y, 50, preprocess_mode="scale", augment="standard"))
    aug = np.rint(aug * 255).astype(np.uint8)
    padded = np.pad(x, [(0, 0), (4, 4), (4, 4), (0, 0)])
    changed = flipped = 0
    for i in range(len(x)):
        crops = [padded[i, r:r + 32, c:c + 32] for r in range(9) for c in range(9)]
        plain = any(np.array_equal(aug[i], crop) for crop in crops)
        mirror = any(np.array_equal(aug[i], crop[:, ::-1]) for crop in crops)
        assert plain or mirror, f"image {i} is not a crop of its padded original"
        changed += not np.array_equal(aug[i], x[i])
        flipped += mirror and not plain
    assert changed > 150 and 50 < flipped < 150
    np.testing.assert_array_equal(onehot.argmax(1), y)


def test_crop_and_flip_matches_slicing_the_padded_image_for_every_offset_and_flip():
    """Eagerly and traced: TensorFlow's graph optimiser rewrites the box arithmetic, and a pixel
    position a rounding error outside the image would come out black instead of the edge pixel."""
    import tensorflow as tf
    combos = [(r, c, f) for r in range(-4, 5) for c in range(-4, 5) for f in (False, True)]
    images = np.random.default_rng(0).integers(0, 256, (len(combos), 32, 32, 3), np.uint8)
    padded = np.pad(images, [(0, 0), (4, 4), (4, 4), (0, 0)])
    expected = np.stack([padded[i, 4 + r:36 + r, 4 + c:36 + c][:, ::-1 if f else 1]
                         for i, (r, c, f) in enumerate(combos)])
    args = (tf.constant(images), tf.constant([[r, c] for r, c, _ in combos], tf.int32),
            tf.constant([f for *_, f in combos]))
    for crop_and_flip in (data.crop_and_flip, tf.function(data.crop_and_flip)):
        out = crop_and_flip(*args)
        assert out.dtype == tf.float32
        # Bit for bit on any CPU: nearest sampling copies uint8 values, exact in float32; only where
        # it samples can go wrong, and a wrong pixel is a whole level off.
        np.testing.assert_array_equal(out.numpy(), expected.astype(np.float32))


def _bilinear_shift(image, dr, dc, flip):
    """The "shift" augmentation of one image, written out: output pixel (r, c) samples the input at
    (r - dr, c' - dc), c' = c or its mirror, bilinearly, reading 0 outside the image."""
    h, w, _ = image.shape
    out = np.zeros_like(image)
    for r in range(h):
        for c in range(w):
            y, x = r - dr, (w - 1 - c if flip else c) - dc
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                    if 0 <= yy < h and 0 <= xx < w:
                        out[r, c] += wy * wx * image[yy, xx]
    return out


# shift_and_flip against the loops above: float32 interpolation weights summed in another order, so
# a few float32 ulps of values of order 1; a wrong offset, direction, mirror or border is off by far more.
SHIFT_ATOL = 1e-5


def test_shift_and_flip_is_a_bilinear_move_with_a_zero_border():
    """Whole, fractional and edge offsets, each direction, plain and mirrored, eagerly and traced."""
    import tensorflow as tf
    images = np.random.default_rng(0).normal(size=(8, 8, 8, 3)).astype(np.float32)
    offsets = np.array([[0, 0], [1, -2], [-3.5, 2.25], [0.3, -0.7], [4, 4], [-4, -4], [-1, 0.5], [2.5, 0]],
                       np.float32)
    flip = np.array([False, True, False, True, True, False, True, False])
    expected = np.stack([_bilinear_shift(images[i], *offsets[i], flip[i]) for i in range(len(images))])
    for shift_and_flip in (data.shift_and_flip, tf.function(data.shift_and_flip)):
        out = shift_and_flip(tf.constant(images), tf.constant(offsets), tf.constant(flip), 8).numpy()
        np.testing.assert_allclose(out, expected, rtol=0, atol=SHIFT_ATOL)
    np.testing.assert_array_equal(expected[0], images[0])  # the loops themselves: no move is the image
    np.testing.assert_array_equal(expected[4][:4], 0 * images[4][:4])  # moved down 4: the top 4 rows are border


def test_shift_augmentation_in_the_pipeline(tiny_cifar):
    """The pipeline's "shift" batches are shift_and_flip of the standardised images with its own draws;
    the draws cover -SHIFT..SHIFT in both axes and mirror about half of the images."""
    import tensorflow as tf
    _, (x, y, _, _) = tiny_cifar
    aug, onehot = _batches(data.make_dataset(x, y, 200, augment="shift"))
    np.testing.assert_array_equal(onehot.argmax(1), y)
    seed = data.batch_seeds(tf.constant([0, 0], tf.int64), tf.constant(0, tf.int64))[0]
    offsets, flip = data.shift_flip_draws(len(x), seed)
    standardised = data.preprocess(tf.constant(x), "standardize")
    expected = data.shift_and_flip(standardised, offsets, flip, 32).numpy()
    np.testing.assert_allclose(aug, expected, rtol=0, atol=SHIFT_ATOL)
    offsets, flip = offsets.numpy(), flip.numpy()
    assert offsets.min() >= -data.SHIFT and offsets.max() <= data.SHIFT
    assert (offsets < -2).any(axis=0).all() and (offsets > 2).any(axis=0).all()
    assert 60 < flip.sum() < 140
    # the border is 0 after standardisation (the mean colour), not black
    moved_down = offsets[:, 0] > 1
    np.testing.assert_array_equal(aug[moved_down, 0], 0)


# How far apart two float32 standardisations of the same pixels may come out when different graphs
# compute them. Each side rounds its three steps (/ 255, - mean, / std) to float32, but which kernels
# run them, and how, is TensorFlow's graph optimiser's and oneDNN's choice, made per graph and per
# CPU: a division by a constant may become a multiplication by its reciprocal, steps may be fused.
# A tf.function and the same ops run eagerly differ in the last bits of many values even on the
# AMD EPYC (AVX2) that the suite first ran on, and which pairs of graphs happen to agree bit for bit
# differs on an Intel Xeon (AVX-512, AMX). Each step may round differently by an ulp of its result,
# the first step's difference grown by 1 / std (about 4) in the last: at most about 3 ulp of the
# largest standardised value (|v| < 2.2, where an ulp is 2.4e-7), within 1e-6. Distinct pixel values
# lie 1 / 255 / std > 0.015 apart after standardisation, 1 / 255 after scaling, so a wrong constant,
# channel, crop or flip still shows, thousands of times above this.
PIXEL_ATOL = 1e-6


def assert_same_pixels(ours, theirs):
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=PIXEL_ATOL)


def test_standardisation_is_the_per_channel_formula():
    """Eagerly and traced (where TensorFlow's graph optimiser rewrites the division), whether or not
    the image shape is known: the per-channel formula to within PIXEL_ATOL. Not bit for bit: the
    formula and preprocess's broadcast constants are different graphs, whose kernels differ per CPU."""
    import tensorflow as tf
    x = tf.constant(np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), np.uint8))

    def per_channel(t):
        return (tf.cast(t, tf.float32) / 255.0 - tf.constant(data.CIFAR10_MEAN)) / tf.constant(data.CIFAR10_STD)

    def standardize(t):
        return data.preprocess(t, "standardize")

    assert_same_pixels(standardize(x).numpy(), per_channel(x).numpy())
    for shape in ([None, 32, 32, 3], [None, None, None, 3]):
        spec = [tf.TensorSpec(shape, tf.uint8)]
        traced, reference = (tf.function(f, input_signature=spec) for f in (standardize, per_channel))
        assert_same_pixels(traced(x).numpy(), reference(x).numpy())


def test_shuffle_and_augmentation_depend_only_on_seed_and_epoch(tiny_cifar):
    _, (x, y, _, _) = tiny_cifar

    def run(seed, epoch):
        return _batches(data.make_dataset(x, y, 32, augment="standard", shuffle=True, seed=seed, epoch=epoch))

    # Bit for bit: both sides are the same map function, traced from the same code on the same CPU,
    # so the same kernels compute them; a resumed run must see exactly the batches it would have.
    a, b = run(0, 3), run(0, 3)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    c = run(0, 4)
    assert not np.array_equal(a[1], c[1])
    assert sorted(a[1].argmax(1)) == sorted(y)  # every image once per epoch
    # train.py hands the pipeline tensors made once per run: the same batches as from the arrays
    import tensorflow as tf

    x_t, y_t = tf.constant(x), tf.constant(y)
    d = _batches(data.make_dataset(x_t, y_t, 32, augment="standard", shuffle=True, seed=0, epoch=3))
    np.testing.assert_array_equal(a[0], d[0])
    np.testing.assert_array_equal(a[1], d[1])


def test_the_writer_of_the_official_format_writes_what_the_real_archive_holds(real_archive, tmp_path):
    """data.write_batch and write_meta against the real files: the same records, keys in the same
    order, bytes written as Python 2 `str` (no _codecs.encode), as the official pickles have them."""
    with tarfile.open(real_archive) as tar:
        official = {name: tar.extractfile(f"cifar-10-batches-py/{name}").read()
                    for name in ("test_batch", "batches.meta")}
    x, y = data.parse_batch(official["test_batch"], "test_batch")
    data.write_batch(tmp_path / "test_batch", x[:50], y[:50], "testing batch 1 of 1")
    data.write_meta(tmp_path / "batches.meta", 10000)
    written = {name: (tmp_path / name).read_bytes() for name in official}

    def string_opcodes(raw):
        return {op.name for op, _, _ in pickletools.genops(raw) if "STRING" in op.name or "BYTES" in op.name}

    for name in official:
        assert string_opcodes(written[name]) == string_opcodes(official[name]) <= {"SHORT_BINSTRING", "BINSTRING"}
    theirs = {name: pickle.loads(raw, encoding="bytes") for name, raw in official.items()}
    ours = {name: pickle.loads(raw, encoding="bytes") for name, raw in written.items()}
    assert ours["batches.meta"] == theirs["batches.meta"]
    batch, real = ours["test_batch"], theirs["test_batch"]
    assert list(batch) == list(real) and batch[b"batch_label"] == real[b"batch_label"]
    np.testing.assert_array_equal(batch[b"data"], real[b"data"][:50])
    assert batch[b"data"].dtype == real[b"data"].dtype and batch[b"labels"] == real[b"labels"][:50]
    assert all(type(f) is bytes for f in batch[b"filenames"]) and len(batch[b"filenames"]) == 50


def test_pipeline_has_fixed_parallelism_and_no_autotuning(tiny_cifar):
    # Autotuning's thread made deleting each epoch's iterator stall for seconds (data.pipeline_options).
    _, (x, y, _, _) = tiny_cifar
    options = data.make_dataset(x, y, 8, augment="standard", shuffle=True).options()
    assert options.autotune.enabled is False
    assert data.parallel_calls() >= 1


def test_pipeline_rejects_unknown_modes(tiny_cifar):
    _, (x, y, _, _) = tiny_cifar
    with pytest.raises(ValueError, match="augment must be one of standard, none"):
        data.make_dataset(x, y, 8, augment="cutmix")
    with pytest.raises(ValueError, match="preprocess must be one of standardize, scale"):
        data.make_dataset(x, y, 8, preprocess_mode="zca")


@pytest.mark.parametrize("option, message", [
    (dict(augment="cutmix"), "augment must be one of standard, none, kaggle, shift; got 'cutmix'"),
    (dict(preprocess_mode="zca"), "preprocess must be one of standardize, scale; got 'zca'"),
    (dict(cutout=33), r"cutout must be a square side from 0 \(off\) to 32; got 33"),
    (dict(cutout=True), r"cutout must be a square side from 0 \(off\) to 32; got True"),
    (dict(cutout=8.0), r"cutout must be a square side from 0 \(off\) to 32; got 8.0"),
    (dict(mixup=-0.2), r"mixup alpha must be >= 0 \(0 = off\); got -0.2"),
    (dict(mixup=float("nan")), r"mixup alpha must be >= 0 \(0 = off\); got nan"),
])
def test_pipeline_options_are_refused_with_what_is_allowed(option, message):
    allowed = dict(preprocess_mode="scale", augment="kaggle", cutout=32, mixup=0.2)
    data.check_pipeline_options(**allowed)
    with pytest.raises(ValueError, match=f"^{message}$"):
        data.check_pipeline_options(**{**allowed, **option})


@pytest.mark.parametrize("augment", data.EpochBatches.AUGMENTATIONS)
@pytest.mark.parametrize("preprocess_mode", data.PREPROCESSING)
def test_precomputed_epochs_are_the_streamed_batches(augment, preprocess_mode):
    """train.py's CPU default (data.EpochBatches) against the pipeline (data.make_dataset): the
    same batches, last one short, for several epochs and seeds, and unshuffled (validation); the
    labels exactly, the images to within PIXEL_ATOL. Not bit for bit: EpochBatches normalises
    eagerly before it crops, the pipeline in its traced map function after, two graphs whose
    arithmetic TensorFlow rewrites per CPU. A wrong order, crop or flip moves pixels by a whole
    level (see PIXEL_ATOL); the crops themselves copy values, exactly (the crop_and_flip test)."""
    import tensorflow as tf
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (1000, 32, 32, 3), np.uint8)
    y = rng.integers(0, 10, 1000).astype(np.uint8)
    epochs = data.EpochBatches(tf.constant(x), tf.constant(y), preprocess_mode=preprocess_mode, augment=augment)
    if augment == "standard":  # these epochs draw every offset with and without a flip
        draws = data._epoch_draws(tf.constant([0, 1], tf.int64), tf.constant(1000), tf.constant(96))
        combos = set(zip(*draws[0].numpy().T, draws[1].numpy()))
        assert len(combos) == 9 * 9 * 2
    for seed, epoch in ((0, 1), (0, 2), (5, 1)):
        ours = list(epochs.dataset(96, shuffle=True, seed=seed, epoch=epoch))
        theirs = list(data.make_dataset(x, y, 96, preprocess_mode=preprocess_mode, augment=augment, shuffle=True,
                                        seed=seed, epoch=epoch))
        assert [len(b[0]) for b in ours] == [96] * 10 + [40] == [len(b[0]) for b in theirs]
        for (a, la), (b, lb) in zip(ours, theirs):
            assert a.dtype == b.dtype == tf.float32
            assert_same_pixels(a.numpy(), b.numpy())
            np.testing.assert_array_equal(la.numpy(), lb.numpy())
    plain = data.EpochBatches(x, y, preprocess_mode=preprocess_mode)
    for (a, la), (b, lb) in zip(plain.dataset(256), data.make_dataset(x, y, 256, preprocess_mode=preprocess_mode)):
        assert_same_pixels(a.numpy(), b.numpy())
        np.testing.assert_array_equal(la.numpy(), lb.numpy())


def test_precomputed_epochs_refuse_what_they_do_not_compute():
    x, y = np.zeros((4, 32, 32, 3), np.uint8), np.zeros(4, np.uint8)
    with pytest.raises(ValueError, match="EpochBatches computes augment 'standard' or 'none', not 'kaggle'"):
        data.EpochBatches(x, y, augment="kaggle")


@pytest.mark.parametrize("shape", [(3,), (5, 7), (10, 42, 42, 3)])
def test_memory_handed_to_tensorflow_is_aligned(shape):
    for _ in range(5):  # numpy's own arrays start 16 bytes into a page: TensorFlow aborts on those
        a = data._aligned_empty(shape, np.float32)
        assert a.shape == shape and a.dtype == np.float32 and a.ctypes.data % 64 == 0
