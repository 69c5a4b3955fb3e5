"""The input pipeline without TensorFlow: numpy batches, for Keras' JAX and PyTorch backends.

`Images(images, labels, ...)` holds a split's images (uint8, padded once), and `epoch(...)` gives
one epoch's batches as a `keras.utils.PyDataset`, which Keras' `fit`, `evaluate` and `predict`
read on every backend. Against data.make_dataset, TensorFlow's pipeline:
- the same: the images of each batch, in the same order every epoch (data.epoch_order), the
  normalisation (data's constants; the same float32 operations, computed by other kernels), the
  one-hot labels, and the test-time mirror image;
- the same distribution, other draws: the "standard" augmentation (pad 4 with zeros, a random
  32x32 crop, half the images mirrored), cutout and mixup, drawn from numpy's generator keyed by
  (seed, epoch, batch) instead of TensorFlow's stateless one: an offset uniform over -4..4 in each
  direction and a fair coin per image, as there, so a resumed run sees the epochs it would have seen;
- not here: the "kaggle" augmentation (TensorFlow's image ops); a run that asks for it on another
  backend is refused before it starts (execution.choose_batches).
tests/test_numpy_pipeline.py checks the first two against make_dataset, and what cutout and mixup
make of a batch.
"""

import numpy as np

import tfenv  # noqa: F401  (before keras: TensorFlow reads its settings when it loads)
import keras

import data

AUGMENTATIONS = ("standard", "none")


def normalise(images, mode, dataset="cifar10"):
    """uint8 images -> float32 network input, as data.preprocess computes it."""
    x = images.astype(np.float32) / np.float32(255)
    if mode == "standardize":
        spec = data.get_spec(dataset)
        return (x - np.float32(spec.mean)) / np.float32(spec.std)
    if mode == "scale":
        return x
    raise ValueError(f"preprocess must be one of {', '.join(data.PREPROCESSING)}; got {mode!r}")


def draws(seed, epoch, step):
    """The generator of one training batch's random draws: the same (seed, epoch, step), the same draws."""
    return np.random.default_rng([seed, 3, epoch, step])


def crop_flip_draws(rng, n):
    """The "standard" augmentation's draws for `n` images, as data.crop_flip_draws makes them with
    TensorFlow's generator: (row, column) offsets uniform over -PAD..PAD (int [n, 2]), and whether
    each image is mirrored, a fair coin (bool [n])."""
    return rng.integers(-data.PAD, data.PAD + 1, size=(n, 2)), rng.integers(0, 2, size=n) == 1


def crop_and_flip(padded, index, offsets, flip):
    """Images `index` of `padded` (uint8, PAD zeros around each image), each cropped to 32x32 at
    (row, column) `offsets` in -PAD..PAD from its centre, mirrored where `flip`."""
    h, w = data.IMAGE_SHAPE[:2]
    windows = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(1, 2))  # [n, 9, 9, c, h, w], no copy
    crops = windows[index, offsets[:, 0] + data.PAD, offsets[:, 1] + data.PAD].transpose(0, 2, 3, 1)
    return np.where(flip[:, None, None, None], crops[:, :, ::-1], crops)


def cutout(images, rng, size):
    """One size x size square of zeros per image, its centre uniform over the image (data.cutout_batch)."""
    n, h, w = images.shape[:3]
    top_left = (rng.random((n, 2), dtype=np.float32) * np.float32([h, w])).astype(np.int32) - size // 2
    rows = np.arange(h)[None, :] - top_left[:, :1]
    cols = np.arange(w)[None, :] - top_left[:, 1:]
    square = ((rows >= 0) & (rows < size))[:, :, None] & ((cols >= 0) & (cols < size))[:, None, :]
    return images * (~square)[..., None].astype(images.dtype)


def mixup(images, labels, rng, alpha):
    """One lam ~ Beta(alpha, alpha) per batch, each image and label mixed with another of the batch."""
    lam = np.float32(rng.beta(alpha, alpha))
    perm = rng.permutation(len(images))
    return lam * images + (1 - lam) * images[perm], lam * labels + (1 - lam) * labels[perm]


class Images:
    """A split's images and labels, with the pipeline's settings (data.make_dataset's names)."""

    def __init__(self, images, labels, *, preprocess_mode="standardize", augment="none", cutout=0, mixup=0.0,
                 flip=False, dataset="cifar10", num_classes=data.NUM_CLASSES):
        data.check_pipeline_options(preprocess_mode=preprocess_mode, augment=augment, cutout=cutout, mixup=mixup)
        if augment not in AUGMENTATIONS:
            raise ValueError(f"the numpy pipeline computes augment {' or '.join(AUGMENTATIONS)}, not {augment!r} "
                             "(TensorFlow's image ops)")
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise ValueError(f"the numpy pipeline takes uint8 images; got {images.dtype}")
        self.augment, self.cutout, self.mixup, self.flip = augment, cutout, mixup, flip
        self.preprocess_mode, self.dataset = preprocess_mode, dataset
        pad = data.PAD if augment == "standard" else 0
        self.images = np.pad(images, [(0, 0), (pad, pad), (pad, pad), (0, 0)]) if pad else images
        self.labels = np.eye(num_classes, dtype=np.float32)[np.asarray(labels).astype(int)]

    def __len__(self):
        return len(self.images)

    def epoch(self, batch_size, *, shuffle=False, seed=0, epoch=0):
        """The epoch's batches, in make_dataset(..., shuffle, seed, epoch)'s order."""
        return Epoch(self, batch_size, data.epoch_order(len(self), seed, epoch, shuffle), seed, epoch)

    def batch(self, index, rng):
        """The float32 batch of images `index` and their one-hot labels, augmented with `rng`'s draws."""
        if self.augment == "standard":
            x = crop_and_flip(self.images, index, *crop_flip_draws(rng, len(index)))
        else:
            x = self.images[index]
        x = normalise(x, self.preprocess_mode, self.dataset)
        if self.flip:
            x = x[:, :, ::-1]
        y = self.labels[index]
        if self.cutout:
            x = cutout(x, rng, self.cutout)
        if self.mixup:
            x, y = mixup(x, y, rng, self.mixup)
        return np.ascontiguousarray(x), y


class Epoch(keras.utils.PyDataset):
    """One epoch of an Images' batches; batch i's draws depend on (seed, epoch, i) alone, so Keras
    may read the batches in any order, or from several threads."""

    def __init__(self, images, batch_size, order, seed, epoch):
        super().__init__()
        self.source, self.batch_size, self.order, self.seed, self.epoch = images, batch_size, order, seed, epoch

    def __len__(self):
        return -(-len(self.order) // self.batch_size)

    def __getitem__(self, step):
        index = self.order[step * self.batch_size:(step + 1) * self.batch_size]
        return self.source.batch(index, draws(self.seed, self.epoch, step))
