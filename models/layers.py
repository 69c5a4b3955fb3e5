"""Blocks and conventions shared by the model families."""

import keras


def l2(weight_decay):
    """Kernel regularizer giving *coupled* weight decay as the papers define it.

    The papers' SGD step is `w -= lr * (grad + weight_decay * w)`. Keras' `L2(l)` adds
    `l * sum(w**2)` to the loss, whose gradient is `2 * l * w`, so `L2(weight_decay / 2)` gives
    exactly that step. Only kernels (convolution and dense weights) are decayed; biases and
    batch-norm scales and offsets are not.
    """
    return keras.regularizers.L2(weight_decay / 2) if weight_decay else None


def conv(x, filters, kernel_size, *, name, strides=1, padding="same", use_bias=False,
         weight_decay=0.0, groups=1, activation=None):
    """He-normal initialised convolution (He et al. 2015), the initialisation the CIFAR papers use."""
    return keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding=padding, use_bias=use_bias, groups=groups,
        activation=activation, kernel_initializer="he_normal",
        kernel_regularizer=l2(weight_decay), name=name)(x)


def bn(x, *, name):
    # momentum 0.9 and epsilon 1e-5 are the Torch/PyTorch values the reference results used
    # (Keras defaults to 0.99 / 1e-3).
    return keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name)(x)


def relu(x, *, name):
    return keras.layers.ReLU(name=name)(x)


def bn_relu(x, *, name):
    return relu(bn(x, name=f"{name}_bn"), name=f"{name}_relu")


def classifier(x, num_classes, *, weight_decay=0.0, name="logits"):
    """Global average pooling and a dense layer to logits."""
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.layers.Dense(num_classes, kernel_regularizer=l2(weight_decay), name=name)(x)


def check_common(num_classes, input_shape):
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2; got {num_classes!r}")
    if len(tuple(input_shape)) != 3:
        raise ValueError(f"input_shape must be (height, width, channels); got {input_shape!r}")


def preact_and_shortcut(x, filters, strides, *, weight_decay, name):
    """The shared BN-ReLU of a pre-activation unit, and its shortcut: the identity where the shape
    is kept, else a 1x1 projection of the pre-activated input (the authors' and the WRN code)."""
    pre = relu(bn(x, name=f"{name}_bn1"), name=f"{name}_relu1")
    if strides == 1 and x.shape[-1] == filters:
        return pre, x
    return pre, conv(pre, filters, 1, strides=strides, weight_decay=weight_decay, name=f"{name}_shortcut_conv")


def preact_basic_block(x, filters, strides=1, *, dropout=0.0, weight_decay=0.0, name):
    """Pre-activation residual unit (He et al. 2016b): BN-ReLU-conv3x3, BN-ReLU-conv3x3, add.

    The shortcut is the identity where the shape is kept. Where it changes it is a 1x1
    projection of the *pre-activated* input, as in the authors' code and the Wide ResNet code,
    so that the first BN-ReLU is shared by both paths.
    """
    pre, shortcut = preact_and_shortcut(x, filters, strides, weight_decay=weight_decay, name=name)
    y = conv(pre, filters, 3, strides=strides, weight_decay=weight_decay, name=f"{name}_conv1")
    y = relu(bn(y, name=f"{name}_bn2"), name=f"{name}_relu2")
    if dropout:
        y = keras.layers.Dropout(dropout, name=f"{name}_dropout")(y)
    y = conv(y, filters, 3, weight_decay=weight_decay, name=f"{name}_conv2")
    return keras.layers.Add(name=f"{name}_add")([y, shortcut])


def squeeze_excite(x, reduction, *, weight_decay=0.0, name):
    """Squeeze-and-excitation (Hu et al. 2018): rescales the channels of `x` by a gate in (0, 1).

    GAP -> Dense(C / reduction, ReLU) -> Dense(C, sigmoid) -> Multiply, all stock layers, so a
    saved model reloads without custom objects.
    """
    channels = x.shape[-1]
    s = keras.layers.GlobalAveragePooling2D(name=f"{name}_squeeze")(x)
    s = keras.layers.Dense(channels // reduction, activation="relu", kernel_initializer="he_normal",
                           kernel_regularizer=l2(weight_decay), name=f"{name}_reduce")(s)
    s = keras.layers.Dense(channels, activation="sigmoid", kernel_regularizer=l2(weight_decay),
                           name=f"{name}_expand")(s)
    s = keras.layers.Reshape((1, 1, channels), name=f"{name}_reshape")(s)
    return keras.layers.Multiply(name=f"{name}_scale")([x, s])
