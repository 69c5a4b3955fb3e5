"""Ours against ../shared/bench/torch_reference.py, alternating, in one sitting; a Markdown table.

    python bench/side_by_side.py --models lenet resnet20 --repeats 3 --torch-python /path/to/python

Each measurement is a fresh process (ours: bench/train_speed.py; the reference: its script, run
with a Python that has torch installed). Runs alternate ours / reference so that a noisy
neighbour hits both alike. Prints every JSON line, then the medians as a Markdown table.
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "bench" / "torch_reference.py"


def run(command):
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["lenet", "resnet20"])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--torch-python", help="a Python with torch installed (default: skip the reference)")
    p.add_argument("--reference", default=str(REFERENCE))
    p.add_argument("--ours-flags", default="", help="extra flags for bench/train_speed.py, e.g. '--jit'")
    a = p.parse_args(argv)
    if a.torch_python and not Path(a.reference).is_file():
        p.error(f"reference script not found: {a.reference}")
    rows = []
    for model in a.models:
        ours, theirs = [], []
        for _ in range(a.repeats):
            ours.append(run([sys.executable, "bench/train_speed.py", "--model", model, "--batch", str(a.batch),
                             "--steps", str(a.steps), *a.ours_flags.split()]))
            print(json.dumps(ours[-1]), flush=True)
            if a.torch_python:
                theirs.append(run([a.torch_python, a.reference, "--model", model, "--batch", str(a.batch),
                                   "--steps", str(a.steps)]))
                print(json.dumps(theirs[-1]), flush=True)
        mine = statistics.median(r["img_per_s"] for r in ours)
        ref = statistics.median(r["img_per_s"] for r in theirs) if theirs else None
        rows.append((model, a.batch, mine, ref))
    print("\n| model | batch | ours img/s | PyTorch img/s | ratio |\n|---|---|---|---|---|")
    for model, batch, mine, ref in rows:
        ratio = f"{mine / ref:.2f}" if ref else "-"
        print(f"| {model} | {batch} | {mine:,.0f} | {f'{ref:,.0f}' if ref else '-'} | {ratio} |")


if __name__ == "__main__":
    main()
