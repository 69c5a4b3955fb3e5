"""ResNet for CIFAR (He et al. 2016): 6n+2 layers, three stages of widths 16, 32 and 64."""

import keras

from models.layers import bn, check_common, classifier, conv, relu
from models.registry import register


def _shortcut(x, filters, strides, kind, *, weight_decay, name):
    if strides == 1 and x.shape[-1] == filters:
        return x
    if kind == "A":
        # Option A of the paper: subsample, then pad the new channels with zeros. Multiplying
        # by zero keeps it to stock layers, so a saved model reloads with no custom objects.
        x = keras.layers.MaxPooling2D(1, strides=strides, name=f"{name}_subsample")(x)
        zeros = keras.layers.Rescaling(0.0, name=f"{name}_zeros")(x)
        pads = [zeros] * ((filters - x.shape[-1]) // x.shape[-1])
        return keras.layers.Concatenate(name=f"{name}_pad")([x, *pads])
    x = conv(x, filters, 1, strides=strides, weight_decay=weight_decay, name=f"{name}_conv")
    return bn(x, name=f"{name}_bn")


def _basic_block(x, filters, strides, shortcut, *, weight_decay, name):
    s = _shortcut(x, filters, strides, shortcut, weight_decay=weight_decay, name=f"{name}_shortcut")
    x = conv(x, filters, 3, strides=strides, weight_decay=weight_decay, name=f"{name}_conv1")
    x = relu(bn(x, name=f"{name}_bn1"), name=f"{name}_relu1")
    x = conv(x, filters, 3, weight_decay=weight_decay, name=f"{name}_conv2")
    x = bn(x, name=f"{name}_bn2")
    x = keras.layers.Add(name=f"{name}_add")([x, s])
    return relu(x, name=f"{name}_out")


def resnet(depth, *, shortcut="A", num_classes=10, input_shape=(32, 32, 3), weight_decay=0.0,
           name="resnet"):
    """CIFAR ResNet-`depth` (He et al. 2016, Sec. 4.2): resnet20 has 0.27M parameters.

    `shortcut="A"` (the paper's CIFAR choice) pads the identity with zeros where the width
    doubles; `"B"` uses 1x1 projections there.
    """
    check_common(num_classes, input_shape)
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n+2 with n >= 1 (20, 32, 44, 56, 110, 1202); got {depth!r}")
    if shortcut not in ("A", "B"):
        raise ValueError(f"shortcut must be 'A' (zero padding) or 'B' (projection); got {shortcut!r}")
    blocks = (depth - 2) // 6
    inputs = keras.Input(input_shape, name="image")
    x = conv(inputs, 16, 3, weight_decay=weight_decay, name="stem_conv")
    x = relu(bn(x, name="stem_bn"), name="stem_relu")
    for stage, filters in enumerate((16, 32, 64), start=1):
        for block in range(1, blocks + 1):
            strides = 2 if stage > 1 and block == 1 else 1
            x = _basic_block(x, filters, strides, shortcut, weight_decay=weight_decay,
                             name=f"stage{stage}_block{block}")
    outputs = classifier(x, num_classes, weight_decay=weight_decay)
    return keras.Model(inputs, outputs, name=name)


# He et al. 2016, Sec. 4.2: SGD momentum 0.9, batch 128, weight decay 1e-4, lr 0.1 divided by 10
# at 32k and 48k iterations (epochs 81 and 122 at batch 128 on a 45k/5k split). The reference
# Keras repository (BIGBALLON/cifar-10-cnn) runs it to 200 epochs; so do we.
RESNET_RECIPE = dict(
    epochs=200, batch_size=128, lr=0.1, momentum=0.9, nesterov=False, weight_decay=1e-4,
    schedule="step", lr_milestones=[81, 122], lr_factor=[0.1],
    preprocess="standardize", augment="standard",
    source="He et al. 2016 (arXiv:1512.03385), Sec. 4.2; 200 epochs as BIGBALLON/cifar-10-cnn")
_PAPER = "He et al. 2016, Deep Residual Learning for Image Recognition"

register("resnet20", resnet, depth=20, paper=_PAPER, paper_params="0.27M", recipe=RESNET_RECIPE)
register("resnet32", resnet, depth=32, paper=_PAPER, paper_params="0.46M", recipe=RESNET_RECIPE)
register("resnet44", resnet, depth=44, paper=_PAPER, paper_params="0.66M", recipe=RESNET_RECIPE)
# The HTD study's "ResNet-50" is this 6n+2 network with n = 8, not the ImageNet ResNet-50.
register("resnet50", resnet, depth=50, paper=_PAPER + " (6n+2, n=8, as in Hsueh et al. 2019)",
         paper_params="0.76M", recipe=RESNET_RECIPE)
register("resnet56", resnet, depth=56, paper=_PAPER, paper_params="0.85M", recipe=RESNET_RECIPE)
register("resnet110", resnet, depth=110, paper=_PAPER, paper_params="1.7M", recipe=RESNET_RECIPE)
register("resnet1202", resnet, depth=1202, paper=_PAPER, paper_params="19.4M", recipe=RESNET_RECIPE)
