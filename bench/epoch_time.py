"""Seconds per epoch of a real training run: train.py on the real data, as a user runs it.

    python -m bench.epoch_time --data-dir ../shared/data [--model lenet] [--epochs 4] [--repeats 3]
        [--variant="" --variant="--steps-per-execution 1" --variant=OTHER_CHECKOUT/train.py]

Each run is a fresh `train.py --model M --epochs E --data-dir D --run-dir TMP` process, with a
variant's flags and NAME=VALUE environment settings (as in bench/side_by_side.py); runs alternate
between variants so that a noisy neighbour hits all of them alike. Two figures per epoch:

- fit: `epoch_seconds` from the run's history.csv, Keras' epoch (training and validation pass);
- wall: the time between one epoch's progress line on train.py's stdout and the next one's, so
  everything train.py does per epoch (the epoch's pipeline, `fit`'s own setup and teardown, the
  checkpoint) is in it.

The table gives, per variant, the medians, the mean wall time, how many epochs took at most
--goal seconds, and the stalls: epochs whose wall time exceeds their fit time by more than 2 s;
then, as medians over the runs, the time from starting the process to the end of the first epoch
(everything a run does once: importing, loading, building, tracing) and the process's peak
resident memory.

The first epoch traces the training step and is left out: epochs 2..E of every run are pooled
and their median printed, with the final validation accuracy of each run (same seed, so equal
across variants unless a variant changes the results). A variant token ending in `.py` is the
train.py to run instead of this checkout's: another checkout's, to compare a change with what
came before it in one sitting. Without the real data the benchmark prints why and skips (exit
status 0).
"""

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import data  # (no TensorFlow at import)
from bench.side_by_side import split_variant

ROOT = Path(__file__).resolve().parents[1]

EPOCH_END = re.compile(r"^\d+/\d+ - ")  # Keras' one-line-per-epoch progress (verbose=2: stdout not a terminal)


def epoch_walls(stamps):
    """Times of the epoch-end lines -> seconds between consecutive ones (one fewer than the stamps)."""
    return [b - a for a, b in zip(stamps, stamps[1:])]


def summarise(runs, goal):
    """Pooled epochs of several runs -> medians, the wall mean, epochs within `goal` s, and stalls.

    A stall is an epoch whose wall time exceeds its fit time by more than 2 s (time spent outside
    Keras' epoch: its usual share is 0.2-0.4 s).
    """
    fit = [x for r in runs for x in r["fit"]]
    wall = [x for r in runs for x in r["wall"]]
    return {"epochs": len(fit), "fit_median": statistics.median(fit), "wall_median": statistics.median(wall),
            "wall_mean": statistics.mean(wall), "fit_within_goal": sum(x <= goal for x in fit),
            "wall_within_goal": sum(x <= goal for x in wall),
            "stalls": sum(w - f > 2 for r in runs for f, w in zip(r["fit"], r["wall"]))}


def real_data_or_skip(data_dir):
    """True where the real CIFAR-10 is at `data_dir`; otherwise prints why the benchmark skips."""
    try:
        data.find_source(data_dir, allow_download=False)
        return True
    except data.DataError as e:
        print(json.dumps({"skipped": f"the real data is not there: {e}"}))
        return False


def split(variant):
    """'OTHER/train.py --steps-per-execution 1 X=1' -> (Path('OTHER/train.py'), ['--steps-per-execution', '1'], {'X': '1'}).

    The script is this checkout's train.py where the variant names none.
    """
    flags, env = split_variant(variant)
    scripts = [f for f in flags if f.endswith(".py")]
    if len(scripts) > 1:
        raise ValueError(f"--variant {variant}: more than one script")
    return Path(scripts[0]).resolve() if scripts else ROOT / "train.py", [f for f in flags if not f.endswith(".py")], env


def run_once(train_py, model, epochs, data_dir, flags, env):
    """One fresh training run: {"fit": seconds, "wall": seconds} of epochs 2.., its final "val_accuracy",
    "first": seconds from the start of the process to the end of the first epoch (start-up, loading,
    building, tracing and the epoch), and "peak_rss_mib": the process's peak resident memory."""
    with tempfile.TemporaryDirectory(prefix="epoch-time-") as tmp:
        command = [sys.executable, str(train_py), "--model", model, "--epochs", str(epochs),
                   "--data-dir", str(data_dir), "--run-dir", tmp, *flags]
        stamps, tail = [], []
        start = time.perf_counter()
        with tempfile.TemporaryFile("w+") as err:  # a file, not a pipe: a chatty stderr cannot block the child
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1,
                                    cwd=Path(train_py).parent, env={**os.environ, "PYTHONUNBUFFERED": "1", **env})
            for line in proc.stdout:
                if EPOCH_END.match(line):
                    stamps.append(time.perf_counter())
                tail = (tail + [line.rstrip()])[-3:]
            _, status, usage = os.wait4(proc.pid, 0)  # wait, with the child's own peak memory
            proc.returncode = os.waitstatus_to_exitcode(status)
            err.seek(0)
            if proc.returncode != 0:
                last = (err.read().strip().splitlines() or tail or ["no message"])[-1]
                raise SystemExit(f"exit status {proc.returncode} from {' '.join(command)}: {last}")
        if len(stamps) != epochs:
            raise SystemExit(f"expected {epochs} epoch lines from train.py, read {len(stamps)}: {tail}")
        with open(Path(tmp) / "history.csv", newline="") as f:
            fit = [float(row["epoch_seconds"]) for row in csv.DictReader(f)]
        metrics = json.loads((Path(tmp) / "metrics.json").read_text())
    return {"fit": fit[1:], "wall": epoch_walls(stamps), "val_accuracy": metrics["val_accuracy"],
            "first": stamps[0] - start, "peak_rss_mib": usage.ru_maxrss / 1024}  # Linux: kilobytes


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", required=True, help="where the real CIFAR-10 is (as train.py's --data-dir)")
    p.add_argument("--model", default="lenet")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--goal", type=float, default=6.0, help="count the epochs that take at most this many "
                                                          "seconds (default: 6, issue #9's LeNet goal)")
    p.add_argument("--variant", action="append", dest="variants", metavar="FLAGS",
                   help="flags for train.py, NAME=VALUE environment settings and the path of another "
                        "train.py, written --variant=FLAGS; repeat to compare several (default: one "
                        "variant, no flags)")
    a = p.parse_args(argv)
    if a.epochs < 2:
        p.error("--epochs must be at least 2 (the first epoch is left out)")
    variants = a.variants or [""]
    try:
        runs = {v: split(v) for v in variants}
    except ValueError as e:
        p.error(str(e))
    for v, (script, _, _) in runs.items():
        if not script.is_file():
            p.error(f"--variant {v}: no such file: {script}")
    if not real_data_or_skip(a.data_dir):
        return
    results = {v: [] for v in variants}
    for _ in range(a.repeats):
        for v in variants:
            script, flags, env = runs[v]
            r = run_once(script, a.model, a.epochs, Path(a.data_dir).resolve(), flags, env)
            results[v].append(r)
            print(json.dumps({"variant": v, "model": a.model, "fit": [round(x, 3) for x in r["fit"]],
                              "wall": [round(x, 3) for x in r["wall"]], "val_accuracy": r["val_accuracy"],
                              "first": round(r["first"], 2), "peak_rss_mib": round(r["peak_rss_mib"])}),
                  flush=True)

    print(f"\n{a.model}, epochs 2-{a.epochs} of {a.repeats} runs each, pooled (seconds):\n\n"
          f"| variant | epochs | fit median | wall median | wall mean | fit <= {a.goal:g} s | wall <= {a.goal:g} s "
          "| stalls (wall - fit > 2 s) | start to epoch 1's end | peak memory | final val accuracy of each run |"
          "\n|---|---|---|---|---|---|---|---|---|---|---|")
    for v in variants:
        t = summarise(results[v], a.goal)
        accuracies = " ".join(f"{r['val_accuracy']:.4f}" for r in results[v])
        print(f"| {v or 'default'} | {t['epochs']} | {t['fit_median']:.2f} | {t['wall_median']:.2f} "
              f"| {t['wall_mean']:.2f} | {t['fit_within_goal']} | {t['wall_within_goal']} | {t['stalls']} "
              f"| {statistics.median(r['first'] for r in results[v]):.1f} s "
              f"| {statistics.median(r['peak_rss_mib'] for r in results[v]):,.0f} MiB | {accuracies} |")


if __name__ == "__main__":
    main()
