"""Images per second the input pipeline alone delivers (gather, augment, normalise, batch).

    python -m bench.pipeline_speed --augment standard --batch 128 --repeats 3 [--batches precomputed]

Iterates data.make_dataset over 45,000 random uint8 CIFAR-shaped images (the training split's
size), one epoch per repeat, consuming nothing but the batches. With `--batches precomputed`,
train.py's default on the CPU alone, each epoch is data.EpochBatches computing the epoch's batches
(timed) and then handing them out; its once-per-run normalisation of the images is timed apart
("setup_seconds"). They are consumed inside
TensorFlow (`Dataset.reduce`), as Keras' training step takes them: a Python `for` loop over the
dataset would add a per-batch cost of its own and cap the figure well below what the pipeline
delivers. Prints one JSON line with the median over repeats (the first epoch, which traces the
pipeline, is not counted).
"""

import argparse
import json
import statistics
import time

import numpy as np
import tensorflow as tf

import data


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--augment", default="standard", choices=data.AUGMENTATIONS)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--images", type=int, default=45000)
    p.add_argument("--batches", choices=("streamed", "precomputed"), default="streamed",
                   help="data.make_dataset (streamed, beside the step) or data.EpochBatches (precomputed)")
    a = p.parse_args(argv)
    if a.batches == "precomputed" and a.augment not in data.EpochBatches.AUGMENTATIONS:
        p.error(f"--batches precomputed computes --augment {' or '.join(data.EpochBatches.AUGMENTATIONS)}")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (a.images, 32, 32, 3), np.uint8)
    labels = rng.integers(0, 10, a.images).astype(np.uint8)
    extra = {}
    if a.batches == "precomputed":
        start = time.perf_counter()
        epochs = data.EpochBatches(images, labels, augment=a.augment)
        extra["setup_seconds"] = round(time.perf_counter() - start, 3)
    speeds = []
    for epoch in range(a.repeats + 1):
        start = time.perf_counter()
        if a.batches == "precomputed":
            ds = epochs.dataset(a.batch, shuffle=True, epoch=epoch)
        else:
            ds = data.make_dataset(images, labels, a.batch, augment=a.augment, shuffle=True, epoch=epoch)
            start = time.perf_counter()
        count = int(ds.reduce(tf.constant(0), lambda n, batch: n + tf.shape(batch[0])[0]))
        if epoch:
            speeds.append(count / (time.perf_counter() - start))
    print(json.dumps({"augment": a.augment, "batch": a.batch, "batches": a.batches,
                      "img_per_s": round(statistics.median(speeds)), "runs": [round(s) for s in speeds], **extra}))


if __name__ == "__main__":
    main()
