"""The fused batch-norm kernel computes what Keras' BatchNormalization computes, and saves as it."""

import json
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import data
import execution
import fused
import loop
from settings import resolve_settings

rng = np.random.default_rng(0)


def two_models(layer_kwargs, shape=(6, 5, 7), dtype=None):
    """The same small model twice, with equal random weights; the second one fused."""
    def build():
        inputs = keras.Input(shape)
        x = keras.layers.Conv2D(shape[-1], 3, padding="same", dtype=dtype)(inputs)
        x = keras.layers.BatchNormalization(dtype=dtype, **layer_kwargs)(x)
        return keras.Model(inputs, keras.layers.Flatten(dtype=dtype)(x))
    plain, fast = build(), build()
    weights = [rng.normal(size=w.shape).astype("float32") for w in plain.get_weights()]
    weights[-1] = np.abs(weights[-1]) + 0.5  # moving variance
    plain.set_weights(weights)
    fast.set_weights(weights)
    return plain, fast


def forward_backward(model, x):
    """Training-mode forward and the gradients of a loss that weights the outputs unevenly (tensors)."""
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = model(x, training=True)
        loss = tf.reduce_sum(tf.cast(y, "float32") * tf.sin(tf.range(y.shape[-1], dtype="float32")))
    return y, tape.gradient(loss, [x] + model.trainable_variables)


def step(model, x):
    """forward_backward's results as numpy arrays."""
    y, grads = forward_backward(model, x)
    return y.numpy(), [g.numpy() for g in grads]


def assert_close(a, b, rtol, floor=1e-6):
    scale = max(float(np.abs(a).max()), floor)
    assert float(np.abs(np.asarray(a, np.float64) - b).max()) <= rtol * scale


@pytest.mark.parametrize("layer_kwargs", [
    dict(momentum=0.9, epsilon=1e-5),
    dict(momentum=0.99, epsilon=1e-3, scale=False),
    dict(center=False),
])
def test_fused_matches_keras_forward_backward_and_statistics(layer_kwargs):
    plain, fast = two_models(layer_kwargs)
    assert fused.use_fused_batch_norm(fast) == 1
    x = (rng.normal(size=(9, 6, 5, 7)) * 3 + 2).astype("float32")
    (y_plain, g_plain), (y_fast, g_fast) = step(plain, x), step(fast, x)
    assert_close(y_plain, y_fast, 1e-5)
    for a, b in zip(g_plain, g_fast):
        # floor: the convolution bias' gradient is zero in exact arithmetic (a batch norm follows)
        assert_close(a, b, 1e-4, floor=1e-2)
    # The moving statistics moved, and moved the same way (the biased batch variance, as Keras).
    for a, b, before in zip(plain.layers[2].non_trainable_weights, fast.layers[2].non_trainable_weights,
                            two_models(layer_kwargs)[0].layers[2].non_trainable_weights):
        assert not np.allclose(a.numpy(), before.numpy())
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    assert_close(plain(x, training=False).numpy(), fast(x, training=False).numpy(), 1e-5)


def test_fused_keeps_statistics_in_float32_under_mixed_precision():
    plain, fast = two_models({}, dtype="mixed_bfloat16")
    fused.use_fused_batch_norm(fast)
    x = rng.normal(size=(8, 6, 5, 7)).astype("float32")
    (y_plain, _), (y_fast, _) = step(plain, x), step(fast, x)
    assert y_fast.dtype == y_plain.dtype
    np.testing.assert_allclose(y_plain.astype(np.float32), y_fast.astype(np.float32), atol=0.05)
    bn = fast.layers[2]
    assert bn.moving_mean.dtype == "float32"
    np.testing.assert_allclose(bn.moving_mean.numpy(), plain.layers[2].moving_mean.numpy(), rtol=1e-3, atol=1e-3)


def test_fused_takes_bfloat16_activations_without_casting_them():
    """Under mixed_bfloat16 the kernel reads and writes the bfloat16 activations (a float32 copy of
    each, forward and backward, cost more than the kernel: BENCHMARKS.md), computing in float32 as
    Keras does: outputs and gradients as Keras' to bfloat16's rounding."""
    plain, fast = two_models({}, dtype="mixed_bfloat16")
    fused.use_fused_batch_norm(fast)
    x = rng.normal(size=(8, 6, 5, 7)).astype("float32")
    graph = tf.function(lambda x: forward_backward(fast, x)).get_concrete_function(
        tf.TensorSpec(x.shape, "float32")).graph
    kernels = {op.type: op.get_attr("T") for op in graph.get_operations() if op.type.startswith("FusedBatchNorm")}
    assert kernels == {"FusedBatchNormV3": tf.bfloat16, "FusedBatchNormGradV3": tf.bfloat16}
    (y_plain, g_plain), (y_fast, g_fast) = step(plain, x), step(fast, x)
    assert y_fast.dtype == y_plain.dtype
    # bfloat16 keeps 8 significant bits: 2**-8 relative per rounding, a few roundings apart
    assert_close(y_plain.astype(np.float32), y_fast.astype(np.float32), 2e-2)
    for a, b in zip(g_plain, g_fast):
        assert_close(a.astype(np.float32), b.astype(np.float32), 3e-2, floor=1e-2)


def test_layers_the_kernel_does_not_cover_keep_keras_implementation():
    inputs = keras.Input((5, 4, 3))
    channels_first = keras.layers.BatchNormalization(axis=1)(inputs)
    flat = keras.layers.BatchNormalization()(keras.layers.Flatten()(channels_first))
    model = keras.Model(inputs, flat)
    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    assert fused.use_fused_batch_norm(twin) == 2  # switched, but each falls back at call time
    x = rng.normal(size=(4, 5, 4, 3)).astype("float32")
    # Exact: the fallback runs Keras' own ops, the very kernels of the stock model, on the same CPU.
    np.testing.assert_array_equal(step(model, x)[0], step(twin, x)[0])


def test_saved_file_is_stock_keras_and_reloads_without_the_project(tmp_path):
    _, fast = two_models({})
    fused.use_fused_batch_norm(fast)
    x = rng.normal(size=(3, 6, 5, 7)).astype("float32")
    path = tmp_path / "m.keras"
    fast.save(path)
    with zipfile.ZipFile(path) as z:
        config = json.loads(z.read("config.json"))
    layer = config["config"]["layers"][2]
    assert (layer["module"], layer["class_name"]) == ("keras.layers", "BatchNormalization")
    loaded = keras.saving.load_model(path)
    assert "call" not in vars(loaded.layers[2])  # Keras' own implementation after a plain load
    np.testing.assert_allclose(loaded.predict(x, verbose=0), fast.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


def test_train_builds_fused_models_and_trains_them_as_keras_would():
    """A few SGD steps of ResNet-20 with and without the kernel end at the same weights."""
    settings, _ = resolve_settings("resnet20", batch_size=16, epochs=1)
    images = rng.integers(0, 256, (48, 32, 32, 3), np.uint8)
    labels = np.arange(48) % 10
    weights = []
    for fuse in (True, False):
        plan = execution.plan(settings, keras_batch_norm=not fuse, steps_per_execution=1, channel_padding="off")
        model = execution.build_model(settings, plan, steps_per_epoch=3)
        bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
        assert len(bns) == 19 and all(("call" in vars(l)) == fuse for l in bns)
        model.fit(data.make_dataset(images, labels, 16, augment="none", preprocess_mode=settings["preprocess"]),
                  epochs=1, verbose=0, shuffle=False)
        weights.append(model.get_weights())
    # Three steps at lr 0.1 carry the two kernels' rounding differences into the weights: 1.5e-4 for
    # one weight of 432 on the AMX machine kind: 1e-3 of each tensor's scale, at least 1e-4.
    for a, b in zip(*weights):
        assert_close(a, b, rtol=1e-3, floor=0.1)
    plan = execution.plan(settings, steps_per_execution=1, channel_padding="off")
    assert not np.allclose(weights[0][0], execution.build_model(settings, plan, steps_per_epoch=3).get_weights()[0])


def test_train_fuses_new_resumed_and_evaluated_models_unless_told_not_to(tiny_cifar, tmp_path, monkeypatch):
    root, _ = tiny_cifar
    calls = []
    original = fused.use_fused_batch_norm
    monkeypatch.setattr(fused, "use_fused_batch_norm", lambda model: calls.append(model.name) or original(model))
    common = dict(data_dir=root, verbose=0, val_split=40, batch_size=32)
    for keras_batch_norm, expected in ((False, 2 + 2), (True, 0)):
        calls.clear()
        run = tmp_path / f"keras-bn-{keras_batch_norm}"
        loop.train("lenet", run_dir=run, epochs=1, keras_batch_norm=keras_batch_norm, **common)
        (run / "metrics.json").unlink()  # as if killed after the last checkpoint, before the test
        loop.train("lenet", run_dir=run, epochs=1, keras_batch_norm=keras_batch_norm, **common)  # resumes
        # built, evaluated; then loaded to resume, evaluated
        assert len(calls) == expected
        config = json.loads((run / "config.json").read_text())
        assert config["execution"]["batch_norm"] == ("keras" if keras_batch_norm else "fused")
