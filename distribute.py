"""Which devices a run trains on, for the Keras backend in use.

TensorFlow (the default backend): its own distribution strategies, chosen for the machine.
- `TF_CONFIG` set (the standard cluster description): `MultiWorkerMirroredStrategy` over the
  workers it lists, each using its local GPUs (or its CPU). Worker 0 (or the task of type
  "chief") is the chief: only it writes the run folder; the other workers write theirs to a
  temporary folder that is removed at the end, as TensorFlow's multi-worker guide recommends.
- Otherwise, GPUs visible: `MirroredStrategy` over all of them, or the first `devices`; one GPU:
  `OneDeviceStrategy`.
- No GPU: the default (single-device) strategy; with `devices=N > 1`, the CPU is split into N
  logical devices and `MirroredStrategy` runs over them, so the multi-device code path can be
  exercised (and tested) anywhere. On one CPU it is slower than one device, as expected.
Under any strategy but the default one, Keras' `fit` and `evaluate` need two fixes of their own
code (patches.patch_keras_fit), applied by `place`.

JAX (`KERAS_BACKEND=jax`): Keras' own distribution API, `keras.distribution.DataParallel`, over
all GPUs or the first `devices`; with no GPU and `devices=N > 1`, over N XLA host devices
(`--xla_force_host_platform_device_count`, added to XLA_FLAGS here before JAX starts), the
counterpart of TensorFlow's logical CPU devices. JAX compiles the step for the global batch as
one program sharded over the devices, so batch normalization's statistics are those of the
global batch, as a synchronised batch norm's would be; TensorFlow's MirroredStrategy computes them
over each replica's share. Several machines (`TF_CONFIG`) are TensorFlow's and refused here.

PyTorch (`KERAS_BACKEND=torch`): one device, the GPU where Keras finds one, else the CPU;
Keras has no distribution API for it, so several devices and `TF_CONFIG` are refused.

On every backend `--batch-size` is the global batch: each of R replicas computes on batch / R
images and the gradients are summed, so a run on 8 GPUs with the recipe's batch follows the
recipe exactly.
"""

import contextlib
import json
import os
import platform
from dataclasses import dataclass

import tfenv  # noqa: F401  (before keras: TensorFlow reads its settings when it loads)
import keras

import patches

BACKEND = keras.backend.backend()
BACKENDS = ("tensorflow", "jax", "torch")  # the backends a run trains on
if BACKEND == "tensorflow":  # the other backends' processes may have no TensorFlow installed
    import tensorflow as tf


class DistributeError(Exception):
    """The requested devices or precision are not available here."""


@dataclass
class Placement:
    strategy: object     # a tf.distribute.Strategy, a keras.distribution.Distribution, or None (one device)
    kind: str            # "default", "one_device", "mirrored", "multi_worker"; JAX: "data_parallel"
    devices: list        # device names of this worker's replicas
    replicas: int        # replicas in sync, over all workers
    is_chief: bool
    worker_index: int
    num_workers: int

    def scope(self):
        """The strategy's (or distribution's) scope: models built, loaded and trained inside it use its devices."""
        return contextlib.nullcontext() if self.strategy is None else self.strategy.scope()


JOBS = ("chief", "worker")  # MultiWorkerMirroredStrategy's: no parameter servers, no evaluator


def _cluster():
    """(is_chief, task index, workers) of TF_CONFIG, every part checked (ValueError saying which) before
    TensorFlow sees it: its own errors for these are tracebacks, and some only come once it connects."""
    config = json.loads(os.environ["TF_CONFIG"])
    if not isinstance(config, dict):
        raise ValueError("not a JSON object")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise ValueError("no 'cluster' object listing the workers")
    for job, tasks in cluster.items():
        if job not in JOBS:
            raise ValueError(f"job {job!r}: MultiWorkerMirroredStrategy trains with 'chief' and 'worker' jobs only")
        if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) and ":" in t for t in tasks):
            raise ValueError(f"cluster.{job} must be a list of 'host:port' strings; got {tasks!r}")
    if len(cluster.get("chief", [])) > 1:
        raise ValueError(f"a cluster has one chief; cluster.chief lists {len(cluster['chief'])}")
    if not isinstance(task, dict):
        raise ValueError("no 'task' object saying which of the cluster's tasks this process is")
    kind, index = task.get("type", "worker"), task.get("index", 0)
    if kind not in cluster:
        raise ValueError(f"task.type {kind!r} is not a job of the cluster ({', '.join(cluster)})")
    if isinstance(index, str) and index.isdigit():
        index = int(index)
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(cluster[kind]):
        raise ValueError(f"task.index {index!r} is not one of job {kind}'s tasks (0 to {len(cluster[kind]) - 1})")
    workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
    is_chief = kind == "chief" or (kind == "worker" and index == 0 and "chief" not in cluster)
    return is_chief, index, workers


def _split_cpu(n):
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError:
        have = len(tf.config.list_logical_devices("CPU"))
        if have < n:
            raise DistributeError(f"--devices {n}: TensorFlow has already started with {have} CPU device(s); "
                                  "split the CPU before anything else runs (a fresh process)") from None
    return [d.name for d in tf.config.list_logical_devices("CPU")[:n]]


def place(devices=None):
    """The strategy for this process; `devices` = how many local devices (None: all GPUs, or 1 CPU)."""
    if devices is not None and devices < 1:
        raise DistributeError(f"--devices must be a positive whole number; got {devices}")
    if BACKEND not in BACKENDS:
        raise DistributeError(f"KERAS_BACKEND={BACKEND}: runs train on {', '.join(BACKENDS)}")
    if BACKEND != "tensorflow" and os.environ.get("TF_CONFIG"):
        raise DistributeError(f"TF_CONFIG: training over several machines is TensorFlow's MultiWorkerMirroredStrategy; "
                              f"not available on {BACKEND}: unset TF_CONFIG, or train on TensorFlow")
    if BACKEND == "jax":
        return _place_jax(devices)
    if BACKEND == "torch":
        return _place_torch(devices)
    if os.environ.get("TF_CONFIG"):
        try:
            is_chief, index, workers = _cluster()
        except (ValueError, TypeError, AttributeError) as e:
            raise DistributeError(f"TF_CONFIG is not a valid cluster description ({e})") from None
        if devices is not None:  # MultiWorkerMirroredStrategy takes every local GPU, or the CPU, itself
            raise DistributeError(f"--devices {devices} with TF_CONFIG: each worker trains on all its GPUs (or its "
                                  "CPU); --devices chooses the devices of one machine without TF_CONFIG")
        patches.patch_keras_fit()
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        local = list(strategy.extended.worker_devices)
        return Placement(strategy, "multi_worker", local, strategy.num_replicas_in_sync, is_chief, index, workers)
    gpus = [f"/gpu:{i}" for i in range(len(tf.config.list_physical_devices("GPU")))]
    if gpus:
        n = len(gpus) if devices is None else devices
        if n > len(gpus):
            raise DistributeError(f"--devices {n}: only {len(gpus)} GPU(s) visible")
        patches.patch_keras_fit()
        if n == 1:
            return Placement(tf.distribute.OneDeviceStrategy(gpus[0]), "one_device", gpus[:1], 1, True, 0, 1)
        return Placement(tf.distribute.MirroredStrategy(gpus[:n]), "mirrored", gpus[:n], n, True, 0, 1)
    if devices and devices > 1:
        names = _split_cpu(devices)
        patches.patch_keras_fit()
        return Placement(tf.distribute.MirroredStrategy(names), "mirrored", names, devices, True, 0, 1)
    return Placement(tf.distribute.get_strategy(), "default", ["/cpu:0"], 1, True, 0, 1)


HOST_DEVICES_FLAG = "--xla_force_host_platform_device_count"


def _place_jax(devices):
    if devices and devices > 1 and HOST_DEVICES_FLAG not in os.environ.get("XLA_FLAGS", ""):
        # Read when JAX starts its CPU backend, which nothing has done yet in a fresh process; it only
        # splits the CPU, so it changes nothing where GPUs train.
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {HOST_DEVICES_FLAG}={devices}".strip()
    import jax  # the backend's own library: Keras imported it already

    gpus = jax.devices() if jax.default_backend() == "gpu" else []
    if gpus:
        n = len(gpus) if devices is None else devices
        if n > len(gpus):
            raise DistributeError(f"--devices {n}: only {len(gpus)} GPU(s) visible")
        chosen = gpus[:n]
    else:
        n = devices or 1
        chosen = jax.devices("cpu")[:n]
        if len(chosen) < n:
            raise DistributeError(f"--devices {n}: JAX has already started with {len(chosen)} CPU device(s); split the "
                                  f"CPU before anything else runs (a fresh process), or set XLA_FLAGS={HOST_DEVICES_FLAG}={n}")
    names = [f"{d.platform}:{d.id}" for d in chosen]
    if n == 1:
        return Placement(None, "one_device" if gpus else "default", names, 1, True, 0, 1)
    return Placement(keras.distribution.DataParallel(devices=names), "data_parallel", names, n, True, 0, 1)


def _place_torch(devices):
    if devices and devices > 1:
        raise DistributeError(f"--devices {devices}: Keras' PyTorch backend trains on one device (Keras has no "
                              "distribution API for it); train on jax or tensorflow for several")
    import torch

    gpu = torch.cuda.is_available()
    return Placement(None, "one_device" if gpu else "default", ["cuda:0" if gpu else "cpu:0"], 1, True, 0, 1)


def gpu_count():
    """GPUs the backend in use sees."""
    if BACKEND == "jax":
        import jax
        return jax.device_count() if jax.default_backend() == "gpu" else 0
    if BACKEND == "torch":
        import torch
        return torch.cuda.device_count()
    return len(tf.config.list_physical_devices("GPU"))


def check_jit(placement):
    """XLA cannot compile one step over variables mirrored on several logical CPU devices
    (TensorFlow's "tf.Variable on a different device" limitation); say so instead of failing later."""
    if placement.kind == "mirrored" and all("CPU" in d.upper() for d in placement.devices):
        raise DistributeError(f"--jit cannot be combined with {placement.replicas} logical CPU devices (XLA "
                              "cannot compile variables mirrored over CPU devices); drop --jit or --devices")


def cpu_has_bfloat16():
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); without it, it is emulated."""
    if platform.system() != "Linux":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def mixed_precision_policy():
    """The Keras mixed-precision policy for this machine, or DistributeError saying why there is none."""
    if gpu_count():
        return "mixed_float16"
    if cpu_has_bfloat16():
        return "mixed_bfloat16"
    raise DistributeError("--mixed-precision: no GPU, and this CPU has no native bfloat16 (avx512_bf16 or "
                          "amx_bf16), so it would run slower than float32; train without it here")
