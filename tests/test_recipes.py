"""Training options beyond the recipe: augmentations, label smoothing, several seeds, determinism."""

import csv
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import data
import execution
import series
import train
from errors import TrainError
from settings import resolve_settings

ROOT = Path(__file__).resolve().parents[1]
rng = np.random.default_rng(0)
IMAGES = rng.integers(1, 256, (64, 32, 32, 3), np.uint8)
LABELS = np.arange(64) % 10


def first_batch(**kwargs):
    x, y = next(iter(data.make_dataset(IMAGES, LABELS, 64, **kwargs)))
    return x.numpy(), y.numpy()


def test_cutout_zeroes_one_square_per_image():
    plain, _ = first_batch(preprocess_mode="scale")
    cut, _ = first_batch(preprocess_mode="scale", cutout=16)
    full = 0
    for before, after in zip(plain, cut):
        zero = (after == 0).all(-1) & (before != 0).all(-1)
        np.testing.assert_array_equal(after[~zero], before[~zero])
        rows, cols = np.flatnonzero(zero.any(1)), np.flatnonzero(zero.any(0))
        assert len(rows) and len(rows) <= 16 and len(cols) <= 16
        assert zero[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # a solid rectangle
        assert (len(rows) == 16 or rows.min() == 0 or rows.max() == 31)  # cut only by the border
        full += zero.sum() == 256
    assert full > 10


def test_mixup_mixes_pairs_and_labels_sum_to_one():
    plain, onehot = first_batch()
    mixed, soft = first_batch(mixup=1.0)
    np.testing.assert_allclose(soft.sum(1), 1, atol=1e-6)
    lam = soft.max(1)  # the larger weight of each row, the same lam (or 1 - lam) for the batch
    weights = np.unique(np.round(np.concatenate([lam, 1 - lam]), 5))
    assert len(weights) <= 4  # lam and 1 - lam, or 1 and 0 where an image met its own class
    assert (soft > 1e-6).sum(1).max() <= 2
    assert not np.allclose(mixed, plain)
    # Each mixed image is the same convex combination of two originals as its label.
    i = int(np.argmax((soft > 1e-6).sum(1) == 2))
    a, b = np.flatnonzero(soft[i] > 1e-6)
    candidates = [(j, k) for j in np.flatnonzero(LABELS == a) for k in np.flatnonzero(LABELS == b)]
    assert any(np.allclose(mixed[i], soft[i, a] * plain[j] + soft[i, b] * plain[k], atol=1e-4)
               for j, k in candidates + [(k, j) for j, k in candidates])


def test_kaggle_augmentation_crops_flips_and_jitters():
    plain, _ = first_batch(preprocess_mode="scale")
    aug, _ = first_batch(preprocess_mode="scale", augment="kaggle")
    assert aug.shape == plain.shape and aug.dtype == np.float32
    assert aug.min() >= 0 and aug.max() <= 1
    assert not np.allclose(aug, plain)
    again, _ = first_batch(preprocess_mode="scale", augment="kaggle")
    np.testing.assert_array_equal(aug, again)  # seeded
    other, _ = first_batch(preprocess_mode="scale", augment="kaggle", epoch=1)
    assert not np.allclose(aug, other)
    # Mean brightness changes per image (brightness jitter), not for all alike.
    ratio = aug.mean(axis=(1, 2, 3)) / plain.mean(axis=(1, 2, 3))
    assert ratio.std() > 0.05


def test_flip_mirrors_every_image():
    plain, _ = first_batch()
    mirrored, _ = first_batch(flip=True)
    np.testing.assert_array_equal(mirrored, plain[:, :, ::-1])


def test_label_smoothing_reaches_the_loss():
    settings, _ = resolve_settings("lenet", label_smoothing=0.1, epochs=1)
    model = execution.build_model(settings, execution.plan(settings, channel_padding="off"), steps_per_epoch=1)
    assert model.loss.label_smoothing == pytest.approx(0.1)
    with pytest.raises(TrainError, match=r"label smoothing must be in \[0, 1\)"):
        resolve_settings("lenet", label_smoothing=1.0)


def test_summary_arithmetic():
    results = {"a": [(None, {"val_accuracy": v, "test_accuracy": t, "epochs_completed": 3, "wall_seconds": 60})
                     for v, t in [(0.5, 0.9), (0.7, 0.8), (0.6, 0.95)]]}
    row = series.summary_rows(results)[0]
    assert row["val_mean"] == 60.0 and row["val_std"] == 10.0
    assert row["test_mean"] == pytest.approx(88.33, abs=0.01) and row["test_median"] == 90.0
    assert row["test_std"] == pytest.approx(np.std([90, 80, 95], ddof=1), abs=0.01)
    assert row["runs"] == 3 and row["wall_minutes"] == 3.0


def test_several_seeds_in_one_command(tiny_cifar, tmp_path, capsys):
    root, _ = tiny_cifar
    args = ["--model", "lenet", "--data-dir", str(root), "--run-dir", str(tmp_path), "--epochs", "1",
            "--val-split", "40", "--batch-size", "32", "--seeds", "0", "1", "--cutout", "8"]
    assert train.main(args) == 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["lenet-seed0", "lenet-seed1"]
    summary = (tmp_path / "summary.md").read_text()
    tests = [float(__import__("json").loads((tmp_path / "runs" / f"lenet-seed{s}" / "metrics.json").read_text())
                   ["test_accuracy"]) for s in (0, 1)]
    assert f"test accuracy {np.mean(tests) * 100:.2f} ± {np.std(tests, ddof=1) * 100:.2f} %" in summary
    assert "2 runs (seeds 0, 1)" in summary
    assert train.main([*args, "--seed", "3"]) == 2


def test_deterministic_runs_repeat_exactly(tiny_cifar, tmp_path):
    root, _ = tiny_cifar
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        result = subprocess.run([sys.executable, "train.py", "--model", "lenet", "--data-dir", str(root),
                                 "--run-dir", str(run), "--epochs", "2", "--val-split", "40", "--batch-size", "32",
                                 "--deterministic", "--cutout", "8", "--mixup", "0.2"],
                                cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
    histories = []
    for run in runs:
        with open(run / "history.csv") as f:
            histories.append([(r["loss"], r["accuracy"], r["val_loss"], r["val_accuracy"]) for r in csv.DictReader(f)])
    # Exact: two processes on one machine run the same kernels, and op determinism fixes their order.
    assert histories[0] == histories[1]
    for wa, wb in zip(*(keras.saving.load_model(r / "last.keras").get_weights() for r in runs)):
        np.testing.assert_array_equal(wa, wb)
