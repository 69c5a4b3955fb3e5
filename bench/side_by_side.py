"""Ours against ../shared/bench/torch_reference.py, alternating, in one sitting; a Markdown table.

    python -m bench.side_by_side --models lenet resnet20 --repeats 3 --torch-python /path/to/python
        [--variant="" --variant=--keras-batch-norm] [--reference-flags="--channels-last --bf16"]

Each measurement is a fresh process: ours is bench/train_speed.py, once per --variant (extra flags
for it, and NAME=VALUE settings for its environment; by default one variant, train.py's default
path); the reference is its script, run with
a Python that has torch installed, with --reference-flags added (its --channels-last, --bf16, ...). Runs alternate ours / reference so that a noisy neighbour hits
both alike. "Peak memory" is the peak resident set size of the measuring process (all of it:
interpreter, framework, model, optimizer state, data). Before each model, bench/flops.py gives its
training FLOPs per image and the FP32 matrix-multiply rate of the moment; "% of peak" is ours
against that rate. Prints every JSON line, then the medians as a Markdown table.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "bench" / "torch_reference.py"


def run(command, env=None):
    """Runs `command` (with `env` added to the environment); its last stdout line as JSON, with the
    process' peak RSS in MiB added."""
    with tempfile.TemporaryFile("w+") as err:  # a file, not a pipe: a chatty stderr cannot block the child
        proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True,
                                env={**os.environ, **(env or {})})
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)  # wait4, not proc.wait(): it also gives the child's rusage
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        tail = err.read().strip().splitlines()[-1:] or ["no message"]
    if proc.returncode != 0:
        raise SystemExit(f"exit status {proc.returncode} from {' '.join(command)}: {tail[0]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mib"] = round(usage.ru_maxrss / 1024)  # KiB on Linux
    return result


def split_variant(variant):
    """'--keras-batch-norm TF_ENABLE_ONEDNN_OPTS=0' -> (['--keras-batch-norm'], {'TF_ENABLE_ONEDNN_OPTS': '0'})."""
    flags, env = [], {}
    for token in variant.split():
        name, sep, value = token.partition("=")
        if sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", name):
            env[name] = value
        else:
            flags.append(token)
    return flags, env


def median(results, key):
    return statistics.median(r[key] for r in results) if results else None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["lenet", "resnet20"])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--torch-python", help="a Python with torch installed (default: skip the reference)")
    p.add_argument("--reference", default=str(REFERENCE))
    p.add_argument("--reference-flags", default="", metavar="FLAGS",
                   help="flags for the reference script, written --reference-flags=\"--channels-last --bf16\"")
    p.add_argument("--variant", action="append", dest="variants", metavar="FLAGS",
                   help="flags for bench/train_speed.py and NAME=VALUE environment settings, written "
                        "--variant=--keras-batch-norm or --variant=TF_ENABLE_ONEDNN_OPTS=0; repeat to compare "
                        "several (default: one variant, no flags)")
    a = p.parse_args(argv)
    if a.torch_python and not Path(a.reference).is_file():
        p.error(f"reference script not found: {a.reference}")
    variants = a.variants or [""]
    rows = []
    for model in a.models:
        cost = run([sys.executable, "-m", "bench.flops", "--model", model])
        print(json.dumps(cost), flush=True)
        ours, theirs = {v: [] for v in variants}, []
        for _ in range(a.repeats):
            for v in variants:
                flags, env = split_variant(v)
                ours[v].append(run([sys.executable, "-m", "bench.train_speed", "--model", model,
                                    "--batch", str(a.batch), "--steps", str(a.steps), *flags], env))
                print(json.dumps({"variant": v, **ours[v][-1]}), flush=True)
            if a.torch_python:
                theirs.append(run([a.torch_python, a.reference, "--model", model, "--batch", str(a.batch),
                                   "--steps", str(a.steps), *a.reference_flags.split()]))
                print(json.dumps(theirs[-1]), flush=True)
        ref, ref_mem = median(theirs, "img_per_s"), median(theirs, "peak_rss_mib")
        for v in variants:
            mine = median(ours[v], "img_per_s")
            share = mine * cost["train_gflop_per_image"] / cost["gemm_gflop_per_s_median"]
            rows.append((model, v, mine, ref, share, median(ours[v], "peak_rss_mib"), ref_mem))

    print(f"\nPyTorch reference flags: {a.reference_flags or 'none'}")
    print("\n| model | batch | ours (flags) | ours img/s | PyTorch img/s | ratio | ours % of peak "
          "| ours peak MiB | PyTorch peak MiB |\n|---|---|---|---|---|---|---|---|---|")
    for model, v, mine, ref, share, mem, ref_mem in rows:
        print(f"| {model} | {a.batch} | {v or 'default'} | {mine:,.1f} | {f'{ref:,.1f}' if ref else '-'} "
              f"| {f'{mine / ref:.2f}' if ref else '-'} | {100 * share:.0f} | {mem:,} "
              f"| {f'{ref_mem:,}' if ref_mem else '-'} |")


if __name__ == "__main__":
    main()
