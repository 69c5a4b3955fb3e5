"""TensorFlow's fused batch-norm kernel for the stock Keras `BatchNormalization` layers of a model.

Keras 3 computes batch normalization on the TensorFlow backend from separate ops (`tf.nn.moments`,
then `tf.nn.batch_normalization`), and its gradient from the gradients of each of them: several
passes over every activation tensor, forward and backward. TensorFlow's `FusedBatchNormV3` does
the statistics and the normalization in one kernel, and has a fused gradient; PyTorch, Keras 2 and
tf.keras used it. For a network made of batch norms over wide tensors the difference is large
(DenseNet-BC-100: BENCHMARKS.md).

`use_fused_batch_norm(model)` switches the layers of a built model to the fused kernel, in place.
It changes how each layer computes, not what: the same variables, the same arithmetic (moving
statistics updated with the biased batch variance, as Keras does; float32 statistics under mixed
precision, as Keras does), and the saved file is unchanged: the layers stay stock
`keras.layers.BatchNormalization`, so a saved model loads with plain `keras.saving.load_model` and
runs there with Keras' own implementation. tests/test_fused.py checks outputs, moving statistics
and gradients against Keras' implementation.

padded.py may ask for a layer's output with zero channels appended (DenseNet's batch norms over
channel counts not a multiple of 8, which oneDNN's AVX2 kernel does not take),
`fuse_layer(layer, extra_channels=n)`: it is computed over zero input channels with zero scale and
offset there, the statistics of the real channels unchanged.

Rerouting a stock layer's call is a reliance on Keras' internals: patches.route_call does it, and
checks that Keras' BatchNormalization is still the code `_fused_call` reproduces.

On other backends, and for layers the kernel does not cover (not over the last axis of a 4-D
input, synchronized, renorm, masked), Keras' implementation runs as before.
"""

import tfenv  # noqa: F401  (before keras: TensorFlow reads its settings when it loads)
import keras

import patches


def use_fused_batch_norm(model):
    """Routes every stock BatchNormalization layer of `model` through the fused kernel; returns how many."""
    if keras.backend.backend() != "tensorflow":
        return 0
    count = 0
    for layer in _all_layers(model):
        if type(layer) is keras.layers.BatchNormalization and not (layer.renorm or layer.synchronized):
            fuse_layer(layer)
            count += 1
    return count


def fuse_layer(layer, extra_channels=0):
    """Routes one stock BatchNormalization layer through the fused kernel, its output with
    `extra_channels` zero channels appended where it is over the last axis of a 4-D input."""
    patches.route_call(layer, _fused_call, extra_channels=extra_channels)


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def is_fused(layer):
    """Whether `layer` runs through the fused kernel (use_fused_batch_norm or fuse_layer switched it)."""
    route = patches.routed_call(layer)
    return route is not None and route.function is _fused_call


def appended_channels(layer):
    """How many zero channels `layer`'s fused call appends to its output (0 for a layer not fused)."""
    return patches.routed_call(layer).options["extra_channels"] if is_fused(layer) else 0


def _fused_call(self, inputs, training=None, mask=None, *, extra_channels=0):
    import tensorflow as tf

    # The `extra_channels` padded.py asks for have scale and offset 0, so they are 0 in training
    # and inference alike; the real channels are computed as without.
    extra = extra_channels
    rank = len(inputs.shape)
    if mask is not None or rank != 4 or self.axis not in (-1, rank - 1):
        y = keras.layers.BatchNormalization.call(self, inputs, training=training, mask=mask)
        return _zero_channels(tf, y, extra) if extra else y
    # Under mixed precision the kernel takes the 16-bit activations as they are (T) and computes the
    # statistics and the normalization in float32 (U), as Keras does after casting its input to
    # float32: no cast of the activation tensor either way, forward or backward, and the op stays
    # one that TensorFlow's graph optimizer fuses with the ReLU after it.
    x = inputs if inputs.dtype in (tf.bfloat16, tf.float16) else tf.cast(inputs, "float32")
    channels = x.shape[-1]
    gamma = tf.cast(self.gamma, "float32") if self.scale else tf.ones([channels])
    beta = tf.cast(self.beta, "float32") if self.center else tf.zeros([channels])
    if extra:
        x = _zero_channels(tf, x, extra)
        gamma, beta = tf.concat([gamma, tf.zeros([extra])], 0), tf.concat([beta, tf.zeros([extra])], 0)
    if training and self.trainable:
        y, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=gamma, offset=beta, mean=tf.zeros([0]), variance=tf.zeros([0]),
            epsilon=self.epsilon, data_format="NHWC", is_training=True)
        mean, variance = mean[:channels], variance[:channels]
        # The kernel returns the Bessel-corrected variance; Keras' moving variance uses the biased one.
        n = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), "float32")
        variance = variance * ((n - 1.0) / n)
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
    else:
        mean, variance = tf.cast(self.moving_mean, "float32"), tf.cast(self.moving_variance, "float32")
        if extra:
            mean, variance = tf.concat([mean, tf.zeros([extra])], 0), tf.concat([variance, tf.ones([extra])], 0)
        y, *_ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=gamma, offset=beta, mean=mean, variance=variance, epsilon=self.epsilon,
            data_format="NHWC", is_training=False)
    return y if y.dtype == self.compute_dtype else tf.cast(y, self.compute_dtype)


def _zero_channels(tf, x, extra):
    """`x` with `extra` zero channels appended (the gradient of concat is a slice)."""
    return tf.concat([x, tf.zeros(tf.concat([tf.shape(x)[:-1], [extra]], 0), x.dtype)], -1)
