"""Command line for the schedules: print or plot the lr of each epoch.

    python -m htd show --schedule htd --epochs 200 --lr 0.1 [--htd-bounds L U] [--per epoch]
    python -m htd plot --schedules step cosine htd --epochs 200 --lr 0.1 --out lr.png [--log]

`show` prints CSV with the header `epoch,lr` and one row per epoch, epochs counted from 0 (row e is
the lr at the first step of epoch e, so a milestone at 100 shows first in row 100). The lr is
printed as the shortest decimal that round-trips the float32 value the optimizer uses.
Bad input gives a one-line error on stderr and exit status 2.
"""

import argparse
import sys

import numpy as np

from htd.schedules import SCHEDULES, add_schedule_arguments, evaluate, lr_per_epoch, make_schedule, \
    schedule_kwargs

PROG = "python -m htd"
CIFAR10_STEPS_PER_EPOCH = 391  # 50,000 training images at batch 128, last batch partial


def _add_run_arguments(parser):
    parser.add_argument("--epochs", type=int, required=True, help="length of training")
    parser.add_argument("--lr", type=float, required=True, help="base (peak) learning rate")
    parser.add_argument("--steps-per-epoch", type=int, default=CIFAR10_STEPS_PER_EPOCH,
                        help=f"optimizer steps per epoch (default {CIFAR10_STEPS_PER_EPOCH}: "
                             "CIFAR-10 at batch 128)")


def build_parser():
    parser = argparse.ArgumentParser(prog=PROG, description="Learning-rate schedules.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    show = commands.add_parser("show", help="print the lr of each epoch as CSV (epoch,lr)",
                               description="Print the lr at the start of each epoch as CSV.")
    _add_run_arguments(show)
    add_schedule_arguments(show, per_alias=True)
    show.set_defaults(run=_show)

    plot = commands.add_parser("plot", help="draw several schedules on one chart (PNG)",
                               description="Draw several schedules on one chart.")
    plot.add_argument("--schedules", nargs="+", choices=SCHEDULES, required=True, metavar="NAME",
                      help=f"schedules to draw, from: {', '.join(SCHEDULES)}")
    _add_run_arguments(plot)
    plot.add_argument("--out", required=True, help="PNG file to write")
    plot.add_argument("--log", action="store_true", help="logarithmic lr axis")
    add_schedule_arguments(plot, name=False, per_alias=True)
    plot.set_defaults(run=_plot)
    return parser


def _schedule(name, args):
    return make_schedule(name, base_lr=args.lr, epochs=args.epochs,
                         steps_per_epoch=args.steps_per_epoch, **schedule_kwargs(args))


def _show(args, out):
    if args.schedule is None:
        raise ValueError("the following arguments are required: --schedule")
    schedule = _schedule(args.schedule, args)
    out.write("epoch,lr\n")
    for epoch, lr in enumerate(lr_per_epoch(schedule, args.epochs, args.steps_per_epoch)):
        out.write(f"{epoch},{str(np.float32(lr))}\n")


def _plot(args, out):
    schedules = {name: _schedule(name, args) for name in dict.fromkeys(args.schedules)}
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
    fig.savefig(args.out, dpi=120)
    out.write(f"wrote {args.out}\n")


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
    return 0


if __name__ == "__main__":
    sys.exit(main())
