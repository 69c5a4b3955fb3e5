"""How a training step executes on this machine, and the one function that builds a model ready to train.

`plan(...)` turns the execution options (devices, XLA, precision, batch-norm kernel, steps per
call, where the batches are computed, channel padding) into an `Execution` for this machine:
the strategy, the precision policy and a record of every choice (config.json and metrics.json
keep it, so the record is what ran). `build_model(settings, execution, steps_per_epoch)` builds
and compiles the model of the settings for it; `adapt(model, execution)` prepares a model
loaded from a file (a resumed or evaluated one) the same way. train.py's loop, the benchmarks
and the ensembles call these; none repeats the sequence.

The options resume freely: a run started on one machine may continue on another with other
choices; the arithmetic is the same (fused.py, padded.py say how close).
"""

import contextlib
import os
import platform
from dataclasses import dataclass

import tfenv  # noqa: F401  (before keras: TensorFlow reads its settings when it loads)
import keras

import data
import distribute
import fused
import models
import numpy_pipeline
import padded
import patches
import settings as settings_
from errors import TrainError

if distribute.BACKEND == "tensorflow":  # the other backends' processes may have no TensorFlow installed
    import tensorflow as tf

# Training steps per call into TensorFlow: fewer returns to Python, the same steps. It makes a
# LeNet epoch faster here and does not change the larger models' speed (BENCHMARKS.md).
STEPS_PER_EXECUTION = 16
BATCHES = ("auto", "precomputed", "streamed", "numpy")
CHANNEL_PADDING = ("auto", "on", "off", "8", "16")
OPTIONS = ("devices", "jit", "deterministic", "keras_batch_norm", "steps_per_execution", "batches",
           "channel_padding")


@dataclass
class Execution:
    """Where and how the steps of one run execute; `record` is what config.json stores."""

    placement: distribute.Placement
    policy: str
    record: dict

    @property
    def jit(self):
        return self.record["jit"]

    @property
    def fused(self):
        return self.record["batch_norm"] == "fused"

    @property
    def padded(self):
        return self.record["channel_padding"] == "on"

    @property
    def channel_multiple(self):
        return self.record["channel_multiple"]

    @property
    def steps_per_execution(self):
        return self.record["steps_per_execution"]

    @property
    def batches(self):
        return self.record["batches"]


def add_arguments(parser):
    """The execution options' flags (train.py and bench/train_speed.py share them)."""
    parser.add_argument("--devices", type=int,
                        help="local devices: the first N GPUs, or N logical CPU devices (on JAX: XLA host devices) "
                             "where there is no GPU (default: all GPUs, or the CPU); several machines: set TF_CONFIG "
                             "(TensorFlow only); PyTorch trains on one device")
    parser.add_argument("--jit", action="store_true", help="compile the training step with XLA")
    parser.add_argument("--deterministic", action="store_true",
                        help="TensorFlow op determinism: the same seed on the same machine gives the same numbers")
    parser.add_argument("--keras-batch-norm", action="store_true",
                        help="Keras' own batch-norm ops instead of TensorFlow's fused kernel (slower; the "
                             "same arithmetic, see fused.py)")
    parser.add_argument("--steps-per-execution", type=int, metavar="N",
                        help=f"training steps per call into TensorFlow: the same steps with less per-step "
                             f"overhead, progress shown per N steps (default {STEPS_PER_EXECUTION} on one "
                             f"device; 1, the only value Keras supports, on several)")
    parser.add_argument("--batches", choices=BATCHES, default="auto",
                        help="where each epoch's training batches are computed: precomputed, all at once before "
                             "the epoch (memory: ~2 GB more for CIFAR-10), or streamed, beside the training step; "
                             "the same batches either way (default auto: precomputed on the CPU alone, streamed on "
                             "GPUs and where --augment kaggle, --cutout or --mixup is used); numpy: the pipeline of "
                             "Keras' other backends (numpy_pipeline.py), the only one there")
    parser.add_argument("--channel-padding", choices=CHANNEL_PADDING, default="auto",
                        help="compute convolutions and batch norms whose channels the CPU's vectors do not divide "
                             "(LeNet's 6, DenseNet's 36, 60, ...) with zero channels added: the same outputs, a "
                             "faster step on CPUs (default auto: on where the step runs on CPUs, off on GPUs; on: "
                             "to a multiple of 16 under --mixed-precision's bfloat16, 8 otherwise; 8 or 16: to that "
                             "multiple; see padded.py)")
    return parser


def plan(settings, sources=None, *, devices=None, jit=False, deterministic=False, keras_batch_norm=False,
         steps_per_execution=None, batches="auto", channel_padding="auto"):
    """The Execution of a run with the resolved `settings` on this machine; TrainError where it cannot run so.

    `devices` and `jit` choose where and how the steps run (see distribute.py); `deterministic`
    turns on TensorFlow's op determinism (for the rest of the process); `keras_batch_norm` keeps
    Keras' own batch-norm ops instead of the fused kernel (fused.py); `steps_per_execution`
    training steps per call (default STEPS_PER_EXECUTION on one replica, 1 on several);
    `batches` and `channel_padding`: see choose_batches and choose_channel_padding.
    On Keras' other backends the step is compiled as Keras does by default there (XLA on JAX),
    with Keras' own batch norm and no padding (both are TensorFlow kernels), and the batches come
    from the numpy pipeline (numpy_pipeline.py).
    """
    backend = distribute.BACKEND
    on_tensorflow = backend == "tensorflow"
    if steps_per_execution is not None and not (isinstance(steps_per_execution, int) and steps_per_execution >= 1):
        raise TrainError(f"--steps-per-execution must be a whole number >= 1, not {steps_per_execution!r}")
    refused = [(flag, why) for flag, given, why in (
        ("--jit", jit and backend == "torch", "Keras' PyTorch step runs eagerly here (torch.compile is not measured)"),
        ("--deterministic", deterministic and not on_tensorflow,
         "it is TensorFlow's op determinism (jax repeats a CPU run exactly without it; on GPUs set "
         "XLA_FLAGS=--xla_gpu_deterministic_ops=true)"),
        ("--keras-batch-norm", keras_batch_norm and not on_tensorflow, "Keras' batch norm is the only one there"),
    ) if given]
    if refused:
        flag, why = refused[0]
        raise TrainError(f"{flag} is not for the {backend} backend: {why}; leave it out")
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    try:
        placement = distribute.place(devices)
        if jit and on_tensorflow:
            distribute.check_jit(placement)
        policy = distribute.mixed_precision_policy() if settings["mixed_precision"] else "float32"
    except distribute.DistributeError as e:
        raise TrainError(str(e)) from None
    if placement.replicas > 1 and (steps_per_execution or 1) > 1:
        # Keras 3 fails inside the step with several replicas (keras-team/keras#19246).
        raise TrainError(f"--steps-per-execution {steps_per_execution} does not work with several replicas "
                         f"({placement.replicas} here) in Keras {keras.__version__}; leave it out")
    if backend == "torch" and (steps_per_execution or 1) > 1:
        raise TrainError(f"--steps-per-execution {steps_per_execution}: Keras' PyTorch backend runs one step per "
                         "call; leave it out")
    if steps_per_execution is None:
        steps_per_execution = STEPS_PER_EXECUTION if placement.replicas == 1 and backend != "torch" else 1
    batches = choose_batches(batches, settings, placement, backend)
    channel_padding, channel_multiple = (choose_channel_padding(channel_padding, placement, policy) if on_tensorflow
                                         else ("off", None))
    if settings["batch_size"] % placement.replicas:
        raise TrainError(f"batch size {settings['batch_size']} does not split evenly over "
                         f"{placement.replicas} replicas")
    sources = sources or {}
    record = {"backend": backend, "strategy": placement.kind, "replicas": placement.replicas, "workers": placement.num_workers,
              "devices": placement.devices, "global_batch": settings["batch_size"],
              "per_replica_batch": settings["batch_size"] // placement.replicas,
              "lr": settings["lr"], "lr_source": sources.get("lr"), "precision": policy,
              # JAX compiles every step with XLA; Keras' PyTorch step runs eagerly.
              "jit": bool(jit) if on_tensorflow else backend == "jax",
              "batch_norm": "keras" if keras_batch_norm or not on_tensorflow else "fused",
              "steps_per_execution": steps_per_execution, "batches": batches,
              "channel_padding": channel_padding, "channel_multiple": channel_multiple,
              "onednn": patches.onednn_enabled() if on_tensorflow else None,
              "deterministic": bool(deterministic)}
    return Execution(placement, policy, record)


def choose_batches(batches, settings, placement, backend="tensorflow"):
    """Where each epoch's training batches are computed: "precomputed" (all at once before the
    epoch, data.EpochBatches) or "streamed" (by tf.data beside the training step, data.make_dataset);
    the same batches either way. "auto" precomputes them where the step runs on the CPU alone (one
    device, no GPU): there a pipeline beside the step takes a core from its kernels (LeNet's epoch
    on 2 cores: BENCHMARKS.md). On a GPU the pipeline's CPU work hides behind the step: streamed.
    On the other backends "numpy" (numpy_pipeline.py), the only one there; TensorFlow takes it too."""
    if batches not in BATCHES:
        raise TrainError(f"--batches must be one of {', '.join(BATCHES)}, not {batches!r}")
    if backend != "tensorflow" or batches == "numpy":
        if batches not in ("auto", "numpy"):
            raise TrainError(f"--batches {batches} is a tf.data pipeline; on {backend} the batches come from numpy: "
                             "leave --batches out")
        if settings["augment"] not in numpy_pipeline.AUGMENTATIONS:
            raise TrainError(f"--augment {settings['augment']} uses TensorFlow's image ops; the numpy pipeline "
                             f"(--batches numpy, and every backend but tensorflow) computes --augment "
                             f"{' or '.join(numpy_pipeline.AUGMENTATIONS)}")
        return "numpy"
    covered = settings["augment"] in data.EpochBatches.AUGMENTATIONS and not settings["cutout"] and not settings["mixup"]
    if batches == "precomputed":
        if not covered:
            raise TrainError(f"--batches precomputed computes --augment {' or '.join(data.EpochBatches.AUGMENTATIONS)} "
                             f"without --cutout or --mixup; this run has --augment {settings['augment']}, --cutout "
                             f"{settings['cutout']}, --mixup {settings['mixup']}: use --batches streamed")
        if placement.replicas > 1 or placement.kind == "multi_worker":
            raise TrainError(f"--batches precomputed feeds one device; this run has {placement.replicas} replicas "
                             f"({placement.kind}): use --batches streamed")
        return batches
    if batches == "auto":
        return "precomputed" if covered and placement.kind == "default" else "streamed"
    return batches


def choose_channel_padding(channel_padding, placement, policy="float32"):
    """("on", multiple) or ("off", None): whether padded.pad_channels runs on the model, and to which
    channel multiple. "auto" pads where the step runs on CPUs, where it was measured faster
    (BENCHMARKS.md, "Padded channels" and "Padded batch norms"); GPUs' libraries choose their own
    layouts, and it is not measured there. "on" (and "auto") pads to the multiple of the kernels of
    the precision `policy` (padded.kernel_multiple: 16 for bfloat16, 8 otherwise), "8" and "16" to that one.
    LeNet's convolutions (6 filters) and the DenseNets' batch norms are padded; the other models
    have nothing to pad and run as before."""
    if channel_padding not in CHANNEL_PADDING:
        raise TrainError(f"--channel-padding must be one of {', '.join(CHANNEL_PADDING)}, not {channel_padding!r}")
    if channel_padding == "auto":
        channel_padding = "on" if all("CPU" in d.upper() for d in placement.devices) else "off"
    if channel_padding == "off":
        return "off", None
    return "on", padded.kernel_multiple(policy) if channel_padding == "on" else int(channel_padding)


@contextlib.contextmanager
def scope(execution):
    """The execution's precision policy and strategy scope, for building, loading and training its models."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(execution.policy)
    try:
        with execution.placement.scope():
            yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def build_model(settings, execution, steps_per_epoch):
    """The model of `settings`, compiled with its optimizer, loss and metric, ready to train under
    `execution` (call inside `scope(execution)`). The seed is set first: the same seed, the same weights."""
    keras.utils.set_random_seed(settings["seed"])
    model = models.create_model(settings["model"], num_classes=settings_.num_classes(settings),
                                weight_decay=settings["weight_decay"])
    if keras.mixed_precision.global_policy().compute_dtype != "float32":
        # Logits, softmax and loss in float32: float16 logits overflow and lose small probabilities.
        outputs = keras.layers.Activation("linear", dtype="float32", name="logits_float32")(model.output)
        model = keras.Model(model.input, outputs, name=model.name)
    adapt(model, execution, training=False)
    optimizer = keras.optimizers.SGD(
        learning_rate=settings_.make_schedule(settings, steps_per_epoch),
        momentum=settings["momentum"], nesterov=settings["nesterov"])
    model.compile(optimizer=optimizer,
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True,
                                                            label_smoothing=settings["label_smoothing"]),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")], jit_compile=execution.jit,
                  steps_per_execution=execution.steps_per_execution)
    return model


def adapt(model, execution, training=True):
    """A built or loaded model computing as `execution` says: the fused batch-norm kernel and padded
    channels where chosen, and, for training a compiled one, XLA and the steps per call."""
    if execution.fused:
        fused.use_fused_batch_norm(model)
    if execution.padded:
        padded.pad_channels(model, execution.channel_multiple)
    if training:
        model.jit_compile = execution.jit
        model.steps_per_execution = execution.steps_per_execution
    return model


def machine():
    """The CPU this process runs on: model, cores and its widest vector units (kernels differ by them)."""
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            info = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        cpu, flags = info.get("model name", cpu), set(info.get("flags", "").split())
    except OSError:
        pass
    vectors = next((label for flag, label in (("amx_tile", "AMX"), ("avx512_bf16", "AVX512-BF16"),
                                              ("avx512f", "AVX-512"), ("avx2", "AVX2")) if flag in flags), None)
    return ", ".join([cpu, f"{os.cpu_count()} cores", *([vectors] if vectors else [])])
