"""Images per second the input pipeline alone delivers (gather, augment, normalise, batch).

    python bench/pipeline_speed.py --augment standard --batch 128 --repeats 3

Iterates data.make_dataset over 45,000 random uint8 CIFAR-shaped images (the training split's
size), one epoch per repeat, consuming nothing but the batches. They are consumed inside
TensorFlow (`Dataset.reduce`), as Keras' training step takes them: a Python `for` loop over the
dataset would add a per-batch cost of its own and cap the figure well below what the pipeline
delivers. Prints one JSON line with the median over repeats (the first epoch, which traces the
pipeline, is not counted).
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tfenv  # noqa: E402,F401  (first: TensorFlow reads its settings when it loads)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import data  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--augment", default="standard", choices=data.AUGMENTATIONS)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--images", type=int, default=45000)
    a = p.parse_args(argv)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (a.images, 32, 32, 3), np.uint8)
    labels = rng.integers(0, 10, a.images).astype(np.uint8)
    speeds = []
    for epoch in range(a.repeats + 1):
        ds = data.make_dataset(images, labels, a.batch, augment=a.augment, shuffle=True, epoch=epoch)
        start = time.perf_counter()
        count = int(ds.reduce(tf.constant(0), lambda n, batch: n + tf.shape(batch[0])[0]))
        if epoch:
            speeds.append(count / (time.perf_counter() - start))
    print(json.dumps({"augment": a.augment, "batch": a.batch, "img_per_s": round(statistics.median(speeds)),
                      "runs": [round(s) for s in speeds]}))


if __name__ == "__main__":
    main()
