"""One 3x3 convolution, 256 -> 256 channels on 32x32 maps: forward + backward seconds by groups.

    python -m bench.grouped_layer --batch 8 --groups 1 4 --repeats 5

Shows what TensorFlow's CPU kernels make of grouped convolution (ResNeXt's building block):
`groups=G` does 1/G of the multiply-adds of `groups=1`. Prints one JSON line per setting with the
median of --repeats timed steps after one warm-up.
"""

import argparse
import json
import statistics
import time

import keras
import tensorflow as tf


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--groups", type=int, nargs="+", default=[1, 4])
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    x = tf.random.normal((a.batch, 32, 32, 256))
    for groups in a.groups:
        layer = keras.layers.Conv2D(256, 3, padding="same", groups=groups, use_bias=False)
        layer.build(x.shape)

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = tf.reduce_sum(layer(x))
            return tape.gradient(y, [x, *layer.trainable_variables])

        @tf.function
        def forward():
            return tf.reduce_sum(layer(x))

        def timed(fn):
            fn()
            times = []
            for _ in range(a.repeats):
                start = time.perf_counter()
                tf.nest.map_structure(lambda t: t.numpy(), fn())
                times.append(time.perf_counter() - start)
            return round(statistics.median(times), 4)

        print(json.dumps({"groups": groups, "batch": a.batch, "forward_s": timed(forward),
                          "forward_backward_s": timed(step)}), flush=True)


if __name__ == "__main__":
    main()
