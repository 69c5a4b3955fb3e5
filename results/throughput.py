"""Measured training throughput, per model and machine: OUT/throughput.csv.

The not-yet-run rows of the table divide a recipe's training images by these figures; nothing
there is guessed. A figure is measured by bench/train_speed.py's `measure`, which builds the model
and its training step with train.py's own functions and times the steps after a warm-up, at the
recipe's batch: the training steps only, so validation and the final evaluation come on top.
"""

import csv
import importlib
import os
import shlex
import sys
import time
from pathlib import Path

from errors import run_child
from results.runs import ResultsError, write_csv

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ("model", "machine", "images_per_second", "command", "measured")
KINDS = ("CPU", "GPU")
GPU_PREFIX = "GPU: "


def kind(machine):
    """"GPU" for a machine this module named after its GPU, "CPU" for execution.machine()'s CPU names."""
    return "GPU" if machine.startswith(GPU_PREFIX) else "CPU"


def read(path):
    """The rows of throughput.csv ([] where there is none), each checked."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ResultsError(f"cannot read {path}: {e}") from None
    for i, row in enumerate(rows, start=2):
        missing = [k for k in FIELDS if not row.get(k)]
        if missing:
            raise ResultsError(f"{path}, line {i}: no {', '.join(missing)}; columns: {', '.join(FIELDS)}")
        try:
            if not float(row["images_per_second"]) > 0:
                raise ValueError
        except ValueError:
            raise ResultsError(f"{path}, line {i}: images_per_second must be a positive number, "
                               f"not {row['images_per_second']!r}") from None
    return rows


def merge(rows, new):
    """`rows` with each row of `new` replacing the one of the same model and machine (or added)."""
    keyed = {(r["model"], r["machine"]): r for r in rows}
    keyed.update({(r["model"], r["machine"]): r for r in new})
    return sorted(keyed.values(), key=lambda r: (r["model"], r["machine"]))


def latest(rows, model, machine_kind):
    """The most recently measured row of `model` on a machine of `machine_kind`, or None."""
    found = [r for r in rows if r["model"] == model and kind(r["machine"]) == machine_kind]
    return max(found, key=lambda r: r["measured"]) if found else None


def measured_batch(row):
    """The batch a row was measured at, read from its command's --batch (None where it names none)."""
    try:
        words = shlex.split(row["command"])
        return int(words[words.index("--batch") + 1])
    except (ValueError, IndexError):
        return None


def this_machine():
    """The GPU the step runs on (one), named from TensorFlow's device details, or execution.machine()'s CPU."""
    import tensorflow as tf

    import execution

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return GPU_PREFIX + details.get("device_name", gpus[0].name)
    return execution.machine()


def measure(name, batch=None, steps=100, warmup=5, steps_per_execution=None):
    """Images per second of `name`'s training step at the recipe's batch (or `batch`), on one device,
    `steps_per_execution` steps per call into TensorFlow (None: train.py's default)."""
    import distribute
    import settings
    from errors import TrainError

    train_speed = importlib.import_module("bench.train_speed")
    batch = batch or settings.resolve_settings(name)[0]["batch_size"]
    try:
        result = train_speed.measure(name, batch, steps, warmup, devices=1, steps_per_execution=steps_per_execution)
    except (TrainError, distribute.DistributeError) as e:
        raise ResultsError(str(e)) from None
    except SystemExit as e:  # train_speed refuses some settings this way, with its own "error: " line
        raise ResultsError(str(e.code).removeprefix("error: ")) from None
    return result["img_per_s"], batch


def run(names, out, batch=None, steps=100, warmup=5, steps_per_execution=None):
    """Measures each model and writes its row into `out` (replacing an earlier row of that model and
    this machine). Several models are measured one after the other, each in a process of its own:
    TensorFlow keeps much of a big model's memory after its last step (a ResNet-1202 left 17 GB of
    24), so a list in one process can run out of memory; a model that fails (one too big for the
    memory is killed) is named at the end, the others measured; an interrupted list keeps the rows
    of the models measured before it stopped."""
    out = Path(out)
    rows = read(out)  # a garbled file is refused before minutes of measuring
    spe = ["--steps-per-execution", str(steps_per_execution)] if steps_per_execution else []
    if len(names) > 1:
        failed = []
        for name in names:
            command = [sys.executable, "-m", "results", "throughput", "--models", name, "--steps", str(steps),
                       "--warmup", str(warmup), "--out", str(out), "--in-list", *spe,
                       *(["--batch", str(batch)] if batch else [])]
            path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
            code = run_child(command, env={**os.environ, "PYTHONPATH": path})
            if code:
                failed.append(f"{name} ({f'killed by signal {-code}' if code < 0 else f'exit status {code}'})")
        if failed:
            raise ResultsError(f"measuring {', '.join(failed)} failed; {out} has the other models' rows")
        return
    (name,) = names
    ips, used_batch = measure(name, batch, steps, warmup, steps_per_execution)
    command = ["python", "-m", "results", "throughput", "--models", name, "--batch", str(used_batch),
               "--steps", str(steps), "--warmup", str(warmup), *spe, "--out", str(out)]
    machine = this_machine()
    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(out, FIELDS, merge(rows, [{"model": name, "machine": machine, "images_per_second": ips,
                                        "command": shlex.join(command), "measured": time.strftime("%Y-%m-%d")}]))
    print(f"{name}: {ips:,} images/s at batch {used_batch} on {machine}", flush=True)
