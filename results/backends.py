"""The same recipe trained on each Keras backend and precision: accuracy and training speed, side by side.

    python -m results.backends --data-dir ../shared/data --out runs/backends [--model lenet]
        [--epochs 10] [--seeds 0 1] [--backends tensorflow jax torch] [--precisions float32 mixed]
        [--val-split N] [--batch-size N]

Each backend trains in a process of its own (Keras fixes its backend when it loads), through the
one loop (series.run_grid), into OUT/runs/BACKEND-seedS run folders (BACKEND-mixed-seedS with
train.py's --mixed-precision: bfloat16 on CPUs that compute it, float16 on GPUs), resumable: run
the command again to continue or to read finished runs back. The recipe is the model's own with its epochs scaled
to --epochs; the same seeds, the same validation split. On TensorFlow the batches come from its
pipeline, on the others from numpy_pipeline.py: the same images, order and normalisation, other
draws of the same augmentation. OUT/results.md and OUT/results.csv hold the table.
"""

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import series
from errors import INTERRUPTED, SERIES_INTERRUPTED, TrainError, run_child

BACKENDS = ("tensorflow", "jax", "torch")
PRECISIONS = ("float32", "mixed")


def variant(backend, precision):
    """The series' name for one backend and precision: "torch", "tensorflow-mixed"."""
    return backend if precision == "float32" else f"{backend}-{precision}"


def train_here(a):
    """This process' backend's runs (the child's part)."""
    backend = os.environ["KERAS_BACKEND"]
    given = {k: v for k, v in (("val_split", a.val_split), ("batch_size", a.batch_size)) if v is not None}
    variants = {variant(backend, precision): {"mixed_precision": precision == "mixed"} for precision in a.precisions}
    series.run_grid(a.model, variants, a.seeds, a.out, kind="results.backends", data_dir=a.data_dir,
                    epochs=a.epochs, **given)


def rows(results):
    """series.summary_rows, with each variant's backend, the precision its runs computed in (their
    execution record's policy) and its training throughput (median over its runs)."""
    out = series.summary_rows(results)
    for row in out:
        runs = [m for _, m in results[row["variant"]]]
        speeds = [m["train_images_per_second"] for m in runs if m.get("train_images_per_second")]
        row["train_images_per_second"] = round(statistics.median(speeds)) if speeds else None
        row["backend"] = row.pop("variant").removesuffix("-mixed")
        row["precision"] = "/".join(sorted({m.get("execution", {}).get("precision", "float32") for m in runs}))
    return out


def _count(value):
    return "not recorded" if value is None else f"{value:,}"


def table(rows, model):
    lines = [f"| backend ({model}) | precision | val acc % | test acc % | runs | epochs | training images/s "
             "| wall minutes, all runs |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['backend']} | {r['precision']} | {series.stat_text(r['val_mean'], r['val_std'], r['runs'])} "
              f"| {series.stat_text(r['test_mean'], r['test_std'], r['runs'])} | {r['runs']} | {r['epochs']} "
              f"| {_count(r['train_images_per_second'])} | {r['wall_minutes']} |" for r in rows]
    return "\n".join(lines) + "\n"


def train_each_backend(a):
    """Each backend's runs, trained (or read back) in a child process of its own: {variant: [(run, metrics)]},
    or None where a child stopped with an error that it or this function has printed in one line."""
    results = {}
    for backend in a.backends:
        command = [sys.executable, "-m", "results.backends", "--here", "--out", a.out, "--model", a.model,
                   "--epochs", str(a.epochs), "--seeds", *map(str, a.seeds), "--precisions", *a.precisions,
                   *(["--data-dir", a.data_dir] if a.data_dir else []),
                   *(["--val-split", str(a.val_split)] if a.val_split is not None else []),
                   *(["--batch-size", str(a.batch_size)] if a.batch_size is not None else [])]
        code = run_child(command, env={**os.environ, "KERAS_BACKEND": backend})
        if code == 2:  # the child has said why, in one line, and kept its committed epochs
            return None
        if code:
            print(f"error: the {backend} runs stopped (exit status {code}); their folders keep every "
                  "committed epoch: run the same command again to continue", file=sys.stderr)
            return None
        for precision in a.precisions:
            name = variant(backend, precision)
            runs = [series.run_dir(a.out, name, seed) for seed in a.seeds]
            results[name] = [(run, json.loads((run / "metrics.json").read_text())) for run in runs]
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", help="as train.py's --data-dir")
    p.add_argument("--out", required=True, help="folder for the runs and the table")
    p.add_argument("--model", default="lenet")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    p.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=["float32"],
                   help="float32, and/or mixed: train.py's --mixed-precision (default float32)")
    p.add_argument("--val-split", type=int, help="validation images (default: the recipe's)")
    p.add_argument("--batch-size", type=int, help="(default: the recipe's)")
    p.add_argument("--here", action="store_true", help=argparse.SUPPRESS)  # a child: train on this backend
    a = p.parse_args(argv)
    if a.here:
        try:
            train_here(a)
        except TrainError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:  # the parent says what is kept (errors.run_child)
            return INTERRUPTED
        return 0
    import models

    try:  # what the children would refuse, refused once and before any of them starts
        models.get_entry(a.model)
    except ValueError as e:
        p.error(str(e))
    if a.epochs < 1 or len(set(a.seeds)) != len(a.seeds) or (Path(a.out).exists() and not Path(a.out).is_dir()):
        p.error("--epochs must be >= 1, --seeds without repeats, --out a folder")
    try:
        results = train_each_backend(a)
    except KeyboardInterrupt:
        print(f"\n{SERIES_INTERRUPTED}", file=sys.stderr)
        return INTERRUPTED
    if results is None:
        return 2
    summary = rows(results)
    try:
        series.write_report(a.out, summary, table(summary, a.model))
    except TrainError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(summary, a.model), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
