"""Training speed of the grouped-convolution models on this machine, one JSON line per model.

    TF_CPP_MIN_LOG_LEVEL=2 python bench/grouped_conv.py [--steps 3] [--repeats 3] [MODEL ...]

Each model is trained with `model.fit` (SGD, momentum 0.9, batch 32) on random 32x32 images:
one untimed step traces and compiles, then `repeats` timed calls of `steps` steps each;
img_per_s is images per second of the median call.
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from models import create_model  # noqa: E402


def images_per_second(name, *, batch_size=32, steps=3, repeats=3, seed=0):
    keras.utils.set_random_seed(seed)
    model = create_model(name)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(seed)
    n = batch_size * steps
    x = rng.normal(size=(n, *model.input_shape[1:])).astype("float32")
    y = rng.integers(0, model.output_shape[-1], size=n)
    fit = dict(batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    # Warm-up on one batch: builds the train function and compiles the grouped convolutions,
    # which TensorFlow runs through XLA on CPU.
    model.fit(x[:batch_size], y[:batch_size], **fit)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.fit(x, y, **fit)
        seconds.append(time.perf_counter() - start)
    return dict(model=name, img_per_s=round(n / statistics.median(seconds), 2), batch_size=batch_size,
                steps=steps, repeats=repeats, seconds=[round(s, 2) for s in seconds],
                jit_compile=bool(model.jit_compile), cpus=os.cpu_count())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["resnext29_4x64d", "se_resnext29_4x64d"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="training steps per timed call")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls; the median is reported")
    args = parser.parse_args(argv)
    for name in args.models:
        result = images_per_second(name, batch_size=args.batch_size, steps=args.steps, repeats=args.repeats)
        print(json.dumps(result), flush=True)
        keras.backend.clear_session()


if __name__ == "__main__":
    main()
