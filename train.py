"""Train a CIFAR-10 model: `python train.py --model resnet20`.

The command line around the one training loop (`loop.train`, also `train.train` here): it parses
the flags (settings.py's schema, execution.py's options), trains one run or one per seed
(series.py), and turns every problem a user can fix into one error line and exit status 2.
What a run folder holds: runfolder.py.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import errors

if __name__ == "__main__":
    errors.quiet_ctrl_c_while_loading()

import data  # noqa: E402
import execution  # noqa: E402
import models  # noqa: E402
import series  # noqa: E402
from errors import TrainError  # noqa: E402
from loop import train  # noqa: E402
from runfolder import default_run_dir, write_atomic, write_json  # noqa: E402
from settings import SETTINGS, add_arguments, check_schedule_flags, check_seeds, given, resolve_settings  # noqa: E402


def _train_seeds(model, seeds, out, options, overrides):
    """One run per seed (resumable, as any run), then RUN_DIR/summary.{json,md}."""
    try:
        results = series.run_grid(model, {model: {}}, seeds, out, kind="train.py --seeds", **options, **overrides)
    except data.DataError as e:
        raise TrainError(str(e)) from None
    row = series.summary_rows(results)[0]
    runs = [{"run_dir": str(d), "seed": s, "val_accuracy": m["val_accuracy"], "test_accuracy": m["test_accuracy"],
             "test_accuracy_flip_tta": m.get("test_accuracy_flip_tta")} for s, (d, m) in zip(seeds, results[model])]
    write_json(out / "summary.json", {"model": model, "seeds": seeds, **row, "runs_detail": runs})
    chosen = "the model its validation split chose" if row["val_mean"] is not None else "the last epoch's model"
    text = (f"{model}, {row['runs']} runs (seeds {', '.join(map(str, seeds))}), {row['epochs']} epochs: "
            f"validation accuracy {series.stat_text(row['val_mean'], row['val_std'], row['runs'])} %, test accuracy "
            f"{series.stat_text(row['test_mean'], row['test_std'], row['runs'])} % (mean ± sample std; test measured once per run "
            f"on {chosen})\n")
    write_atomic(out / "summary.md", text)
    print(text, end="")


def build_parser():
    p = argparse.ArgumentParser(
        description="Train a CIFAR-10 model with its reference recipe; any flag overrides the recipe.")
    p.add_argument("--model", default="resnet20", help="registered model name (see --list-models)")
    p.add_argument("--list-models", action="store_true", help="print the registered model names and exit")
    p.add_argument("--describe", nargs="?", const="*", metavar="PATTERN",
                   help="print the table of models matching PATTERN (default all): trainable parameters, "
                        "mult-adds per image, paper, the paper's count; builds each model once")
    p.add_argument("--describe-recipe", action="store_true",
                   help="print the resolved settings and their sources as JSON, and exit")
    add_arguments(p, SETTINGS)
    p.add_argument("--seeds", type=int, nargs="+",
                   help="one run per seed, in RUN_DIR/runs/MODEL-seedS (RUN_DIR default runs/MODEL), and "
                        "RUN_DIR/summary.md with mean and std of the accuracies")
    execution.add_arguments(p)
    p.add_argument("--data-dir", help="the data set's archive, or a folder holding it or its batch folder "
                                      "(cifar-10-batches-py/, cifar-100-python/)")
    p.add_argument("--run-dir", help="run folder (default runs/MODEL-seedSEED); rerun to resume")
    return p


def main(argv=None, **hooks):
    """The command line `argv` (default sys.argv[1:]); returns the exit status. `hooks` (loop.train's
    `callbacks` and `on_epoch`) let a benchmark watch the runs the command trains."""
    args = build_parser().parse_args(argv)
    for flag in ("run_dir", "data_dir", "init_from"):
        if getattr(args, flag) is not None and not getattr(args, flag).strip():  # an unset shell variable, say
            print(f"error: --{flag.replace('_', '-')} is empty; give a path, or leave the flag out", file=sys.stderr)
            return 2
    if args.init_from is not None:  # compared on resume: the same file named from another folder is the same
        args.init_from = os.path.abspath(args.init_from)
    if args.list_models:
        print("\n".join(models.list_models()))
        return 0
    if args.describe is not None:  # '' too: an empty pattern matches nothing, and must not start a training
        from models import describe
        names = models.list_models(args.describe) if args.describe else []
        if not names:
            print(f"error: no model matches {args.describe!r}; see --list-models", file=sys.stderr)
            return 2
        print(describe.markdown_table(describe.describe(names)), end="")
        return 0
    overrides = given(args)
    try:
        settings, sources = resolve_settings(args.model, **overrides)
        check_schedule_flags(overrides, [settings["schedule"]])
        if args.describe_recipe:
            print(json.dumps({"settings": settings, "sources": sources}, indent=2))
            return 0
        options = dict(data_dir=args.data_dir, command=["train.py", *(sys.argv[1:] if argv is None else argv)],
                       **{k: getattr(args, k) for k in execution.OPTIONS}, **hooks)
        series_out = Path(args.run_dir or Path("runs") / args.model)  # with --seeds
        if args.init_from is not None:
            # The file is checked before a run folder is made (read with h5py: no TensorFlow op may run before
            # distribute.place sets up the devices); whether it fits the model, once the model is built. A resumed run reads its own
            # checkpoint instead, so the file may be gone by then.
            runs = ([series.run_dir(series_out, args.model, seed) for seed in args.seeds] if args.seeds else
                    [Path(args.run_dir or default_run_dir(settings))])
            if not all((run / "state.json").exists() for run in runs):
                try:
                    models.weights_layout(models.weights_file(args.init_from))
                except models.WeightsError as e:
                    raise TrainError(f"--init-from {args.init_from}: {e}") from None
        if args.seeds:
            if args.seed is not None:
                raise TrainError("give --seed or --seeds, not both")
            if os.environ.get("TF_CONFIG"):
                raise TrainError("--seeds with TF_CONFIG: a cluster trains one run at a time; run one --seed per "
                                 "command, the same on every worker")
            check_seeds(args.seeds)
            _train_seeds(args.model, args.seeds, series_out, options,
                         overrides)
        else:
            train(args.model, run_dir=args.run_dir, **options, **overrides)
    except TrainError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a write outside an epoch's commit (a summary, TensorBoard's log): nothing is lost
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}; the run folders keep their committed epochs: run the same "
              "command again to resume", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume after the last completed epoch",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    errors.ctrl_c_raises()
    sys.exit(main())
