"""What the shared data copy's JPEG recompression costs in accuracy, measured on its exact images.

    python -m results.jpeg_cost --data-dir ../shared/data --out runs/jpeg-cost [--model resnet20]
        [--epochs 60] [--seeds 0 1]
    python -m results.jpeg_cost split RUN_DIR ... --data-dir ../shared/data [--csv FILE]

The development copy of CIFAR-10 (../shared/data/README.md) keeps the original pixels of its first
4,000 training images and decodes every other image from a JPEG (quality 75) copy. This trains
the model's recipe (its epochs scaled to --epochs) twice per seed on those 4,000 images, with the
same stratified validation split of --val-split of them: once on the exact training images, once
on the same images after a quality-75 JPEG round trip (TensorFlow's encoder, 4:2:0 chroma, as
the copy's). Both are validated on the same exact images, so the gap between the two is the cost
of training on JPEG-recompressed pixels. Each chosen model is then also evaluated on those
validation images after the same round trip (its inference model, RUN/inference.keras): the
cost of testing on recompressed pixels, which every test accuracy measured on the copy pays
(its test set is mostly recompressed; reported beside). Each run is a run folder trained by the
one loop (series.run_grid), resumable; OUT/results.md and OUT/results.csv hold the table.

`split` looks at finished runs trained on the whole copy instead: their validation images are a
stratified draw from all 50,000, so about 400 of them are exact; it gives each run's chosen model's
accuracy on those, on the same images after the round trip, and on the recompressed rest.
"""

import argparse
import sys
from pathlib import Path

import tfenv  # noqa: F401  (before tensorflow: it reads its settings when it loads)
import numpy as np
import tensorflow as tf

import data
import inference
import loop
import runfolder
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


def validation_accuracies(run_dir, x_val, y_val, quality=75):
    """The run's chosen model on the validation images as they are and after a JPEG round trip."""
    model = inference.inference_model(run_dir)
    return {kind: float(np.mean(model.predict(x, batch_size=500, verbose=0).argmax(1) == y_val))
            for kind, x in (("exact", x_val), ("jpeg", jpeg_round_trip(x_val, quality)))}


def rows(results, x_val, y_val):
    """One row per variant: the runs' own statistics (series.summary_rows) and the validation images
    re-evaluated as they are and recompressed, mean ± sample std in percent."""
    out = []
    for row in series.summary_rows(results):
        evaluated = [validation_accuracies(run_dir, x_val, y_val) for run_dir, _ in results[row["variant"]]]
        for kind in ("exact", "jpeg"):
            mean, std, _ = series.percent_stats([e[kind] for e in evaluated])
            row[f"val_{kind}_mean"], row[f"val_{kind}_std"] = round(mean, 2), round(std, 2)
        out.append(row)
    return out


def table(rows):
    lines = ["| trained on | val acc %, exact images | the same, re-evaluated | the same images through JPEG q75 "
             "| test acc % (the copy's) | runs | epochs |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | " + " | ".join(series.stat_text(r[f"{k}_mean"], r[f"{k}_std"], r["runs"]) for k in (
        "val", "val_exact", "val_jpeg", "test")) + f" | {r['runs']} | {r['epochs']} |" for r in rows]
    return "\n".join(lines) + "\n"


def split_rows(run_dirs, full, quality=75):
    """For finished runs on the whole copy: each run's chosen model on its validation images, parted
    into those whose pixels are exact (the copy's first 4,000 training images) and the recompressed
    rest, and on the exact ones after a JPEG round trip too (the same images: a paired comparison)."""
    out = []
    for run_dir in map(Path, run_dirs):
        s = inference.read_finished_run(run_dir)["settings"]
        # the data and split it recorded, checked as a resume checks them
        loop.check_folder(s["model"], run_dir, full, **{k: v for k, v in s.items() if k != "model"})
        _, val_idx = data.stratified_split(full.y_train, s["val_split"], s["split_seed"])
        if not len(val_idx):
            raise TrainError(f"{run_dir} has no validation split")
        model = inference.inference_model(run_dir)
        exact_idx, jpeg_idx = val_idx[val_idx < EXACT_TRAIN_IMAGES], val_idx[val_idx >= EXACT_TRAIN_IMAGES]
        if not len(exact_idx):
            raise TrainError(f"{run_dir}: none of its validation images is one of the copy's exact ones")
        hits = lambda x, idx: model.predict(x, batch_size=500, verbose=0).argmax(1) == full.y_train[idx]  # noqa: E731
        exact = hits(full.x_train[exact_idx], exact_idx)
        exact_jpeg = hits(jpeg_round_trip(full.x_train[exact_idx], quality), exact_idx)
        rest = hits(full.x_train[jpeg_idx], jpeg_idx)
        out.append({"run": run_dir.name, "model": s["model"], "epochs": s["epochs"],
                    "exact_images": len(exact_idx), "exact": float(exact.mean()),
                    "exact_jpeg": float(exact_jpeg.mean()), "recompressed_images": len(jpeg_idx),
                    "recompressed": float(rest.mean()) if len(rest) else None, "val_all": float(np.concatenate([exact, rest]).mean()),
                    "right_exact_only": int((exact & ~exact_jpeg).sum()),
                    "right_jpeg_only": int((~exact & exact_jpeg).sum())})
    return out


def split_table(rows):
    def pct(p, n):  # with its binomial standard error
        return "—" if not n else f"{100 * p:.2f} ± {100 * np.sqrt(p * (1 - p) / n):.2f}"

    lines = ["| run | model | epochs | val acc %, all | exact images (n) | the same through JPEG q75 | changed: right "
             "only exact / only JPEG | recompressed images (n) |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['run']} | {r['model']} | {r['epochs']} | {100 * r['val_all']:.2f} | "
              f"{pct(r['exact'], r['exact_images'])} ({r['exact_images']}) | {pct(r['exact_jpeg'], r['exact_images'])} | "
              f"{r['right_exact_only']} / {r['right_jpeg_only']} | "
              f"{pct(r['recompressed'], r['recompressed_images'])} ({r['recompressed_images']}) |" for r in rows]
    return "\n".join(lines) + "\n"


def split_main(argv):
    p = argparse.ArgumentParser(prog="python -m results.jpeg_cost split",
                                description="finished runs on the whole copy: validation accuracy on its exact "
                                            "and its recompressed images")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--data-dir", help="the copy the runs were trained on (as train.py's --data-dir)")
    p.add_argument("--csv", help="also write the rows to this CSV file")
    a = p.parse_args(argv)
    if a.csv:
        holding = runfolder.input_holding(a.csv, a.run_dirs)
        problem = None
        if holding is not None:
            problem = f"--csv {a.csv} is in the run folder {holding}, whose files it could replace"
        elif Path(a.csv).is_dir():
            problem = f"--csv {a.csv} is a folder; give a file name"
        elif not Path(a.csv).parent.is_dir():
            problem = f"cannot write --csv {a.csv}: folder {Path(a.csv).parent} does not exist"
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
    try:
        rows = split_rows(a.run_dirs, data.load_cifar10(a.data_dir))
        if a.csv:
            series.write_csv(Path(a.csv), rows)
    except (TrainError, data.DataError, inference.InferenceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write --csv {a.csv}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(split_table(rows), end="")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["split"]:
        return split_main(argv[1:])
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
        variants = subsets(full, a.val_split, split_seed=0)
        results = {}
        for name, loaded in variants.items():
            results.update(series.run_grid(a.model, {name: {}}, a.seeds, a.out, kind="results.jpeg_cost", loaded=loaded,
                                           epochs=a.epochs, val_split=a.val_split))
        exact = variants["exact"]
        _, val_idx = data.stratified_split(exact.y_train, a.val_split, 0)
        summary = rows(results, exact.x_train[val_idx], exact.y_train[val_idx])
        series.write_report(a.out, summary, table(summary))
    except (TrainError, data.DataError, inference.InferenceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(summary), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
