"""Training throughput of train.py's own training step, in images per second.

Builds the model and its step with execution.py's `plan` and `build_model`, the functions the
training loop calls (its recipe, with --batch on top), feeds it the training batches of `data.py`
(gather, pad-4 crop + flip, normalise) over random uint8 CIFAR-shaped images, or with --data-dir
over the first training images of the real set in their order, computed where the execution
says (--batches: before the steps on the CPU alone, beside them elsewhere), and times the steps
after a warm-up with a per-batch callback, as ../shared/bench/torch_reference.py times its own. Prints one JSON line.

    python -m bench.train_speed --model resnet20 --batch 128 --steps 100 [--devices 2] [--jit]
        [--mixed-precision] [--keras-batch-norm] [--steps-per-execution N] [--channel-padding off]
        [--data-dir ../shared/data]

The execution flags mean what they mean for train.py (execution.py). The clock ticks once per
call into TensorFlow, so --warmup and --steps are rounded up to whole calls.

`KERAS_BACKEND=jax python -m bench.train_speed ...` measures the same model, optimizer and step on
Keras' JAX backend, as train.py trains there (execution.plan): the step XLA-compiled, Keras' own
batch norm, the batches from numpy_pipeline.py, --devices over keras.distribution.
"""

import argparse
import importlib
import json
import math
import time

import keras
import numpy as np

import data
import execution
import numpy_pipeline
import settings
from errors import TrainError


# The most images a measurement cuts its batches from, (warmup + steps) * batch: five epochs of
# CIFAR-10's training set. The precomputed batches hold ~33 KB of float32 per image, so this is
# ~8 GB of the 24 GiB machines; past it the images alone would not fit.
MAX_IMAGES = 250_000


class StepClock(keras.callbacks.Callback):
    """(step index, time) at the end of each execution: every step, or every k with steps_per_execution=k."""

    def on_train_batch_end(self, batch, logs=None):
        self.ticks.append((batch, time.perf_counter()))

    def on_train_begin(self, logs=None):
        self.ticks = []


def images_and_labels(n, seed, data_dir=None):
    """n uint8 training images with their labels, and what they are: random, or the real set's first n.

    The real set's training images are taken in their order, from the first again where n exceeds them.
    """
    if data_dir is None:
        rng = np.random.default_rng(seed)
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        return images, rng.integers(0, 10, n).astype(np.uint8), "random uint8"
    try:
        d = data.load_cifar10(data_dir, allow_download=False, verbose=False)
    except data.DataError as e:
        raise SystemExit(f"error: {e}") from None
    rows = np.arange(n) % len(d.x_train)
    return d.x_train[rows], d.y_train[rows], f"the first {min(n, len(d.x_train))} training images of {d.source}"


def prepare(model_name, batch, steps, warmup, seed=0, mixed_precision=False, data_dir=None, **options):
    """The model as the training loop builds it, a pipeline of warmup + steps batches, and the setup as a dict.

    `options` are execution.plan's; --warmup and --steps are rounded up to whole executions. The
    batches are cut from random images, or from the real set's training images at `data_dir`.
    """
    try:
        s, sources = settings.resolve_settings(model_name, batch_size=batch, epochs=1, mixed_precision=mixed_precision)
        plan = execution.plan(s, sources, **options)
    except TrainError as e:
        raise SystemExit(f"error: {e}") from None
    k = plan.steps_per_execution
    warmup, steps = -(-warmup // k) * k, -(-steps // k) * k
    if (warmup + steps) * batch > MAX_IMAGES:
        raise SystemExit(f"error: {warmup} + {steps} steps (whole executions of {k}) of batch {batch} are "
                         f"{(warmup + steps) * batch:,} images, more than the {MAX_IMAGES:,} a measurement holds "
                         "in memory; lower --steps or --batch")
    images, labels, what = images_and_labels((warmup + steps) * batch, seed, data_dir)
    with execution.scope(plan):
        model = execution.build_model(s, plan, steps_per_epoch=warmup + steps)
    if plan.batches == "numpy":
        dataset = numpy_pipeline.Images(images, labels, preprocess_mode=s["preprocess"],
                                        augment="standard").epoch(batch, shuffle=True, seed=seed)
    elif plan.batches == "precomputed":
        dataset = data.EpochBatches(images, labels, preprocess_mode=s["preprocess"],
                                    augment="standard").dataset(batch, shuffle=True, seed=seed)
    else:
        dataset = data.make_dataset(images, labels, batch, augment="standard", shuffle=True, seed=seed,
                                    preprocess_mode=s["preprocess"])
    backend = keras.backend.backend()
    record = plan.record
    setup = {
        "framework": f"keras {keras.__version__} / {backend} {importlib.import_module(backend).__version__}",
        "backend": backend,
        "model": model_name, "params": model.count_params(), "batch": batch,
        "replicas": record["replicas"], "jit": bool(model.jit_compile), "precision": record["precision"],
        "batch_norm": record["batch_norm"], "steps_per_execution": k, "batches": record["batches"],
        "channel_padding": record["channel_padding"], "channel_multiple": record["channel_multiple"],
        "onednn": record["onednn"],
        "steps_timed": steps, "warmup_steps": warmup, "images": what,
    }
    return model, dataset, setup


def rate(images_per_second):
    """Images per second to one decimal, or to three significant figures below 100 (a model measured
    at 0.14 images/s must not be written down as 0.1, a 40 % error in every estimate made from it)."""
    x = float(images_per_second)
    return round(x, max(1, 2 - math.floor(math.log10(x)))) if x > 0 else x


def measure(model_name, batch, steps, warmup, **options):
    """Images per second over the steps after the warm-up, timed as the steps end (see StepClock)."""
    model, dataset, setup = prepare(model_name, batch, steps, warmup, **options)
    clock = StepClock()
    model.fit(dataset, epochs=1, verbose=0, shuffle=False, callbacks=[clock])
    ticks = np.array([(step, t) for step, t in clock.ticks if step >= setup["warmup_steps"] - 1])
    steps_timed, seconds = np.diff(ticks[:, 0]), np.diff(ticks[:, 1])
    return {
        **setup,
        "img_per_s": rate(steps_timed.sum() * batch / seconds.sum()),
        "median_step_img_per_s": rate(np.median(steps_timed * batch / seconds)),
        "execution_img_per_s": [rate(r) for r in steps_timed * batch / seconds],  # in order: a trend shows
    }


def parser(description, steps, what="timed"):
    """The command line shared by bench/train_speed.py and bench/profile_step.py."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=steps,
                   help=f"{what} steps (rounded up to whole executions, see --steps-per-execution)")
    p.add_argument("--warmup", type=int, default=5,
                   help="steps before those, the first of which traces the step (rounded up likewise)")
    p.add_argument("--mixed-precision", action="store_true")
    p.add_argument("--data-dir", help="train on the real set's first training images (default: random images)")
    execution.add_arguments(p)
    return p


def parse(p, argv, min_steps):
    """The parsed arguments, checked; and the options prepare() takes from them."""
    a = p.parse_args(argv)
    if a.steps < min_steps or a.warmup < 1 or a.batch < 1 or (a.steps_per_execution or 1) < 1:
        p.error(f"--steps must be >= {min_steps}, and --warmup, --batch and --steps-per-execution >= 1")
    options = {"mixed_precision": a.mixed_precision, "data_dir": a.data_dir,
               **{k: getattr(a, k) for k in execution.OPTIONS}}
    return a, options


def main(argv=None):
    a, options = parse(parser(__doc__.split("\n")[0], steps=100), argv, min_steps=2)
    print(json.dumps(measure(a.model, a.batch, a.steps, a.warmup, **options)), flush=True)


if __name__ == "__main__":
    main()
