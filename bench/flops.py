"""How much of this CPU's FP32 throughput a training step uses.

    python -m bench.flops --model resnet20 --img-per-s 494

Prints one JSON line: the model's training FLOPs per image (3 x 2 x its mult-adds: one forward
pass, and a backward pass costing twice the forward, the usual estimate for convolutional
networks; mult-adds counted by models/describe.py, convolutions and dense layers only), the
FP32 matrix-multiply rate TensorFlow reaches here (median of --repeats 4096x4096 products: the
practical peak), and the share of it that the given training speed represents.
"""

import argparse
import json
import statistics
import time

import tensorflow as tf

from models import create_model
from models.describe import mult_adds


def gemm_gflops(n=4096, repeats=5):
    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    tf.linalg.matmul(a, b).numpy()  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        tf.linalg.matmul(a, b).numpy()
        rates.append(2 * n ** 3 / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates), rates


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--img-per-s", type=float, help="measured training images/s (bench/train_speed.py); "
                   "without it, only the FLOPs per image and the GEMM rate are printed")
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    if a.repeats < 1 or (a.img_per_s is not None and not a.img_per_s > 0):
        p.error("--repeats must be >= 1 and --img-per-s > 0")
    try:
        model = create_model(a.model)
    except ValueError as e:  # an unknown model: the registry's message names the known ones
        p.error(str(e))
    train_flops = 6 * mult_adds(model)
    peak, rates = gemm_gflops(repeats=a.repeats)
    out = {"model": a.model, "train_gflop_per_image": round(train_flops / 1e9, 4),
           "gemm_gflop_per_s_median": round(peak, 1), "gemm_runs": [round(r, 1) for r in rates]}
    if a.img_per_s is not None:
        used = a.img_per_s * train_flops / 1e9
        out.update(img_per_s=a.img_per_s, training_gflop_per_s=round(used, 1), share_of_gemm_peak=round(used / peak, 3))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
