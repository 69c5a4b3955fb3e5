from test_ensemble import tiny_runs, members  # noqa
import sys, json, collections
sys.path.insert(0, "tests")
import numpy as np
import pytest
def test_probe(tiny_runs, members):
    from cifar_files import images_for
    rng = np.random.default_rng(0)
    for r in tiny_runs:
        print(json.load(open(r / "metrics.json"))["val_accuracy"], json.load(open(r / "metrics.json"))["test_accuracy"])
    import ensemble
    x1 = rng.integers(0, 256, (25, 32, 32, 3), np.uint8)
    x2 = images_for(rng.integers(0, 10, 25), rng)
    for x in (x1, x2):
        p = ensemble.combine([ensemble.predict_probs(m, x) for m in members])
        print(collections.Counter(p.argmax(1).tolist()), np.sort(p.max(1))[:5])
