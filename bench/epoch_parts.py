"""Where an epoch of train.py goes: its parts, timed inside a real run.

    python bench/epoch_parts.py --data-dir ../shared/data [--model lenet] [--epochs 4] [-- TRAIN_FLAGS]

Runs train.py's own `main` in this process, into a fresh temporary run folder, with timers around
the pieces of its per-epoch loop: building the epoch's training pipeline (`data.make_dataset`,
or, by default on a CPU, computing the epoch's batches: `data.EpochBatches.dataset`);
inside Keras' `fit`, its setup (the call to the first epoch callback), the first execution of
steps, the steady rate of the following ones, the validation pass, and its return (the last
callback to `fit` returning); then the checkpoint (`RunFolder.commit`). "wall" is the time from
one checkpoint to the next. The timers wrap train.py's functions and add a callback through
`train.EpochTimer`; the loop itself runs as it does for a user. Prints a JSON line per epoch after
the first (which traces the step), then the medians. Without the real data it prints why and
skips (exit status 0). bench/epoch_time.py gives the epoch times alone, in fresh processes.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tfenv  # noqa: E402,F401  (first: TensorFlow reads its settings when it loads)

import keras  # noqa: E402

import data  # noqa: E402
import train  # noqa: E402
from epoch_time import real_data_or_skip  # noqa: E402

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


def instrument():
    """Wraps train.py's per-epoch pieces with timers; returns the list each finished epoch lands in."""
    epochs, now = [], {}

    def timed(name, function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                now[name] = time.perf_counter() - start
                now[name + "_end"] = time.perf_counter()
        return wrapper

    make_dataset = data.make_dataset

    def make_training_pipeline(*args, **kwargs):  # the epoch's pipeline: the one that shuffles
        return (timed("pipeline", make_dataset) if kwargs.get("shuffle") else make_dataset)(*args, **kwargs)

    data.make_dataset = make_training_pipeline
    # The default on a CPU: the epoch's batches computed before it (train.py --batches precomputed).
    epoch_batches = data.EpochBatches.dataset

    def epoch_training_batches(self, *args, **kwargs):
        return (timed("pipeline", epoch_batches) if kwargs.get("shuffle") else epoch_batches)(self, *args, **kwargs)

    data.EpochBatches.dataset = epoch_training_batches
    fit = keras.Model.fit

    def timed_fit(self, *args, **kwargs):
        now["fit_start"] = time.perf_counter()
        return timed("fit", fit)(self, *args, **kwargs)

    keras.Model.fit = timed_fit
    commit = train.RunFolder.commit

    def timed_commit(self, *args, **kwargs):
        last = now.get("commit_end")
        result = timed("commit", commit)(self, *args, **kwargs)
        epoch = dict(now["epoch"], pipeline=now["pipeline"], fit_return=now["fit_end"] - now["train_end"],
                     commit=now["commit"])
        if last is not None:
            epoch["wall"] = now["commit_end"] - last
        epochs.append(epoch)
        return result

    train.RunFolder.commit = timed_commit

    class Parts(train.EpochTimer):
        def on_epoch_begin(self, epoch, logs=None):
            super().on_epoch_begin(epoch, logs)
            self.ticks, self.test_start = [], None
            now["fit_setup"] = self.start - now["fit_start"]

        def on_train_batch_end(self, batch, logs=None):
            self.ticks.append((batch, time.perf_counter()))

        def on_test_begin(self, logs=None):
            super().on_test_begin(logs)
            self.test_start = self.test_start or time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch, logs)
            end = self.start + self.epoch_seconds
            now["epoch"] = {"epoch": epoch + 1, "fit_setup": now["fit_setup"],
                            "first_execution": self.ticks[0][1] - self.start, "train": self.train_seconds,
                            "ticks": self.ticks,
                            "validation": end - self.test_start if self.test_start else 0.0}

        def on_train_end(self, logs=None):
            now["train_end"] = time.perf_counter()

    train.EpochTimer = Parts
    return epochs


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
    epochs = instrument()
    with tempfile.TemporaryDirectory(prefix="epoch-parts-") as run_dir:
        status = train.main(["--model", a.model, "--epochs", str(a.epochs), "--data-dir", a.data_dir,
                             "--run-dir", run_dir, *a.train_flags])
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
