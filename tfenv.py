"""TensorFlow's load-time settings for this project: import this module before keras or tensorflow.

TensorFlow reads these environment variables once, when it loads; each is only a default, so a
value already set in the environment wins.

- `TF_ENABLE_ONEDNN_OPTS=1`: TensorFlow's oneDNN kernels (convolutions, matrix products, their
  gradients, fused with the bias and activation). TensorFlow turns them on by itself only on CPUs
  with AVX512-VNNI, AVX512-BF16, AVX-VNNI or AMX; on the AVX2 CPUs it leaves them off, and there
  its own kernels train LeNet and ResNet-20 over twice as slowly (BENCHMARKS.md). oneDNN sums in a
  different order, so results differ from the other kernels' in the last bits (TensorFlow says as
  much when it loads). `TF_ENABLE_ONEDNN_OPTS=0` in the environment restores TensorFlow's choice.
- `TF_CPP_MIN_LOG_LEVEL=2`: TensorFlow's C++ informational messages stay quiet.
- `KERAS_BACKEND=tensorflow`: the default backend. Without it, Keras takes its backend from
  `~/.keras/keras.json`, which other projects set to "jax" or "torch"; so a run trains on another
  backend only where the environment says so (`KERAS_BACKEND=jax`: README, "Backends"); there
  train.py's modules import no TensorFlow (Keras' own seeding imports it where it is installed).
  A backend Keras cannot load (an unknown name, or a library not installed) is one error line
  and exit status 2 here, before Keras would fail on it with a traceback.
"""

import importlib.util
import os
import sys

DEFAULTS = {"TF_ENABLE_ONEDNN_OPTS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"}
KERAS_BACKENDS = ("tensorflow", "jax", "torch", "numpy", "openvino")  # what Keras 3 can load; runs train on the first 3

# True when TensorFlow was imported before this module: then the settings above came too late.
LOADED_TOO_LATE = "tensorflow" in sys.modules
for _name, _value in DEFAULTS.items():
    os.environ.setdefault(_name, _value)


def _missing_backend(backend):
    """Why Keras could not load `backend`, or None: said here, before Keras fails with a traceback."""
    if backend not in KERAS_BACKENDS:
        return f"KERAS_BACKEND={backend}: Keras' backends are {', '.join(KERAS_BACKENDS)}"
    if backend != "numpy" and sys.modules.get(backend) is None and importlib.util.find_spec(backend) is None:
        pinned = " (pip install -r requirements.txt installs it)" if backend in ("tensorflow", "jax", "torch") else ""
        return f"KERAS_BACKEND={backend}: {backend} is not installed here{pinned}"
    return None


if (_why := _missing_backend(os.environ["KERAS_BACKEND"])) is not None:
    print(f"error: {_why}", file=sys.stderr)
    raise SystemExit(2)

