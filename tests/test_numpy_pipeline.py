"""numpy_pipeline (the batches of Keras' other backends) against data.make_dataset (TensorFlow's).

What holds between the two: the same images in each batch, in the same order every epoch, the
same normalisation (to within test_data.PIXEL_ATOL: the same float32 formula, other kernels)
and labels; the "standard" augmentation a zero-padded crop or its mirror, as there, with offsets
and flips of the same distribution but other draws (numpy's generator, not TensorFlow's).
"""

import numpy as np
import pytest

import data
import numpy_pipeline
from test_data import assert_same_pixels


def images_and_labels(n=500, seed=1):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def batches(ds):
    return [(np.asarray(x), np.asarray(y)) for x, y in (ds[i] for i in range(len(ds)))]


@pytest.mark.parametrize("preprocess_mode", data.PREPROCESSING)
def test_without_augmentation_the_batches_are_make_datasets(preprocess_mode):
    x, y = images_and_labels()
    for shuffle, seed, epoch, flip in ((True, 0, 1, False), (True, 3, 2, False), (False, 0, 0, False),
                                       (False, 0, 0, True)):
        ours = batches(numpy_pipeline.Images(x, y, preprocess_mode=preprocess_mode, flip=flip)
                       .epoch(96, shuffle=shuffle, seed=seed, epoch=epoch))
        theirs = list(data.make_dataset(x, y, 96, preprocess_mode=preprocess_mode, flip=flip, shuffle=shuffle,
                                        seed=seed, epoch=epoch))
        assert [len(b[0]) for b in ours] == [96] * 5 + [20] == [len(b[0]) for b in theirs]
        for (a, la), (b, lb) in zip(ours, theirs):
            assert a.dtype == np.float32 and la.dtype == np.float32 and a.flags.c_contiguous
            assert_same_pixels(a, b.numpy())
            np.testing.assert_array_equal(la, lb.numpy())


def test_augmentation_is_a_zero_padded_crop_or_its_mirror_of_the_same_image():
    """Each augmented image is, exactly, one of the 162 crops and mirrors of its own image padded
    with normalised black (both sides numpy's float32 operations on the same values), and the
    image is the one make_dataset puts in that place."""
    x, y = images_and_labels(200)
    source = numpy_pipeline.Images(x, y, augment="standard")
    ours = batches(source.epoch(64, shuffle=True, seed=2, epoch=3))
    order = data.epoch_order(len(x), 2, 3)
    padded = numpy_pipeline.normalise(np.pad(x, [(0, 0), (4, 4), (4, 4), (0, 0)]), "standardize")
    found = []
    for k, image in enumerate(np.concatenate([b[0] for b in ours])):
        i = order[k]
        matches = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)
                   if np.array_equal(image, (lambda c: c[:, ::-1] if f else c)(padded[i, dy:dy + 32, dx:dx + 32]))]
        assert matches, f"image {k} is no crop of training image {i}"
        found.append(matches[0])
    assert len(found) == 200 and len({f for *_, f in found}) == 2
    np.testing.assert_array_equal(np.concatenate([b[1] for b in ours]), np.eye(10, dtype=np.float32)[y[order]])


def test_offsets_and_flips_have_make_datasets_distribution():
    """Both generators' draws for 40,500 images (500 per offset pair and flip, expected): every
    offset pair and flip in -4..4 x -4..4 x {no, yes} within 5 standard deviations of its count,
    for numpy's draws and for TensorFlow's (data.crop_flip_draws) alike."""
    import tensorflow as tf
    n = 81 * 2 * 500

    def counts(offsets, flip):
        cells = (offsets[:, 0] + 4) * 18 + (offsets[:, 1] + 4) * 2 + flip.astype(int)
        return np.bincount(cells, minlength=162)

    ours = counts(*numpy_pipeline.crop_flip_draws(numpy_pipeline.draws(0, 1, 0), n))
    tf_offsets, tf_flip = data.crop_flip_draws(n, tf.constant([0, 1], tf.int64))
    theirs = counts(tf_offsets.numpy(), tf_flip.numpy())
    p = 1 / 162
    for c in (ours, theirs):
        assert len(c) == 162 and c.sum() == n
        assert np.all(np.abs(c - n * p) < 5 * np.sqrt(n * p * (1 - p))), c


def test_an_epochs_batches_depend_on_seed_and_epoch_alone():
    x, y = images_and_labels(300)
    source = numpy_pipeline.Images(x, y, augment="standard", cutout=8, mixup=0.2)
    first = source.epoch(64, shuffle=True, seed=1, epoch=4)
    again = numpy_pipeline.Images(x, y, augment="standard", cutout=8, mixup=0.2).epoch(64, shuffle=True, seed=1, epoch=4)
    backwards = [again[i] for i in reversed(range(len(again)))][::-1]  # read in another order, as threads may
    for (a, la), (b, lb) in zip(batches(first), backwards):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)
    for seed, epoch in ((1, 5), (2, 4)):
        assert not np.array_equal(first[0][0], source.epoch(64, shuffle=True, seed=seed, epoch=epoch)[0][0])


def test_cutout_zeroes_one_square_and_mixup_mixes_one_pair_per_image():
    x, y = images_and_labels(256)
    plain = numpy_pipeline.Images(x, y, preprocess_mode="scale").epoch(128)[0][0] + 1  # no zeros of its own
    cut = numpy_pipeline.cutout(plain, np.random.default_rng(0), 8)
    zeroed = (cut == 0).all(-1)
    assert 0 < zeroed.sum(axis=(1, 2)).min() and zeroed.sum(axis=(1, 2)).max() <= 64
    assert zeroed.sum(axis=(1, 2)).mean() > 40  # most squares lie mostly inside
    rows, cols = zeroed.any(2), zeroed.any(1)  # one square: its rows and columns are runs
    assert all(np.ptp(np.flatnonzero(r)) < 8 and np.ptp(np.flatnonzero(c)) < 8 for r, c in zip(rows, cols))
    np.testing.assert_array_equal(cut[~zeroed], plain[~zeroed])

    labels = np.eye(10, dtype=np.float32)[y[:128]]
    mixed, mixed_labels = numpy_pipeline.mixup(plain, labels, np.random.default_rng(0), 0.2)
    np.testing.assert_allclose(mixed_labels.sum(1), 1, atol=1e-6)
    assert mixed.dtype == mixed_labels.dtype == np.float32
    assert (mixed_labels > 0).sum(1).max() <= 2


def test_what_it_does_not_compute_is_refused():
    x, y = images_and_labels(4)
    with pytest.raises(ValueError, match="computes augment standard or none, not 'kaggle'"):
        numpy_pipeline.Images(x, y, augment="kaggle")
    with pytest.raises(ValueError, match="takes uint8 images; got float32"):
        numpy_pipeline.Images(x.astype(np.float32), y)
    with pytest.raises(ValueError, match="cutout must be a square side"):
        numpy_pipeline.Images(x, y, cutout=40)
