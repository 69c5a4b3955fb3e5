"""Microseconds per batch for each stage of the input pipeline, and for the forms they replaced.

    python -m bench.pipeline_stages --batch 128 --repeats 3

Each stage runs 1,000 times inside one tf.function (no Python between runs) on a batch of random
uint8 CIFAR-shaped images (the crop rows include drawing the random offsets); the figure is the
median over repeats of the time per run. The "replaced" rows are the earlier implementations, kept
here only to show what the change bought: a zero pad and two batched gathers for the crop and
flip, and standardisation with [3]-shaped per-channel constants, which TensorFlow's CPU kernels
broadcast slowly. Prints one JSON line.
"""

import argparse
import json
import statistics
import time

import numpy as np
import tensorflow as tf

import data

tf.get_logger().setLevel("ERROR")  # one tf.function per stage is on purpose; silence the retracing warning


def pad_and_gather(images, offsets, flip):
    """The crop and flip as data.py did it before crop_and_flip: pad, then gather rows and columns."""
    h, w = images.shape[1], images.shape[2]
    padded = tf.pad(images, [[0, 0], [data.PAD, data.PAD], [data.PAD, data.PAD], [0, 0]])
    rows = offsets[:, :1] + data.PAD + tf.range(h)[None, :]
    cols = offsets[:, 1:] + data.PAD + tf.range(w)[None, :]
    cols = tf.where(flip[:, None], tf.reverse(cols, axis=[1]), cols)
    crops = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.cast(tf.gather(crops, cols, axis=2, batch_dims=1), tf.float32)


def per_channel_standardize(images):
    return (tf.cast(images, tf.float32) / 255.0 - tf.constant(data.CIFAR10_MEAN)) / tf.constant(data.CIFAR10_STD)


def time_stage(stage, images, runs, repeats):
    """Median microseconds per run of stage(images, i); i varies so nothing is hoisted out of the loop."""
    @tf.function
    def loop():
        def body(total, i):
            out = stage(images, i)
            return total + tf.cast(tf.reshape(out, [-1])[0], tf.float32)
        return tf.foldl(body, tf.range(runs), 0.0)

    loop()  # trace
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        loop()
        times.append((time.perf_counter() - start) / runs * 1e6)
    return round(statistics.median(times), 1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    rng = np.random.default_rng(0)
    images = tf.constant(rng.integers(0, 256, (a.batch, 32, 32, 3), np.uint8))
    pool = tf.constant(rng.integers(0, 256, (45000, 32, 32, 3), np.uint8))
    order = tf.constant(rng.permutation(45000)[:a.batch].astype(np.int32))
    seed = tf.constant([0, 1], tf.int64)

    def offsets(i):
        seeds = tf.random.experimental.stateless_fold_in(seed, i)
        off = tf.random.stateless_uniform([a.batch, 2], seeds, maxval=2 * data.PAD + 1, dtype=tf.int32) - data.PAD
        return off, tf.random.stateless_uniform([a.batch], seeds + 1, maxval=2, dtype=tf.int32) == 1

    def shifted(x, i):  # a different input each run
        return x + tf.cast(i % 2, x.dtype)

    stages = {
        "gather the batch": lambda x, i: tf.gather(pool, (order + i) % 45000),
        "crop and flip (crop_and_flip)": lambda x, i: data.crop_and_flip(x, *offsets(i)),
        "crop and flip, replaced (pad + 2 gathers)": lambda x, i: pad_and_gather(x, *offsets(i)),
        "standardize (data.preprocess)": lambda x, i: data.preprocess(shifted(x, i), "standardize"),
        "standardize, replaced ([3] constants)": lambda x, i: per_channel_standardize(shifted(x, i)),
        "uint8 -> float32 cast alone": lambda x, i: tf.cast(shifted(x, i), tf.float32),
    }
    result = {"batch": a.batch, "us_per_batch": {name: time_stage(f, images, a.runs, a.repeats)
                                                 for name, f in stages.items()}}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
