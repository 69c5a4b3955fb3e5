"""Where an epoch of train.py goes: its parts, timed inside a real run.

    python -m bench.epoch_parts --data-dir ../shared/data [--model lenet] [--epochs 4] [-- TRAIN_FLAGS]

Runs train.py's own `main` in this process, into a fresh temporary run folder, and watches it
through the loop's public hooks (loop.train's `callbacks` and `on_epoch`): the loop's own times
of building the epoch's training batches ("pipeline"), of Keras' `fit` and of the epoch's commit;
and, from a Keras callback inside `fit`, its setup (up to the first epoch callback), the first
execution of steps, the steady rate of the following ones, the validation pass, and its return
(from the end of training to `fit` returning). "wall" is the time from one commit's end to the
next. Nothing of the loop is replaced: it runs as it does for a user. Prints a JSON line per
epoch after the first (which traces the step), then the medians. Without the real data it prints
why and skips (exit status 0). bench/epoch_time.py gives the epoch times alone, in fresh processes.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import keras

import train
from bench.epoch_time import real_data_or_skip

PARTS = ("pipeline", "fit_setup", "first_execution", "train", "validation", "fit_return", "commit", "wall")


def steady_rate(ticks, batch_size):
    """Images/s between the first and the next-to-last execution of an epoch.

    `ticks` are (index of the execution's last step, time) at the end of each execution; the
    first execution carries the epoch's start-up and the last may hold a partial batch, so the
    rate is taken between them.
    """
    if len(ticks) < 3:
        return None
    (first_step, first_time), (step, at) = ticks[0], ticks[-2]
    return (step - first_step) * batch_size / (at - first_time)


class Parts(keras.callbacks.Callback):
    """Inside each epoch's fit: when it starts, each execution of steps ends, validation starts, training ends."""

    def on_epoch_begin(self, epoch, logs=None):
        self.start, self.ticks, self.test_start, self.epoch_end = time.perf_counter(), [], None, None

    def on_train_batch_end(self, batch, logs=None):
        self.ticks.append((batch, time.perf_counter()))

    def on_test_begin(self, logs=None):
        self.test_start = self.test_start or time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_end = time.perf_counter()

    def on_train_end(self, logs=None):
        self.train_end = time.perf_counter()


def watch():
    """The callback and the on_epoch hook for train.main; and the list each finished epoch lands in."""
    epochs, parts, last = [], Parts(), {}

    def on_epoch(times):
        train_end = parts.test_start or parts.epoch_end
        epoch = {"epoch": times["epoch"], "pipeline": times["pipeline"], "fit_setup": parts.start - times["fit_start"],
                 "first_execution": parts.ticks[0][1] - parts.start, "train": train_end - parts.start,
                 "ticks": parts.ticks,
                 "validation": parts.epoch_end - parts.test_start if parts.test_start else 0.0,
                 "fit_return": times["fit_end"] - parts.train_end, "commit": times["commit"]}
        if "commit_end" in last:
            epoch["wall"] = times["commit_end"] - last["commit_end"]
        last["commit_end"] = times["commit_end"]
        epochs.append(epoch)

    return [parts], on_epoch, epochs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", required=True, help="where the real CIFAR-10 is (as train.py's --data-dir)")
    p.add_argument("--model", default="lenet")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("train_flags", nargs="*", help="more flags for train.py, after --")
    a = p.parse_args(argv)
    if a.epochs < 2:
        p.error("--epochs must be at least 2 (the first epoch is left out)")
    if not real_data_or_skip(a.data_dir):
        return 0
    callbacks, on_epoch, epochs = watch()
    with tempfile.TemporaryDirectory(prefix="epoch-parts-") as run_dir:
        status = train.main(["--model", a.model, "--epochs", str(a.epochs), "--data-dir", a.data_dir,
                             "--run-dir", run_dir, *a.train_flags], callbacks=callbacks, on_epoch=on_epoch)
        if status:
            return status
        batch_size = json.loads((Path(run_dir) / "config.json").read_text())["settings"]["batch_size"]
    later = epochs[1:]
    for epoch in later:
        epoch["steady_img_per_s"] = steady_rate(epoch.pop("ticks"), batch_size)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in epoch.items()}))
    medians = {part: statistics.median(x) for part in PARTS + ("steady_img_per_s",)
               if (x := [e[part] for e in later if e.get(part) is not None])}
    print(json.dumps({"median of epochs": f"2-{a.epochs}", **{k: round(v, 3) for k, v in medians.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
