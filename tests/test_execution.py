"""execution.py: how a step executes on this machine, and the one builder of a model ready to train."""

import numpy as np
import pytest

import distribute
import execution
from bench import train_speed
from errors import TrainError
from settings import resolve_settings


def test_where_the_batches_are_computed():
    settings, _ = resolve_settings("lenet")
    cpu, gpu = (distribute.Placement(None, kind, ["d"], 1, True, 0, 1) for kind in ("default", "one_device"))
    two = distribute.Placement(None, "mirrored", ["a", "b"], 2, True, 0, 1)
    assert execution.choose_batches("auto", settings, cpu) == "precomputed"
    assert execution.choose_batches("auto", settings, gpu) == "streamed"  # the pipeline hides behind a GPU's step
    assert execution.choose_batches("auto", settings, two) == "streamed"
    assert execution.choose_batches("auto", {**settings, "augment": "none"}, cpu) == "precomputed"
    for other in ({"augment": "kaggle"}, {"augment": "shift"}, {"cutout": 16}, {"mixup": 0.2}):  # per batch only
        assert execution.choose_batches("auto", {**settings, **other}, cpu) == "streamed"
        with pytest.raises(TrainError, match="use --batches streamed"):
            execution.choose_batches("precomputed", {**settings, **other}, cpu)
    assert execution.choose_batches("precomputed", settings, gpu) == "precomputed"
    assert execution.choose_batches("streamed", settings, cpu) == "streamed"
    with pytest.raises(TrainError, match="feeds one device; this run has 2 replicas"):
        execution.choose_batches("precomputed", settings, two)
    with pytest.raises(TrainError, match="--batches must be one of auto, precomputed, streamed, numpy"):
        execution.choose_batches("ahead", settings, cpu)


def test_other_backends_and_numpy_batches_take_the_numpy_pipeline():
    settings, _ = resolve_settings("lenet")
    cpu = distribute.Placement(None, "default", ["cpu:0"], 1, True, 0, 1)
    for backend in ("jax", "torch"):
        assert execution.choose_batches("auto", settings, cpu, backend) == "numpy"
        assert execution.choose_batches("numpy", {**settings, "cutout": 8, "mixup": 0.2}, cpu, backend) == "numpy"
        for batches in ("precomputed", "streamed"):
            with pytest.raises(TrainError, match=f"--batches {batches} is a tf.data pipeline; on {backend} the batches"):
                execution.choose_batches(batches, settings, cpu, backend)
        for augment in ("kaggle", "shift"):
            with pytest.raises(TrainError, match=f"--augment {augment} uses TensorFlow's image ops; the numpy pipeline"):
                execution.choose_batches("auto", {**settings, "augment": augment}, cpu, backend)
    assert execution.choose_batches("numpy", settings, cpu, "tensorflow") == "numpy"  # TensorFlow takes it too


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_what_another_backend_does_not_do_is_refused_before_it_starts(backend, monkeypatch):
    """Checked before any device is touched (nothing of the other backend is imported here)."""
    s, _ = resolve_settings("lenet")
    monkeypatch.setattr(distribute, "BACKEND", backend)
    refusals = [({"deterministic": True}, f"--deterministic is not for the {backend} backend: it is TensorFlow's"),
                ({"keras_batch_norm": True}, f"--keras-batch-norm is not for the {backend} backend")]
    if backend == "torch":
        refusals.append(({"jit": True}, "--jit is not for the torch backend: Keras' PyTorch step runs eagerly"))
    for options, message in refusals:
        with pytest.raises(TrainError, match=message):
            execution.plan(s, **options)
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"index": 0}}')
    with pytest.raises(distribute.DistributeError, match=f"TF_CONFIG: training over several machines is "
                                                         f"TensorFlow's MultiWorkerMirroredStrategy; not available on {backend}"):
        distribute.place()
    monkeypatch.delenv("TF_CONFIG")
    if backend == "torch":
        with pytest.raises(distribute.DistributeError, match="--devices 2: Keras' PyTorch backend trains on one device"):
            distribute.place(2)
    monkeypatch.setattr(distribute, "BACKEND", "numpy")
    with pytest.raises(distribute.DistributeError, match="KERAS_BACKEND=numpy: runs train on tensorflow, jax, torch"):
        distribute.place()


# --------------------------------------------------------------------------- a run folder under stress

def test_train_pads_on_cpus_by_default_and_not_on_gpus():
    cpu = distribute.Placement(None, "default", ["/cpu:0"], 1, True, 0, 1)
    cpus = distribute.Placement(None, "mirrored", ["/device:CPU:0", "/device:CPU:1"], 2, True, 0, 1)
    gpu = distribute.Placement(None, "one_device", ["/gpu:0"], 1, True, 0, 1)
    assert [execution.choose_channel_padding("auto", p) for p in (cpu, cpus, gpu)] == [("on", 8), ("on", 8), ("off", None)]
    assert execution.choose_channel_padding("on", gpu) == ("on", 8)
    assert execution.choose_channel_padding("off", cpu) == ("off", None)
    # oneDNN's bfloat16 kernels block channels by 16; an explicit multiple is taken as given
    assert execution.choose_channel_padding("auto", cpu, "mixed_bfloat16") == ("on", 16)
    assert execution.choose_channel_padding("auto", cpu, "mixed_float16") == ("on", 8)
    assert execution.choose_channel_padding("16", cpu) == ("on", 16)
    assert execution.choose_channel_padding("8", cpu, "mixed_bfloat16") == ("on", 8)
    with pytest.raises(TrainError, match="--channel-padding must be one of auto, on, off, 8, 16, not 'yes'"):
        execution.choose_channel_padding("yes", cpu)


def test_the_benchmark_builds_the_model_the_loop_builds():
    """bench/train_speed.py's model is execution.build_model's: the same layers, weights and compiled step."""
    s, sources = resolve_settings("lenet", batch_size=8, epochs=1)
    plan = execution.plan(s, sources, steps_per_execution=1)
    with execution.scope(plan):
        built = execution.build_model(s, plan, steps_per_epoch=3)
    measured, _, setup = train_speed.prepare("lenet", batch=8, steps=2, warmup=1, steps_per_execution=1)
    assert measured.get_config() == built.get_config()
    for a, b in zip(measured.get_weights(), built.get_weights()):
        np.testing.assert_array_equal(a, b)  # the same seed, the same initialisation
    keys = ("batch_norm", "channel_padding", "channel_multiple", "batches")
    assert [setup[k] for k in keys] == [plan.record[k] for k in keys]


def test_bad_execution_options_are_one_line_errors():
    s, _ = resolve_settings("lenet")
    with pytest.raises(TrainError, match="--steps-per-execution must be a whole number >= 1, not 0"):
        execution.plan(s, steps_per_execution=0)
    with pytest.raises(TrainError, match="--batches must be one of auto, precomputed, streamed, numpy, not 'ahead'"):
        execution.plan(s, batches="ahead")
    plan = execution.plan(s)  # one device here: train.py's defaults, on record
    assert plan.record["steps_per_execution"] == execution.STEPS_PER_EXECUTION and plan.record["replicas"] == 1
