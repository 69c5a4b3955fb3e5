"""What the shared data copy's JPEG recompression costs in accuracy, measured on its exact images.

    python -m results.jpeg_cost --data-dir ../shared/data --out runs/jpeg-cost [--model resnet20]
        [--epochs 60] [--seeds 0 1]

The development copy of CIFAR-10 (../shared/data/README.md) keeps the original pixels of its first
4,000 training images and decodes every other image from a JPEG (quality 75) copy. This trains
the model's recipe (its epochs scaled to --epochs) twice per seed on those 4,000 images, with the
same stratified validation split of --val-split of them: once on the exact training images, once
on the same images after a quality-75 JPEG round trip (TensorFlow's encoder, 4:2:0 chroma, as
the copy's). Both are validated on the same exact images, so the gap between the two is the cost
of training on JPEG-recompressed pixels; the test set (mostly recompressed) is reported beside.
Each run is a run folder trained by the one loop (series.run_grid), resumable; OUT/results.md
and OUT/results.csv hold the table.
"""

import argparse
import sys
from pathlib import Path

import tfenv  # noqa: F401  (before tensorflow: it reads its settings when it loads)
import numpy as np
import tensorflow as tf

import data
import series
from errors import TrainError

EXACT_TRAIN_IMAGES = 4000  # ../shared/data/README.md: the first 4,000 training images are the originals


def jpeg_round_trip(images, quality=75):
    """Each uint8 image encoded as JPEG at `quality` and decoded again."""
    return np.stack([tf.io.decode_jpeg(tf.io.encode_jpeg(image, quality=quality)).numpy() for image in images])


def subsets(full, val_split, split_seed, quality=75):
    """{"exact": ..., "jpeg": ...}: the exact images as data sets, the second with its training part recompressed."""
    x, y = full.x_train[:EXACT_TRAIN_IMAGES], full.y_train[:EXACT_TRAIN_IMAGES]
    train_idx, _ = data.stratified_split(y, val_split, split_seed)  # the split the loop makes from the same labels
    recompressed = x.copy()
    recompressed[train_idx] = jpeg_round_trip(x[train_idx], quality)
    source = f"{full.source}, its first {EXACT_TRAIN_IMAGES} training images"
    return {"exact": data.Cifar10(x, y, full.x_test, full.y_test, source),
            f"jpeg{quality}": data.Cifar10(recompressed, y, full.x_test, full.y_test,
                                           f"{source}, the training part through JPEG quality {quality}")}


def table(rows):
    lines = ["| training images | val acc % (exact images) mean ± std | test acc % mean ± std | runs | epochs |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['val_mean']:.2f} ± {r['val_std']:.2f} | {r['test_mean']:.2f} ± {r['test_std']:.2f} "
              f"| {r['runs']} | {r['epochs']} |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", help="the development copy (as train.py's --data-dir)")
    p.add_argument("--out", required=True, help="folder for the runs and the table")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--val-split", type=int, default=1000, help="exact images held out for validation")
    a = p.parse_args(argv)
    if not 10 <= a.val_split < EXACT_TRAIN_IMAGES:
        p.error(f"--val-split must be from 10 to {EXACT_TRAIN_IMAGES - 1}")
    try:
        full = data.load_cifar10(a.data_dir)
        results = {}
        for name, loaded in subsets(full, a.val_split, split_seed=0).items():
            results.update(series.run_grid(a.model, {name: {}}, a.seeds, a.out, loaded=loaded, epochs=a.epochs,
                                           val_split=a.val_split))
    except (TrainError, data.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = series.summary_rows(results)
    series.write_csv(Path(a.out) / "results.csv", rows)
    (Path(a.out) / "results.md").write_text(table(rows))
    print(table(rows), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
