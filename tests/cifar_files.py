"""Writes small CIFAR-10 sets in the official on-disk format (python-version pickles, tar.gz).

The batch files themselves are data.py's writer of the official format (write_batch, write_meta,
dump_py2); this module makes up the images and packs folders and archives around them.
"""

import struct
import tarfile
from pathlib import Path

import numpy as np

from data import dump_py2, write_batch, write_meta

# Ten colours far apart: the eight corners of a cube inside RGB space, mid-grey and one more.
PALETTE = np.array([[r, g, b] for r in (40, 215) for g in (40, 215) for b in (40, 215)]
                   + [[128, 128, 128], [40, 128, 215]])


def images_for(labels, rng):
    """Images whose class shows in their colour, so that a model can learn them quickly."""
    x = PALETTE[labels][:, None, None, :] + rng.normal(0, 25, size=(len(labels), 32, 32, 3))
    return np.clip(x, 0, 255).astype(np.uint8)


def write_cifar_folder(root, train_per_class=20, test_per_class=4, seed=0, images_fn=None):
    """Writes root/cifar-10-batches-py/ and returns (folder, (x_train, y_train, x_test, y_test))."""
    rng = np.random.default_rng(seed)
    images_fn = images_fn or (lambda labels: images_for(labels, rng))
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    y_train = rng.permutation(np.repeat(np.arange(10), train_per_class)).astype(np.uint8)
    y_test = rng.permutation(np.repeat(np.arange(10), test_per_class)).astype(np.uint8)
    x_train, x_test = images_fn(y_train), images_fn(y_test)
    for i, (xs, ys) in enumerate(zip(np.array_split(x_train, 5), np.array_split(y_train, 5)), start=1):
        write_batch(folder / f"data_batch_{i}", xs, ys, f"training batch {i} of 5")
    write_batch(folder / "test_batch", x_test, y_test, "testing batch 1 of 1")
    write_meta(folder / "batches.meta", len(x_test))
    return folder, (x_train, y_train, x_test, y_test)


def write_archive(folder, archive_path):
    """Packs a cifar-10-batches-py/ folder as cifar-10-python.tar.gz is packed."""
    with tarfile.open(archive_path, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return Path(archive_path)


def png_bytes(image, colour_type=None):
    """An 8-bit PNG of `image` (H, W) or (H, W, C) uint8, encoded here with zlib, not by TensorFlow.

    C = 1, 2, 3, 4 give greyscale, greyscale + alpha, RGB and RGBA (PNG colour types 0, 4, 2, 6).
    """
    import zlib

    image = np.asarray(image, np.uint8)
    if image.ndim == 2:
        image = image[:, :, None]
    height, width, channels = image.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels] if colour_type is None else colour_type

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"".join(b"\x00" + image[r].tobytes() for r in range(height))  # filter 0 on every row
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def write_png_folder(folder, images, names, seed=0):
    """Writes `images[i]` as `folder/names[i]`, in a shuffled order (the listing order must not matter)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i in np.random.default_rng(seed).permutation(len(names)):
        (folder / names[i]).write_bytes(png_bytes(images[i]))
    return folder


CIFAR100_FINE_NAMES = [f"fine{i:02d}".encode() for i in range(100)]
CIFAR100_COARSE_NAMES = [f"coarse{i:02d}".encode() for i in range(20)]


def write_cifar100_folder(root, train_per_class=2, test_per_class=1, seed=0):
    """Writes root/cifar-100-python/ (train, test, meta as the official archive has them) and
    returns (folder, (x_train, fine_train, coarse_train, x_test, fine_test, coarse_test)).
    Fine class f belongs to coarse class f % 20, so that every coarse class has five fine ones."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True)
    arrays = []
    for name, per_class in (("train", train_per_class), ("test", test_per_class)):
        fine = rng.permutation(np.repeat(np.arange(100), per_class)).astype(np.uint8)
        coarse = (fine % 20).astype(np.uint8)
        images = rng.integers(0, 256, (len(fine), 32, 32, 3), np.uint8)
        record = {
            b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(fine))],
            b"batch_label": f"{name}ing batch 1 of 1".encode(),
            b"fine_labels": [int(v) for v in fine],
            b"coarse_labels": [int(v) for v in coarse],
            b"data": np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(len(images), 3072),
        }
        with open(folder / name, "wb") as f:
            dump_py2(record, f)
        arrays += [images, fine, coarse]
    with open(folder / "meta", "wb") as f:
        dump_py2({b"fine_label_names": CIFAR100_FINE_NAMES, b"coarse_label_names": CIFAR100_COARSE_NAMES}, f)
    return folder, tuple(arrays)


def write_archive_of(folder, archive_path):
    """Packs a batch folder under its own name, as the official archives are packed."""
    with tarfile.open(archive_path, "w:gz") as tar:
        tar.add(folder, arcname=Path(folder).name)
