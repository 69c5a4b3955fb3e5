"""A smaller CIFAR-10 in the official on-disk format, cut from the real set, for short checks.

    python -m bench.cifar_subset --data-dir ../shared/data --out /tmp/subset \\
        [--train-per-batch 600] [--test 1000]

Writes OUT/cifar-10-batches-py/ with the first --train-per-batch images of each of the five
training batches and the first --test test images, labels and order kept; train.py reads it with
`--data-dir OUT`. For checks too slow on the full set (BENCHMARKS.md, "Results unchanged": two
epochs of DenseNet-BC-100 on 3,000 images). Never inside the repository: it is CIFAR-10 data.
"""

import argparse
import shutil
from pathlib import Path

import data

ROOT = Path(__file__).resolve().parents[1]

TRAIN_BATCH = 10_000  # images per training batch file of the official archive


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", required=True, help="the CIFAR-10 archive, or a folder holding it")
    p.add_argument("--out", required=True, help="folder to write cifar-10-batches-py/ into (must not hold one)")
    p.add_argument("--train-per-batch", type=int, default=600)
    p.add_argument("--test", type=int, default=1000)
    a = p.parse_args(argv)
    if not 1 <= a.train_per_batch <= TRAIN_BATCH or not 1 <= a.test <= 10_000:
        p.error(f"--train-per-batch must be in 1..{TRAIN_BATCH} and --test in 1..10000")
    folder = Path(a.out) / "cifar-10-batches-py"
    if folder.exists():
        p.error(f"{folder} exists; choose another --out")
    if ROOT in folder.resolve().parents:
        p.error("--out must be outside the repository (CIFAR-10 is never committed)")
    try:
        d = data.load_cifar10(a.data_dir, allow_download=False)
    except data.DataError as e:
        raise SystemExit(f"error: {e}") from None
    if len(d.x_train) != 5 * TRAIN_BATCH:
        p.error(f"{d.source} holds {len(d.x_train)} training images, not the official set's {5 * TRAIN_BATCH}")
    folder.mkdir(parents=True)
    for i in range(5):
        rows = slice(i * TRAIN_BATCH, i * TRAIN_BATCH + a.train_per_batch)
        data.write_batch(folder / f"data_batch_{i + 1}", d.x_train[rows], d.y_train[rows],
                         f"training batch {i + 1} of 5")
    data.write_batch(folder / "test_batch", d.x_test[:a.test], d.y_test[:a.test], "testing batch 1 of 1")
    data.write_meta(folder / "batches.meta", a.train_per_batch)
    try:
        data.read_source(folder)  # what train.py will check: e.g. every class in each split
    except data.DataError as e:
        shutil.rmtree(folder)
        p.error(f"the cut would not load: {e}")
    print(f"wrote {5 * a.train_per_batch} training and {a.test} test images to {folder}")


if __name__ == "__main__":
    main()
