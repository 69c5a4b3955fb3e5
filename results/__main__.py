"""`python -m results build ...` and `python -m results throughput ...` (see results/__init__.py).

Every input is read and checked before anything is written, and files before TensorFlow is loaded,
so a bad path, a garbled file or a run counted twice costs one `error: ...` line (exit code 2), not
a half-updated OUT.
"""

import argparse
import sys
from pathlib import Path

import runlock
from errors import INTERRUPTED, SERIES_INTERRUPTED, SERIES_OWNER_FILE
from results import runs, throughput
from results.runs import ResultsError


def build_parser():
    p = argparse.ArgumentParser(prog="python -m results", description="The accuracy table from finished run folders.")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="copy finished runs into OUT/runs and regenerate the table and charts")
    b.add_argument("run_dirs", nargs="*", metavar="RUN_DIR",
                   help="run folders, or folders holding them (a series' OUT/runs); none: regenerate from OUT")
    b.add_argument("--out", default="results", help="the table's folder (default results)")
    b.add_argument("--all-models", action=argparse.BooleanOptionalAction, default=True,
                   help="a 'not yet run' row, with its estimated training time, for every registered model "
                        "without a finished run (default; --no-all-models: runs only)")
    b.add_argument("--forget", nargs="+", default=[], metavar="RUN",
                   help="drop these unfinished runs (name or run id, as partial.csv has them) from the list of "
                        "unfinished runs: their folders are lost or abandoned and will not be resumed")
    z = sub.add_parser("zoo", help="train every model matching PATTERN with its recipe over SEEDS (resumable), "
                                    "then build the table from those runs")
    z.add_argument("--models", nargs="+", default=["*"], metavar="PATTERN", help="registry patterns (default: all)")
    z.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    z.add_argument("--runs-dir", default="runs/zoo", help="where the run folders go (default runs/zoo): rerun to resume")
    z.add_argument("--out", default="results", help="the table's folder (default results)")
    z.add_argument("--data-dir", help="as train.py's")
    z.add_argument("--epochs", type=int, help="override every recipe's length (a quick check; not the recipe)")
    z.add_argument("--val-split", type=int, help="override the validation split (a quick check)")
    z.add_argument("--batch-size", type=int, help="override the recipes' batch (a quick check)")
    t = sub.add_parser("throughput", help="measure models' training throughput into a throughput.csv")
    t.add_argument("--models", nargs="+", required=True, metavar="NAME")
    t.add_argument("--out", default="results/throughput.csv")
    t.add_argument("--batch", type=int, help="default: each model's recipe batch")
    t.add_argument("--steps", type=int, default=100, help="timed steps (rounded up to whole executions)")
    t.add_argument("--warmup", type=int, default=5, help="steps before those, not timed")
    t.add_argument("--in-list", action="store_true", help=argparse.SUPPRESS)  # one model of a list's (throughput.run)
    return p


def check_out(out):
    """OUT's own files, read and checked (zoo does it before its training); its throughput rows."""
    if out.exists() and not out.is_dir():
        raise ResultsError(f"--out {out} is not a folder")
    held = next((n for n in (SERIES_OWNER_FILE, "results.csv", "results.md") if (out / n).exists()), None)
    if held:  # a series' OUT: its runs/ are run folders, not copies, and its reports would be overwritten
        raise ResultsError(f"--out {out} holds a series ({held}); give its runs as RUN_DIR and build the table into "
                           "a folder of its own (default results/)")
    measured = throughput.read(out / "throughput.csv")
    runs.load_copied(out)  # a garbled OUT/runs is refused before anything is added to it
    runs.read_partial(out / "partial.csv")
    return measured


def build(args):
    out = Path(args.out)
    measured = check_out(out)
    given = runs.load_given(args.run_dirs)
    forget_ids = runs.check_forget(args.forget, runs.read_partial(out / "partial.csv"), given)
    out.mkdir(parents=True, exist_ok=True)
    try:
        with runlock.hold(out, "--out folder"):  # one process at a time rewrites the table
            return _build_owned(args, out, given, measured, forget_ids)
    except runlock.Busy as e:
        raise ResultsError(str(e)) from None


def _build_owned(args, out, given, measured, forget_ids):
    from results import charts, report, table  # TensorFlow and matplotlib load here, after the file checks

    after = {r.run_id: r for r in runs.load_copied(out)} | {r.run_id: r for r in given if r.finished}
    table.check_one_run_per_seed(after.values())  # the last check: nothing is written before it
    copied, partial = runs.update_out(given, out, forget_ids)

    finished = runs.load_copied(out)
    rows = table.table_rows(finished, measured, all_models=args.all_models)
    groups = table.group_runs(finished)
    if groups:
        charts.accuracy_vs_time(groups, out / "accuracy_vs_time.png")
        charts.curves(groups, out / "curves.png")
    report.write(out, rows, runs.read_partial(out / "partial.csv"), charts=bool(groups))
    # The repository's README, when OUT is its results/ (a folder of that name beside a README); never the
    # README beside another OUT, such as a scratch table built from the repository's root
    readme = out.resolve().parent / "README.md"
    if out.resolve().name == "results" and readme.is_file() and report.update_readme(readme, rows, "results/README.md"):
        print(f"updated the results block of {readme}")
    if copied:
        print(f"copied {len(copied)} finished run(s) into {out / 'runs'}: {', '.join(copied)}")
    for name in args.forget:
        print(f"forgot the unfinished run {name}")
    for p in partial:
        print(f"unfinished, not in the table: {p['name']} (epoch {p['epochs_completed']} of {p['epochs']})")
    waiting = sum(r["status"] == "not yet run" for r in rows)
    print(f"wrote {out / 'table.csv'} and {out / 'README.md'}: {len(rows) - waiting} row(s) from {len(finished)} "
          f"finished run(s), {waiting} not yet run" + (", and the charts" if groups else ""))
    return 0


def measure_throughput(args):
    import models

    for name in args.models:
        try:
            models.get_entry(name)
        except ValueError as e:
            raise ResultsError(str(e)) from None
    if args.steps < 2 or args.warmup < 1 or (args.batch is not None and args.batch < 1):
        raise ResultsError("--steps must be >= 2, --warmup and --batch >= 1")
    if Path(args.out).is_dir():
        raise ResultsError(f"--out {args.out} is a folder; give the CSV file's name (default results/throughput.csv)")
    throughput.run(args.models, args.out, batch=args.batch, steps=args.steps, warmup=args.warmup)
    return 0


def zoo(args):
    """Every (model, seed) trained by loop.train into RUNS_DIR/MODEL-seedS, in registry order;
    finished runs are read back, an interrupted one resumes. Then `build` from RUNS_DIR."""
    import data
    import loop
    import models
    import settings
    from errors import TrainError

    names = list(dict.fromkeys(n for pattern in args.models for n in models.list_models(pattern)))
    if not names:
        raise ResultsError(f"no model matches {' '.join(args.models)}; see python train.py --list-models")
    overrides = {k: v for k, v in dict(epochs=args.epochs, val_split=args.val_split,
                                       batch_size=args.batch_size).items() if v is not None}
    runs_dir = Path(args.runs_dir)
    copies = Path(args.out) / "runs"
    if runs_dir.resolve() == copies.resolve() or copies.resolve() in runs_dir.resolve().parents:
        raise ResultsError(f"--runs-dir {runs_dir} is where build keeps its copies of finished runs ({copies}); "
                           "train into another folder")
    check_out(Path(args.out))  # before hours of training, not after
    try:
        settings.check_seeds(args.seeds)
        for name in names:  # every recipe checked before hours of training
            settings.resolve_settings(name, **overrides)
        loaded = data.load_cifar10(args.data_dir)
        for name in names:  # every run folder too: a refusal comes before the first training, not after
            for seed in args.seeds:
                loop.check_folder(name, runs_dir / f"{name}-seed{seed}", loaded, seed=seed, **overrides)
        for name in names:
            for seed in args.seeds:
                print(f"== {name}, seed {seed}", flush=True)
                command = ["train.py", "--model", name, "--seed", str(seed), "--run-dir", str(runs_dir / f"{name}-seed{seed}"),
                           *(f for k, v in overrides.items() for f in (f"--{k.replace('_', '-')}", str(v))),
                           *(["--data-dir", args.data_dir] if args.data_dir else [])]
                loop.train(name, run_dir=runs_dir / f"{name}-seed{seed}", loaded=loaded, seed=seed,
                           command=command, **overrides)
    except (TrainError, data.DataError) as e:
        raise ResultsError(str(e)) from None
    return build(argparse.Namespace(run_dirs=[str(runs_dir)], out=args.out, all_models=True, forget=[]))


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        commands = {"build": build, "zoo": zoo, "throughput": measure_throughput}
        return commands[args.command](args)
    except ResultsError as e:
        print(f"error: {e}", file=sys.stderr)
    except OSError as e:
        print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
    except KeyboardInterrupt:
        if args.command == "throughput" and args.in_list:  # the list's process says it (errors.run_child)
            return INTERRUPTED
        print(f"\n{interrupted(args)}", file=sys.stderr)
        return INTERRUPTED
    return 2


def interrupted(args):
    """The line a command prints on Ctrl-C: what it kept and how to go on."""
    if args.command == "zoo":  # each run resumes from its folder
        return SERIES_INTERRUPTED
    if args.command == "throughput":
        return (f"interrupted; {args.out} keeps the rows written before (each model's row is written when it "
                "is measured): run the command again with the models not yet measured")
    return f"interrupted; {args.out} keeps whole files: run the same command again to finish the build"


if __name__ == "__main__":
    sys.exit(main())
