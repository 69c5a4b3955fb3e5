"""Milliseconds of one fused batch norm's training step (forward, ReLU, backward) by channel count and precision.

    python -m bench.batch_norm_speed [--channels 120 128 136 144] [--precisions float32 mixed_bfloat16]
        [--batch 64] [--size 16] [--repeats 20]

A stock Keras BatchNormalization layer computed by fused.py's kernel, as train.py runs it, on a
batch x size x size x channels input, with a ReLU after it (as in the models; TensorFlow fuses the
two), in a tf.function: the forward pass and the gradient with respect to the input and the
layer's scale and offset. The median over --repeats calls, after one call that traces. oneDNN's
kernels choose their implementation by the channel count; this shows where a count is slow, and
so what padded.py pads to (padded.MULTIPLE, padded.BFLOAT16_MULTIPLE). Prints one JSON line per
(channels, precision), then a Markdown table.
"""

import argparse
import json
import statistics
import time

import tfenv  # noqa: F401  (before keras: TensorFlow reads its settings when it loads)
import keras
import tensorflow as tf

import fused


def measure(channels, policy, batch, size, repeats):
    """Median milliseconds of one forward + backward of a fused batch norm and ReLU under `policy`."""
    layer = keras.layers.BatchNormalization(dtype=policy)
    layer.build((batch, size, size, channels))
    fused.fuse_layer(layer)
    x = tf.cast(tf.random.stateless_normal((batch, size, size, channels), seed=(0, channels)), layer.compute_dtype)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.nn.relu(layer(x, training=True))
        return tape.gradient(y, [x, *layer.trainable_variables], output_gradients=y)

    step(x)[0].numpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step(x)[0].numpy()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1e3, 3)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--channels", type=int, nargs="+", default=[120, 128, 136, 144, 152, 160])
    p.add_argument("--precisions", nargs="+", default=["float32", "mixed_bfloat16"],
                   choices=["float32", "mixed_bfloat16", "mixed_float16"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=20)
    a = p.parse_args(argv)
    if min(a.channels) < 1 or a.batch < 1 or a.size < 1 or a.repeats < 1:
        p.error("--channels, --batch, --size and --repeats must be >= 1")
    results = {}
    for channels in a.channels:
        for policy in a.precisions:
            results[channels, policy] = measure(channels, policy, a.batch, a.size, a.repeats)
            print(json.dumps({"channels": channels, "precision": policy, "batch": a.batch, "size": a.size,
                              "ms": results[channels, policy]}), flush=True)
    print(f"\n| channels | {' | '.join(f'{policy} ms' for policy in a.precisions)} |\n|---|"
          + "---|" * len(a.precisions))
    for channels in a.channels:
        print(f"| {channels} | {' | '.join(f'{results[channels, policy]:.2f}' for policy in a.precisions)} |")


if __name__ == "__main__":
    main()
