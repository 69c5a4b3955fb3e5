"""Command line for the schedules: print or plot the lr of each epoch, or compare them in training.

    python -m htd show --schedule htd --epochs 200 --lr 0.1 [--htd-bounds L U] [--per epoch]
    python -m htd plot --schedules step cosine htd --epochs 200 --lr 0.1 --out lr.png [--log]
    python -m htd compare --model resnet50 --schedules step cos htd --seeds 0 1 2 --epochs 200 \
        --data-dir ../shared/data --out runs/htd

`compare` trains the model once per (schedule, seed) through loop.train() (each its own run
folder under OUT/runs, so an interrupted comparison resumes), then writes OUT/results.csv,
OUT/results.md (test accuracy median and mean +- std, validation accuracy, runs) and
OUT/curves.png (the learning rate each run used and its validation accuracy, per epoch).

`show` prints CSV with the header `epoch,lr` and one row per epoch, epochs counted from 0 (row e is
the lr at the first step of epoch e, so a milestone at 100 shows first in row 100). The lr is
printed as the shortest decimal that round-trips the float32 value the optimizer uses.
Bad input gives a one-line error on stderr and exit status 2.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

import data
import runfolder
import series
import settings
from errors import SERIES_INTERRUPTED, TrainError
from htd.schedules import SCHEDULES, evaluate, lr_per_epoch, make_schedule

PROG = "python -m htd"
ALIASES = {"cos": "cosine"}
CIFAR10_STEPS_PER_EPOCH = 391  # 50,000 training images at batch 128, last batch partial


def _add_run_arguments(parser):
    parser.add_argument("--epochs", type=int, required=True, help="length of training")
    parser.add_argument("--lr", type=float, required=True, help="base (peak) learning rate")
    parser.add_argument("--steps-per-epoch", type=int, default=CIFAR10_STEPS_PER_EPOCH,
                        help=f"optimizer steps per epoch (default {CIFAR10_STEPS_PER_EPOCH}: "
                             "CIFAR-10 at batch 128)")


def _add_schedule_arguments(parser, name=False):
    """The schedule settings' flags (settings.py), --schedule among them where one schedule is meant."""
    settings.add_arguments(parser, ("schedule",) * name + settings.SCHEDULE_SETTINGS,
                           aliases={"schedule_per": ("--per",)})


def build_parser():
    parser = argparse.ArgumentParser(prog=PROG, description="Learning-rate schedules.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    show = commands.add_parser("show", help="print the lr of each epoch as CSV (epoch,lr)",
                               description="Print the lr at the start of each epoch as CSV.")
    _add_run_arguments(show)
    _add_schedule_arguments(show, name=True)
    show.set_defaults(run=_show)

    plot = commands.add_parser("plot", help="draw several schedules on one chart (PNG)",
                               description="Draw several schedules on one chart.")
    plot.add_argument("--schedules", nargs="+", choices=SCHEDULES, required=True, metavar="NAME",
                      help=f"schedules to draw, from: {', '.join(SCHEDULES)}")
    _add_run_arguments(plot)
    plot.add_argument("--out", required=True, help="PNG file to write")
    plot.add_argument("--log", action="store_true", help="logarithmic lr axis")
    _add_schedule_arguments(plot)
    plot.set_defaults(run=_plot)

    compare = commands.add_parser("compare", help="train a model under several schedules and compare",
                                  description="Train a model under each schedule and seed; compare.")
    compare.add_argument("--model", default="resnet50", help="registered model (default resnet50: 6n+2, n=8)")
    compare.add_argument("--schedules", nargs="+", default=["step", "cosine", "htd"], metavar="NAME",
                         choices=(*SCHEDULES, *ALIASES), help="schedules to compare (default: step cosine htd)")
    compare.add_argument("--seeds", type=int, nargs="+", default=[0])
    compare.add_argument("--epochs", type=int, help="epochs per run (default: the model's recipe)")
    compare.add_argument("--lr", type=float, help="base lr (default: the model's recipe)")
    compare.add_argument("--batch-size", type=int, help="default: the model's recipe")
    compare.add_argument("--val-split", type=int, help="validation images (default 5,000)")
    compare.add_argument("--data-dir")
    compare.add_argument("--out", required=True, help="folder for the runs, tables and charts")
    settings.add_arguments(compare, settings.SCHEDULE_SETTINGS)
    compare.set_defaults(run=_compare)
    return parser


def _check_flags(args, names):
    """ValueError for a schedule flag that none of `names` reads (it would change nothing)."""
    try:
        settings.check_schedule_flags([k for k in settings.SCHEDULE_SETTINGS if getattr(args, k) is not None],
                                      [ALIASES.get(n, n) for n in names])
    except TrainError as e:
        raise ValueError(str(e)) from None


def _schedule(name, args):
    return make_schedule(name, base_lr=args.lr, epochs=args.epochs,
                         steps_per_epoch=args.steps_per_epoch, **settings.schedule_kwargs(vars(args)))


def _show(args, out):
    if args.schedule is None:
        raise ValueError("the following arguments are required: --schedule")
    _check_flags(args, [args.schedule])
    schedule = _schedule(args.schedule, args)
    out.write("epoch,lr\n")
    for epoch, lr in enumerate(lr_per_epoch(schedule, args.epochs, args.steps_per_epoch)):
        out.write(f"{epoch},{str(np.float32(lr))}\n")


def _plot(args, out):
    _check_flags(args, args.schedules)
    schedules = {name: _schedule(name, args) for name in dict.fromkeys(args.schedules)}
    path = Path(args.out)
    if path.is_dir():
        raise ValueError(f"--out {path} is a folder; give the chart's file name (e.g. {path / 'lr.png'})")
    if not path.parent.is_dir():
        raise ValueError(f"--out {path}: the folder {path.parent} does not exist")
    if not path.suffix:
        path = path.with_name(path.name + ".png")  # what matplotlib would write; said so below
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    per_epoch = args.schedule_per == "epoch"
    # Per-step schedules are sampled often enough to show warm-up and in-epoch changes.
    total = args.epochs * args.steps_per_epoch
    steps = (np.arange(args.epochs) * args.steps_per_epoch if per_epoch
             else np.unique(np.linspace(0, total - 1, min(total, 2000)).astype(np.int64)))
    for name, schedule in schedules.items():
        label = name
        if name == "htd":
            label += " (L={:g}, U={:g})".format(*schedule.bounds)
        x, lr = steps / args.steps_per_epoch, evaluate(schedule, steps)
        if per_epoch:  # draw the last epoch to its end too
            x, lr = np.append(x, args.epochs), np.append(lr, lr[-1])
        ax.plot(x, lr, label=label, drawstyle="steps-post" if per_epoch else "default")
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_yscale("log" if args.log else "linear")
    ax.set_title(f"{args.epochs} epochs, base lr {args.lr:g}, lr changed every "
                 f"{'epoch' if per_epoch else 'step'}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    runfolder.save_figure(fig, path)
    out.write(f"wrote {path}\n")


def _compare(args, out):
    names = list(dict.fromkeys(ALIASES.get(n, n) for n in args.schedules))
    _check_flags(args, names)
    common = {k: getattr(args, k) for k in ("epochs", "lr", "batch_size", "val_split", *settings.SCHEDULE_SETTINGS)}
    common = {k: v for k, v in common.items() if v is not None}
    # A flag read by some of the schedules only (--lr-milestones: step) is given to those alone.
    only = {k: common.pop(k) for k in list(common) if k in settings.BY_NAME and settings.BY_NAME[k].schedules}
    variants = {n: {"schedule": n, **{k: v for k, v in only.items() if n in settings.BY_NAME[k].schedules}}
                for n in names}
    try:  # run_grid makes OUT once every setting has been checked
        results = series.run_grid(args.model, variants, args.seeds, args.out, kind="htd compare",
                                  data_dir=args.data_dir, **common)
    except (TrainError, data.DataError) as e:
        raise ValueError(str(e)) from None
    rows = series.summary_rows(results)
    lines = ["| schedule | test acc % median | test acc % mean ± std | val acc % mean ± std | runs | epochs | wall min, all runs |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['test_median']:.2f} | {series.stat_text(r['test_mean'], r['test_std'], r['runs'])} | "
              f"{series.stat_text(r['val_mean'], r['val_std'], r['runs'])} | {r['runs']} | {r['epochs']} | {r['wall_minutes']} |"
              for r in rows]
    try:
        series.write_report(args.out, rows, "\n".join(lines) + "\n")
        _plot_comparison(results, args.model, Path(args.out) / "curves.png")
    except TrainError as e:
        raise ValueError(str(e)) from None
    out.write("\n".join(lines) + "\n")


def _plot_comparison(results, model, path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    lr_ax, acc_ax = fig.subplots(1, 2)
    for name, runs in results.items():
        lr = series.mean_curve(runs, "lr")
        acc = series.mean_curve(runs, "val_accuracy")
        lr_ax.plot(np.arange(1, len(lr) + 1), lr, label=name)
        if acc is not None:  # None without a validation split
            acc_ax.plot(np.arange(1, len(acc) + 1), acc * 100, label=f"{name} ({len(runs)} run(s))")
    lr_ax.set(xlabel="epoch", ylabel="learning rate at the start of the epoch", title="learning rate")
    acc_ax.set(xlabel="epoch", ylabel="validation accuracy (%)", title=f"{model}: validation accuracy, mean of runs")
    if not acc_ax.lines:
        acc_ax.text(0.5, 0.5, "no validation split", ha="center", va="center", transform=acc_ax.transAxes)
    for ax in (lr_ax, acc_ax):
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend()
    series.save_figure(fig, path)


def main(argv=None):
    """Runs the command line `argv` (default sys.argv[1:]); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse has printed usage and the error (or the help)
        return exit_.code
    try:
        args.run(args, sys.stdout)
    except (ValueError, OSError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"{PROG} {args.command}: error: {message}", file=sys.stderr)
        return 2 if isinstance(error, ValueError) else 1
    except KeyboardInterrupt:  # compare trains, and each run resumes from its folder; a chart is saved whole or not at all
        print(f"\n{SERIES_INTERRUPTED if args.command == 'compare' else 'interrupted'}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
