"""Seconds to load CIFAR-10 twice: the first read fills the cache, the second reads the cache.

    python -m bench.data_load --data-dir ../shared/data

Prints one JSON line. Uses a fresh cache folder each run, so the first figure is a cold read.
"""

import argparse
import json
import os
import tempfile
import time

import data


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", required=True)
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["CIFAR10_CACHE"] = cache
        times = []
        for _ in range(2):
            start = time.perf_counter()
            try:
                d = data.load_cifar10(a.data_dir, allow_download=False, verbose=False)
            except data.DataError as e:
                raise SystemExit(f"error: {e}") from None
            times.append(time.perf_counter() - start)
    print(json.dumps({"source": d.source, "train_images": len(d.x_train), "test_images": len(d.x_test),
                      "first_load_s": round(times[0], 2), "second_load_s": round(times[1], 2)}))


if __name__ == "__main__":
    main()
