"""`python -m results build ...` and `python -m results throughput ...` (see results/__init__.py).

Every input is read and checked before anything is written or TensorFlow is loaded, so a bad path
or a garbled file costs one `error: ...` line (exit code 2), not a half-updated OUT.
"""

import argparse
import sys
from pathlib import Path

import runlock
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
    t = sub.add_parser("throughput", help="measure models' training throughput into a throughput.csv")
    t.add_argument("--models", nargs="+", required=True, metavar="NAME")
    t.add_argument("--out", default="results/throughput.csv")
    t.add_argument("--batch", type=int, help="default: each model's recipe batch")
    t.add_argument("--steps", type=int, default=100, help="timed steps (rounded up to whole executions)")
    t.add_argument("--warmup", type=int, default=5, help="steps before those, not timed")
    return p


def build(args):
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ResultsError(f"--out {out} is not a folder")
    given = runs.load_given(args.run_dirs)
    measured = throughput.read(out / "throughput.csv")
    runs.load_copied(out)  # a garbled OUT/runs is refused before anything is added to it
    out.mkdir(parents=True, exist_ok=True)
    try:
        with runlock.hold(out, "--out folder"):  # one process at a time rewrites the table
            return _build_owned(args, out, given, measured)
    except runlock.Busy as e:
        raise ResultsError(str(e)) from None


def _build_owned(args, out, given, measured):
    copied, partial = runs.update_out(given, out)

    from results import charts, report, table  # TensorFlow and matplotlib load here, after the checks

    finished = runs.load_copied(out)
    rows = table.table_rows(finished, measured, all_models=args.all_models)
    groups = table.group_runs(finished)
    if groups:
        charts.accuracy_vs_time(groups, out / "accuracy_vs_time.png")
        charts.curves(groups, out / "curves.png")
    report.write(out, rows, runs.read_partial(out / "partial.csv"), charts=bool(groups))
    if copied:
        print(f"copied {len(copied)} finished run(s) into {out / 'runs'}: {', '.join(copied)}")
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
    throughput.run(args.models, args.out, batch=args.batch, steps=args.steps, warmup=args.warmup)
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return build(args) if args.command == "build" else measure_throughput(args)
    except ResultsError as e:
        print(f"error: {e}", file=sys.stderr)
    except OSError as e:
        print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
