"""Training throughput of train.py's own training step, in images per second.

Builds the model and optimizer exactly as `train.py` does (its recipe, with --batch on top), feeds
it the training batches of `data.py` (gather, pad-4 crop + flip, normalise) over random uint8
CIFAR-shaped images, computed as train.py computes them (--batches: before the steps on the CPU
alone, beside them elsewhere), and times the steps after a warm-up with a per-batch callback, as
../shared/bench/torch_reference.py times its own. Prints one JSON line.

    python bench/train_speed.py --model resnet20 --batch 128 --steps 100 [--devices 2] [--jit]
        [--mixed-precision] [--keras-batch-norm] [--steps-per-execution N] [--channel-padding off]

--devices, --jit and --mixed-precision mean what they mean for train.py (see distribute.py);
--keras-batch-norm measures Keras' own batch-norm ops in place of the fused kernel (fused.py);
--steps-per-execution runs N steps per call into TensorFlow (default: train.py's);
--channel-padding on/off pads convolutions' channels or not (padded.py; default: train.py's). The clock
ticks once per call, so --warmup and --steps are rounded up to whole calls.

`KERAS_BACKEND=jax python bench/train_speed.py ...` measures the same model, optimizer and step on
Keras' JAX backend (with jax installed; train.py itself trains on TensorFlow only). There the step
is always XLA-compiled (Keras' default on JAX), batch norm is Keras' own and --devices is refused.
"""

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tfenv  # noqa: E402  (first: TensorFlow reads its settings when it loads)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import data  # noqa: E402
import distribute  # noqa: E402
import train  # noqa: E402


class StepClock(keras.callbacks.Callback):
    """(step index, time) at the end of each execution: every step, or every k with steps_per_execution=k."""

    def on_train_batch_end(self, batch, logs=None):
        self.ticks.append((batch, time.perf_counter()))

    def on_train_begin(self, logs=None):
        self.ticks = []


def prepare(model_name, batch, steps, warmup, seed=0, devices=None, jit=False, mixed_precision=False,
            keras_batch_norm=False, steps_per_execution=None, batches="auto", channel_padding="auto"):
    """The model as train.py builds it and a pipeline of warmup + steps batches; and the settings as a dict.

    --warmup and --steps are rounded up to whole executions of `steps_per_execution` steps.
    """
    settings, _ = train.resolve_settings(model_name, batch_size=batch, epochs=1)
    backend = keras.backend.backend()
    on_tensorflow = backend == "tensorflow"
    if not on_tensorflow and (devices or 1) > 1:
        raise SystemExit(f"--devices {devices}: several devices are measured on the TensorFlow backend only "
                         f"(train.py's tf.distribute), not on {backend!r}")
    placement = distribute.place(devices)
    if steps_per_execution is None:  # train.py's default
        steps_per_execution = train.STEPS_PER_EXECUTION if placement.replicas == 1 else 1
    k = steps_per_execution
    warmup, steps = -(-warmup // k) * k, -(-steps // k) * k
    if jit and on_tensorflow:
        distribute.check_jit(placement)
    policy = distribute.mixed_precision_policy() if mixed_precision else "float32"
    keras.mixed_precision.set_global_policy(policy)
    try:
        batches = train.choose_batches(batches, settings, placement)  # train.py's choices for this placement
        channel_padding = train.choose_channel_padding(channel_padding, placement) if on_tensorflow else "off"
    except train.TrainError as e:
        raise SystemExit(f"error: {e}") from None
    with placement.strategy.scope():
        # On JAX, jit_compile=False would run the step op by op; "auto" is Keras' default there (XLA).
        model = train.build_model(settings, steps_per_epoch=warmup + steps, jit=jit if on_tensorflow else "auto",
                                  fused_batch_norm=not keras_batch_norm, steps_per_execution=steps_per_execution,
                                  pad_channels=channel_padding == "on")
    rng = np.random.default_rng(seed)
    n = (warmup + steps) * batch
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    if batches == "precomputed":
        dataset = data.EpochBatches(images, labels, preprocess_mode=settings["preprocess"],
                                    augment="standard").dataset(batch, shuffle=True, seed=seed)
    else:
        dataset = data.make_dataset(images, labels, batch, augment="standard", shuffle=True, seed=seed,
                                    preprocess_mode=settings["preprocess"])
    setup = {
        "framework": f"keras {keras.__version__} / {backend} {importlib.import_module(backend).__version__}",
        "backend": backend,
        "model": model_name, "params": model.count_params(), "batch": batch,
        "replicas": placement.replicas, "jit": bool(model.jit_compile), "precision": policy,
        "batch_norm": "fused" if on_tensorflow and not keras_batch_norm else "keras",
        "steps_per_execution": steps_per_execution, "batches": batches, "channel_padding": channel_padding,
        "onednn": tfenv.onednn_enabled() if on_tensorflow else None,
        "steps_timed": steps, "warmup_steps": warmup,
    }
    return model, dataset, setup


def measure(model_name, batch, steps, warmup, **options):
    """Images per second over the steps after the warm-up, timed as the steps end (see StepClock)."""
    model, dataset, setup = prepare(model_name, batch, steps, warmup, **options)
    clock = StepClock()
    model.fit(dataset, epochs=1, verbose=0, shuffle=False, callbacks=[clock])
    ticks = np.array([(step, t) for step, t in clock.ticks if step >= setup["warmup_steps"] - 1])
    steps_timed, seconds = np.diff(ticks[:, 0]), np.diff(ticks[:, 1])
    return {
        **setup,
        "img_per_s": round(steps_timed.sum() * batch / seconds.sum(), 1),
        "median_step_img_per_s": round(float(np.median(steps_timed * batch / seconds)), 1),
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
    p.add_argument("--devices", type=int, help="local devices (logical CPU devices where there is no GPU)")
    p.add_argument("--jit", action="store_true", help="XLA-compile the training step")
    p.add_argument("--mixed-precision", action="store_true")
    p.add_argument("--keras-batch-norm", action="store_true",
                   help="Keras' own batch-norm ops instead of the fused kernel train.py uses (fused.py)")
    p.add_argument("--steps-per-execution", type=int,
                   help=f"training steps per call into TensorFlow (default: train.py's, "
                        f"{train.STEPS_PER_EXECUTION} on one device, 1 on several)")
    p.add_argument("--batches", choices=train.BATCHES, default="auto",
                   help="the batches computed before the steps or beside them, as train.py's --batches "
                        "(default: train.py's choice, precomputed on the CPU alone)")
    p.add_argument("--channel-padding", choices=train.CHANNEL_PADDING, default="auto",
                   help="convolutions' channels padded to the CPU's vector width, as train.py's --channel-padding "
                        "(default: train.py's choice, on where the step runs on CPUs)")
    return p


def parse(p, argv, min_steps):
    """The parsed arguments, checked; and the options prepare() takes from them."""
    a = p.parse_args(argv)
    if a.steps < min_steps or a.warmup < 1 or a.batch < 1 or (a.steps_per_execution or 1) < 1:
        p.error(f"--steps must be >= {min_steps}, and --warmup, --batch and --steps-per-execution >= 1")
    options = dict(devices=a.devices, jit=a.jit, mixed_precision=a.mixed_precision,
                   keras_batch_norm=a.keras_batch_norm, steps_per_execution=a.steps_per_execution,
                   batches=a.batches, channel_padding=a.channel_padding)
    return a, options


def main(argv=None):
    a, options = parse(parser(__doc__.split("\n")[0], steps=100), argv, min_steps=2)
    print(json.dumps(measure(a.model, a.batch, a.steps, a.warmup, **options)), flush=True)

if __name__ == "__main__":
    main()
