"""Padded channels compute what the stock layers compute, only where that can be proven, and save as they."""

import json
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import execution
import fused
import models
import padded
import train
from models.densenet import densenet_bc

rng = np.random.default_rng(0)


def twins(build, fuse=False, multiple=padded.MULTIPLE):
    """The same model twice with equal weights; the second one padded to `multiple` channels (both
    with fused batch norms if `fuse`, as train.py builds them). Returns (stock, padded, count)."""
    stock, fast = build(), build()
    fast.set_weights(stock.get_weights())
    if fuse:
        fused.use_fused_batch_norm(stock)
        fused.use_fused_batch_norm(fast)
    return stock, fast, padded.pad_channels(fast, multiple)


def padded_layers(model):
    """{name: (zero input channels, zero output channels)} of the padded layers of `model`."""
    return {l.name: padded.padded_channels(l) for l in model.layers if padded.padded_channels(l) != (0, 0)}


def assert_padded_equal(actual, expected, ulps=8):
    """Equal to `ulps` float32 ulp of the largest magnitude (why: test_lenet_pads_its_six_channels...)."""
    np.testing.assert_allclose(actual, expected, rtol=0, atol=ulps * np.spacing(np.float32(np.abs(expected).max())))


def step(model, x, traced=False):
    """Training-mode outputs and the gradients of a loss weighting the outputs unevenly."""
    def run(x):
        with tf.GradientTape() as tape:
            y = model(x, training=True)
            loss = tf.reduce_sum(y * tf.sin(tf.range(y.shape[-1], dtype=y.dtype)))
        return y, tape.gradient(loss, model.trainable_variables)
    y, grads = (tf.function(run) if traced else run)(tf.constant(x))
    return y.numpy(), {v.path: g.numpy() for v, g in zip(model.trainable_variables, grads)}


@pytest.mark.parametrize("traced", [False, True])
def test_lenet_pads_its_six_channels_and_computes_the_same(traced):
    stock, fast, count = twins(lambda: models.create_model("lenet", num_classes=10))
    assert count == 1
    assert padded_layers(fast) == {"conv1": (0, 2), "conv2": (2, 0)}
    x = rng.normal(size=(16, 32, 32, 3)).astype("float32")
    (y_stock, g_stock), (y_fast, g_fast) = step(stock, x, traced), step(fast, x, traced)
    # The padded convolutions add only exact zeros to the same products, and on every CPU measured the
    # outputs and kernel gradients came out bit for bit equal. But the 6- and 8-channel convolutions
    # are different oneDNN primitives, which may block and order their float32 sums differently on
    # another CPU: equal to a few ulp of the largest value is what can be promised. A padding error
    # (a zero channel that is not zero, a filter off by one channel) moves values by O(1) of it.
    assert_padded_equal(y_fast, y_stock)
    for path, g in g_stock.items():
        if path.endswith("bias"):  # sums over 8 channels' tensors instead of 6: the last bit may differ
            np.testing.assert_allclose(g_fast[path], g, rtol=1e-5, atol=1e-6 * np.abs(g).max())
        else:
            assert_padded_equal(g_fast[path], g)
    assert fast.count_params() == stock.count_params() == 62006  # the same variables


def doubled(t):
    return t * 2.0


def chain(filters=6, activation="relu", after=("pool", "conv"), strides=1, padding="valid"):
    """Input -> Conv2D(filters) -> the layers named in `after`, in order, each on the previous one's
    output; "flatten" ends in a Dense; "branch" = two convolutions of the same tensor, added;
    "relu", "sigmoid", "softmax" and "doubled" (a function Keras does not name) are activation layers."""
    def build():
        inputs = keras.Input((12, 12, 3))
        x = keras.layers.Conv2D(filters, 3, strides=strides, padding=padding, activation=activation, name="first")(inputs)
        for i, what in enumerate(after):
            if what == "pool":
                x = keras.layers.MaxPooling2D(2, padding="same", name=f"pool{i}")(x)
            elif what == "conv":
                x = keras.layers.Conv2D(4, 2, activation="relu", name=f"conv{i}")(x)
            elif what == "flatten":
                x = keras.layers.Dense(3, name=f"dense{i}")(keras.layers.Flatten(name=f"flatten{i}")(x))
            elif what == "branch":
                a = keras.layers.Conv2D(5, 1, name=f"left{i}")(x)
                b = keras.layers.Conv2D(5, 1, name=f"right{i}")(x)
                x = keras.layers.Add(name=f"add{i}")([a, b])
            elif what == "grouped":
                x = keras.layers.Conv2D(filters, 1, groups=filters // 2 if filters % 2 == 0 else 1, name=f"grouped{i}")(x)
            elif what == "avgpool":
                x = keras.layers.AveragePooling2D(2, name=f"avg{i}")(x)
            elif what == "batchnorm":
                x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
            elif what == "wide":  # 8 filters: nothing to pad in its output
                x = keras.layers.Conv2D(8, 1, name=f"wide{i}")(x)
            elif what == "relu":
                x = keras.layers.ReLU(name=f"relu{i}")(x)
            elif what in ("sigmoid", "softmax"):
                x = keras.layers.Activation(what, name=f"{what}{i}")(x)
            elif what == "doubled":
                x = keras.layers.Activation(doubled, name=f"doubled{i}")(x)
            else:
                raise ValueError(what)
        return keras.Model(inputs, x)
    return build


@pytest.mark.parametrize("build, expected", [
    (chain(), 1),
    (chain(filters=5, activation="tanh", after=("pool", "pool", "branch"), strides=2, padding="same"), 1),
    (chain(filters=8), 0),                                    # already a multiple of 8
    (chain(activation="sigmoid", after=("avgpool", "conv")), 1),  # extra channels 0.5, times zero kernels
    (chain(after=("pool",)), 0),                              # a padded tensor would be the model's output
    (chain(after=("pool", "flatten")), 0),                    # Flatten would mix the extra channels in
    (chain(after=("batchnorm", "conv")), 0),                  # only pooling and activations are passed through
    (chain(after=("grouped",)), 0),                           # a grouped convolution splits channels in groups
    (chain(after=("relu", "pool", "conv")), 1),               # ReLU keeps the extra channels 0
    (chain(activation="linear", after=("sigmoid", "conv")), 1),  # 0.5 there, times zero kernels
    (chain(activation="softmax"), 0),                         # softmax would count the extra channels in
    (chain(after=("pool", "softmax", "conv")), 0),
    (chain(after=("doubled", "conv")), 0),                    # an activation Keras does not name: not known
])
def test_pads_only_chains_it_can_prove_exact(build, expected):
    stock, fast, count = twins(build)
    assert count == expected
    if not expected:
        assert not any("call" in vars(layer) for layer in fast.layers)
    x = rng.normal(size=(4, 12, 12, 3)).astype("float32")
    (y_stock, g_stock), (y_fast, g_fast) = step(stock, x), step(fast, x)
    np.testing.assert_allclose(y_fast, y_stock, rtol=1e-6, atol=1e-6)
    for path, g in g_stock.items():
        np.testing.assert_allclose(g_fast[path], g, rtol=1e-5, atol=1e-6 * max(1.0, np.abs(g).max()))


@pytest.mark.parametrize("build, expected", [
    (chain(after=("batchnorm", "conv")), 1),                  # 6 channels: from the batch norm to the conv
    (chain(after=("batchnorm", "relu", "pool", "conv")), 1),
    (chain(activation="linear", after=("batchnorm", "sigmoid", "conv")), 1),  # 0.5 there, times zero kernels
    (chain(filters=8, after=("batchnorm", "conv")), 0),       # already a multiple of 8
    (chain(after=("batchnorm",)), 0),                         # a padded tensor would be the model's output
    (chain(after=("batchnorm", "relu", "flatten")), 0),
    (chain(after=("batchnorm", "softmax", "conv")), 0),
    (chain(filters=8, after=("wide", "batchnorm", "conv")), 0),
])
def test_pads_fused_batch_norms_where_it_can_prove_exact(build, expected):
    stock, fast, count = twins(build, fuse=True)
    assert count == expected
    bn = fast.get_layer("bn0") if any(l.name == "bn0" for l in fast.layers) else fast.get_layer("bn1")
    assert padded.padded_channels(bn) == (0, -bn.moving_mean.shape[0] % 8 if expected else 0)
    assert fused.is_fused(bn)  # still the fused kernel call, with the extra channels it was asked for
    x = rng.normal(size=(4, 12, 12, 3)).astype("float32")
    (y_stock, g_stock), (y_fast, g_fast) = step(stock, x), step(fast, x)
    np.testing.assert_allclose(y_fast, y_stock, rtol=1e-6, atol=1e-6)
    # The first convolution's bias gradient is 0 up to rounding (the batch norm subtracts the mean):
    # its noise is compared with the gradients' scale, not its own.
    scale = max(np.abs(g).max() for g in g_stock.values())
    for path, g in g_stock.items():
        np.testing.assert_allclose(g_fast[path], g, rtol=1e-5, atol=1e-6 * scale, err_msg=path)
    for v_stock, v_fast in zip(stock.non_trainable_variables, fast.non_trainable_variables):
        np.testing.assert_allclose(v_fast.numpy(), v_stock.numpy(), rtol=1e-6, atol=1e-7)  # moving statistics
    np.testing.assert_allclose(fast(x, training=False), stock(x, training=False), rtol=1e-6, atol=1e-6)


def test_a_batch_norm_keras_computes_is_not_padded():
    stock, fast, count = twins(chain(after=("batchnorm", "conv")))
    assert count == 0 and padded.padded_channels(fast.get_layer("bn0")) == (0, 0)


def small_densenet(activation=None):
    """DenseNet-BC-16-12 on 16x16 images: batch norms over 36 channels, each before a convolution;
    with `activation`, the same network with that activation instead of ReLU."""
    model = densenet_bc(16, 12, input_shape=(16, 16, 3))
    if activation is None:
        return model
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"] == "ReLU":
            layer["class_name"], layer["config"] = "Activation", {"name": layer["config"]["name"], "activation": activation}
            layer["module"] = "keras.layers"
    return keras.Model.from_config(config)


@pytest.mark.parametrize("traced", [False, True])
def test_densenet_pads_its_batch_norms_and_computes_the_same(traced):
    # Softplus instead of ReLU: the padded and stock batch norms run different oneDNN kernels, which
    # round differently; at ReLU's kink that can flip a gradient, at softplus it cannot.
    keras.utils.set_random_seed(1)
    stock, fast, count = twins(lambda: small_densenet("softplus"), fuse=True)
    assert count == 3  # the first layer's batch norm in each block: 24 + 12 = 36 channels
    assert padded_layers(fast) == {
        **{f"block{b}_layer2_1_bn": (0, 4) for b in (1, 2, 3)}, **{f"block{b}_layer2_conv1": (4, 0) for b in (1, 2, 3)}}
    x = rng.normal(size=(8, 16, 16, 3)).astype("float32")
    for _ in range(2):  # the second step from the moving statistics the first one updated
        (y_stock, g_stock), (y_fast, g_fast) = step(stock, x, traced), step(fast, x, traced)
        np.testing.assert_allclose(y_fast, y_stock, rtol=1e-5, atol=1e-6 * np.abs(y_stock).max())
        for path, g in g_stock.items():
            np.testing.assert_allclose(g_fast[path], g, rtol=1e-4, atol=1e-5 * np.abs(g).max(), err_msg=path)
    for v_stock, v_fast in zip(stock.non_trainable_variables, fast.non_trainable_variables):
        np.testing.assert_allclose(v_fast.numpy(), v_stock.numpy(), rtol=1e-5, atol=1e-6, err_msg=v_stock.path)
    np.testing.assert_allclose(fast(x, training=False), stock(x, training=False), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, multiple, expected", [
    ("densenet_bc_100_12", 8, 33), ("densenet_bc_160_24", 8, 0), ("resnet20", 8, 0),
    ("densenet_bc_100_12", 16, 42), ("densenet_bc_160_24", 16, 39), ("resnet20", 16, 0)])
def test_registry_models_pad_what_their_channel_counts_call_for(name, multiple, expected):
    model = models.create_model(name, num_classes=10)
    fused.use_fused_batch_norm(model)
    assert padded.pad_channels(model, multiple) == expected
    padded_bns = [model.get_layer(name) for name in padded_layers(model)
                  if isinstance(model.get_layer(name), keras.layers.BatchNormalization)]
    assert len(padded_bns) == expected and all(l.moving_mean.shape[0] % multiple for l in padded_bns)
    assert all((l.moving_mean.shape[0] + fused.appended_channels(l)) % multiple == 0 for l in padded_bns)


def test_densenet_with_relu_computes_the_same_outputs():
    keras.utils.set_random_seed(2)
    stock, fast, count = twins(small_densenet, fuse=True)
    assert count == 3
    x = rng.normal(size=(8, 16, 16, 3)).astype("float32")
    for training in (True, False):
        np.testing.assert_allclose(fast(x, training=training), stock(x, training=training), rtol=1e-5, atol=1e-6)


def test_a_shared_layer_is_left_alone():
    inputs = keras.Input((12, 12, 3))
    conv = keras.layers.Conv2D(6, 3, activation="relu")
    pool = keras.layers.MaxPooling2D(2)
    after = keras.layers.Conv2D(4, 2)
    x = after(pool(conv(inputs)))
    y = after(pool(conv(keras.layers.Conv2D(3, 1)(inputs))))  # conv, pool and after called twice
    model = keras.Model(inputs, keras.layers.Add()([x, y]))
    assert padded.pad_channels(model) == 0


@pytest.mark.parametrize("name", ["lenet", "densenet"])
def test_padded_model_saves_as_stock_and_reloads_unpadded(tmp_path, name):
    if name == "lenet":
        stock, fast, _ = twins(lambda: models.create_model("lenet", num_classes=10))
        size = 32
    else:
        stock, fast, _ = twins(small_densenet, fuse=True)
        size = 16
    for model, filename in ((stock, "stock.keras"), (fast, "padded.keras")):
        model.save(tmp_path / filename)
    configs = []
    for filename in ("stock.keras", "padded.keras"):
        with zipfile.ZipFile(tmp_path / filename) as z:
            configs.append(json.loads(z.read("config.json")))
    assert configs[0] == configs[1]
    loaded = keras.saving.load_model(tmp_path / "padded.keras")
    assert not any("call" in vars(layer) for layer in loaded.layers)
    x = rng.normal(size=(8, size, size, 3)).astype("float32")
    if name == "lenet":  # unpadded when loaded, padded before: see assert_padded_equal
        assert_padded_equal(loaded.predict(x, verbose=0), fast.predict(x, verbose=0))
    else:  # Keras' batch norm when loaded, the fused kernel before: equal to float32 rounding
        np.testing.assert_allclose(loaded.predict(x, verbose=0), fast.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_train_pads_new_resumed_and_evaluated_models_as_recorded(tiny_cifar, tmp_path, monkeypatch):
    root, _ = tiny_cifar
    calls = []
    original = padded.pad_channels
    monkeypatch.setattr(padded, "pad_channels",
                        lambda model, multiple: calls.append((model.name, multiple)) or original(model, multiple))
    common = ["--model", "lenet", "--data-dir", str(root), "--val-split", "40", "--batch-size", "32", "--epochs", "1"]
    for flag, expected in (("auto", 2 + 2), ("off", 0)):
        calls.clear()
        run = tmp_path / flag
        assert train.main([*common, "--run-dir", str(run), "--channel-padding", flag]) == 0
        (run / "metrics.json").unlink()  # as if killed after the last checkpoint, before the test
        assert train.main([*common, "--run-dir", str(run), "--channel-padding", flag]) == 0  # resumes
        # built, evaluated; then loaded to resume, evaluated
        assert calls == [("lenet", 8)] * expected
        execution = json.loads((run / "metrics.json").read_text())["execution"]
        assert (execution["channel_padding"], execution["channel_multiple"]) == (("on", 8) if flag == "auto" else ("off", None))


@pytest.mark.parametrize("multiple", [8, 16])
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("name", ["lenet", "densenet"])
def test_padding_follows_the_layers_compute_dtype(policy, name, multiple):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        if name == "lenet":
            stock, fast, count = twins(lambda: models.create_model("lenet", num_classes=10), multiple=multiple)
        else:
            stock, fast, count = twins(small_densenet, fuse=True, multiple=multiple)
        size = 32 if name == "lenet" else 16
        x = rng.normal(size=(4, size, size, 3)).astype("float32")
        y_stock, y_fast = stock(x, training=True), fast(x, training=True)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert y_fast.dtype == y_stock.dtype == policy.split("_")[1]
    # LeNet: 6 -> 8 or 16 channels. The small DenseNet's batch norms per block, over 24 and 36
    # channels: 36 -> 40 to 8; 24 -> 32 and 36 -> 48 to 16.
    chains, extras = {("lenet", 8): (1, {2}), ("lenet", 16): (1, {10}),
                      ("densenet", 8): (3, {4}), ("densenet", 16): (6, {8, 12})}[name, multiple]
    assert count == chains and set(padded_layers(fast).values()) == {(0, e) for e in extras} | {(e, 0) for e in extras}
    y_stock, y_fast = np.asarray(tf.cast(y_stock, "float32")), np.asarray(tf.cast(y_fast, "float32"))
    if name == "lenet":  # rounded to 16 bits after the same float32 sums (see assert_padded_equal): 1 ulp apart at most
        np.testing.assert_allclose(y_fast, y_stock, rtol=0, atol=2 * np.abs(y_stock).max() * 2.0**-7)
    else:  # batch-norm statistics in float32 either way; the activations are rounded to 16 bits
        np.testing.assert_allclose(y_fast, y_stock, rtol=0, atol=2e-2 * np.abs(y_stock).max())
