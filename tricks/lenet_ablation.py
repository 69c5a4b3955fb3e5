"""The LeNet tricks ablation: baseline, + preprocessing, + augmentation, + weight decay.

    python -m tricks.lenet_ablation --data-dir ../shared/data --out runs/tricks --epochs 200 --seeds 0 1 2

Each variant is its parent plus exactly one change (the table VARIANTS), passed as overrides to
the one training function through series.run_grid: every (variant, seed) is its own run folder
under OUT/runs, and an interrupted series resumes where it stopped. The series writes to OUT:
results.csv, results.md (variant, what it adds, val and test accuracy mean +- std over seeds, runs,
epochs, wall time), curves.png (validation accuracy per epoch, mean over seeds) and bars.png.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

import data
import series
from errors import SERIES_INTERRUPTED, TrainError

MODEL = "lenet"

# name: (parent, the one change it makes, what it adds). The reference (BIGBALLON/cifar-10-cnn,
# 1_Lecun_Network, 200 epochs, batch 128) reports 58.48, 60.41, 75.06 and 76.23 % test accuracy.
VARIANTS = {
    "base": (None, dict(preprocess="scale", augment="none", weight_decay=0.0),
             "baseline: pixels / 255, no augmentation, no weight decay"),
    "dp": ("base", dict(preprocess="standardize"), "+ data preprocessing (per-channel standardisation)"),
    "dp_da": ("dp", dict(augment="standard"), "+ data augmentation (random flip, 4-pixel shifts)"),
    "dp_da_wd": ("dp_da", dict(weight_decay=1e-4), "+ weight decay (coupled L2, 1e-4)"),
    # The reference's own augmentation and weight decay, where they differ from the four above: Keras 2's
    # ImageDataGenerator (continuous shifts, bilinear, the border filled with the mean colour: data.py's
    # "shift") and Keras' l2(1e-4), whose gradient 2e-4 * w is coupled weight decay 2e-4. Not run by default.
    "dp_da_shift": ("dp", dict(augment="shift"),
                    "+ data augmentation as the reference's ImageDataGenerator (flip, continuous shifts, mean-colour border)"),
    "dp_da_shift_wd": ("dp_da_shift", dict(weight_decay=2e-4), "+ weight decay as the reference's l2(1e-4) (coupled, 2e-4)"),
}
DEFAULT_VARIANTS = ("base", "dp", "dp_da", "dp_da_wd")
REFERENCE = {"base": 58.48, "dp": 60.41, "dp_da": 75.06, "dp_da_wd": 76.23, "dp_da_shift": 75.06,
             "dp_da_shift_wd": 76.23}


def variant_overrides(name):
    """The settings a variant overrides, its ancestors' changes included."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    parent, change, _ = VARIANTS[name]
    return {**(variant_overrides(parent) if parent else {}), **change}


def summarise(results):
    """The series' summary rows, with what each variant adds and the reference's figure."""
    rows = series.summary_rows(results)
    for row in rows:
        row["adds"] = VARIANTS[row["variant"]][2]
        row["reference_test"] = REFERENCE.get(row["variant"])
    return rows


def write_reports(rows, results, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    lines = ["| variant | adds | val acc % (mean ± std) | test acc % (mean ± std) | runs | epochs | wall min, all runs | reference test % (200 epochs, 1 run) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = "" if r["reference_test"] is None else f"{r['reference_test']:.2f}"
        lines.append(f"| {r['variant']} | {r['adds']} | {series.stat_text(r['val_mean'], r['val_std'], r['runs'])} | "
                     f"{series.stat_text(r['test_mean'], r['test_std'], r['runs'])} | {r['runs']} | {r['epochs']} | "
                     f"{r['wall_minutes']} | {ref} |")
    series.write_report(out, rows, "\n".join(lines) + "\n")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, runs in results.items():
        curve = series.mean_curve(runs, "val_accuracy")
        if curve is not None:  # None without a validation split
            ax.plot(np.arange(1, len(curve) + 1), curve * 100, label=name)
    ax.set(xlabel="epoch", ylabel="validation accuracy (%)", title="LeNet on CIFAR-10: validation accuracy")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no validation split", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    series.save_figure(fig, out / "curves.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = np.arange(len(rows))
    ax.bar(x, [r["test_mean"] for r in rows], yerr=[r["test_std"] for r in rows], capsize=4, label="ours")
    refs = [r["reference_test"] for r in rows]
    if any(v is not None for v in refs):
        ax.scatter(x, [np.nan if v is None else v for v in refs], color="black", marker="_", s=400,
                   label="reference (200 epochs)", zorder=3)
    ax.set_xticks(x, [r["variant"] for r in rows])
    runs = rows[0]["runs"]
    ax.set(ylabel="test accuracy (%)", title=f"LeNet tricks: test accuracy, mean ± std of {runs} run(s)")
    lows = [r["test_mean"] - r["test_std"] for r in rows] + [v for v in refs if v is not None]
    ax.set_ylim(max(0, min(lows) - 10), 100)
    ax.legend(loc="upper left")
    fig.tight_layout()
    series.save_figure(fig, out / "bars.png")
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir")
    p.add_argument("--out", required=True, help="folder for the runs, tables and charts")
    p.add_argument("--epochs", type=int, default=200, help="epochs per run (milestones scale with it)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=list(VARIANTS),
                   help=f"default: {' '.join(DEFAULT_VARIANTS)}")
    p.add_argument("--val-split", type=int, help="validation images (default: the recipe's 5,000)")
    p.add_argument("--batch-size", type=int, help="default: the recipe's 128")
    a = p.parse_args(argv)
    common = {k: v for k, v in dict(val_split=a.val_split, batch_size=a.batch_size).items() if v is not None}
    try:
        variants = {name: variant_overrides(name) for name in a.variants}
        results = series.run_grid(MODEL, variants, a.seeds, a.out, kind="tricks ablation", data_dir=a.data_dir,
                                   epochs=a.epochs, **common)
        rows = summarise(results)
        write_reports(rows, results, a.out)
    except (TrainError, data.DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{SERIES_INTERRUPTED}", file=sys.stderr)
        return 130
    print((Path(a.out) / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
