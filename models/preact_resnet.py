"""Pre-activation ResNet for CIFAR (He et al. 2016b, Identity Mappings in Deep Residual Networks)."""

import keras

from models.layers import bn, bn_relu, check_common, classifier, conv, preact_and_shortcut, preact_basic_block, relu
from models.registry import register


def _preact_bottleneck(x, filters, strides, *, weight_decay, name):
    width = filters // 4
    pre, shortcut = preact_and_shortcut(x, filters, strides, weight_decay=weight_decay, name=name)
    # The stride sits on the first 1x1 convolution, as in the authors' released code.
    y = conv(pre, width, 1, strides=strides, weight_decay=weight_decay, name=f"{name}_conv1")
    y = relu(bn(y, name=f"{name}_bn2"), name=f"{name}_relu2")
    y = conv(y, width, 3, weight_decay=weight_decay, name=f"{name}_conv2")
    y = relu(bn(y, name=f"{name}_bn3"), name=f"{name}_relu3")
    y = conv(y, filters, 1, weight_decay=weight_decay, name=f"{name}_conv3")
    return keras.layers.Add(name=f"{name}_add")([y, shortcut])


def preact_resnet(depth, *, block="basic", num_classes=10, input_shape=(32, 32, 3), weight_decay=0.0,
                  name="preact_resnet"):
    """Pre-activation ResNet-`depth` (He et al. 2016b): 110 and 164 layers have 1.7M parameters.

    `block="basic"`: depth 6n+2, units of two 3x3 convolutions, widths 16/32/64.
    `block="bottleneck"`: depth 9n+2, 1x1-3x3-1x1 units of widths 16/32/64 expanded 4x to 64/128/256.
    Shortcuts are identities except where the shape changes (a 1x1 projection there).
    """
    check_common(num_classes, input_shape)
    if block == "basic":
        per_block, widths = 2, (16, 32, 64)
    elif block == "bottleneck":
        per_block, widths = 3, (64, 128, 256)
    else:
        raise ValueError(f"block must be 'basic' or 'bottleneck'; got {block!r}")
    step = 3 * per_block
    if not isinstance(depth, int) or depth < step + 2 or (depth - 2) % step:
        examples = "20, 56, 110" if block == "basic" else "29, 164, 1001"
        raise ValueError(f"depth must be {step}n+2 with n >= 1 for {block} units ({examples}); got {depth!r}")
    blocks = (depth - 2) // step
    inputs = keras.Input(input_shape, name="image")
    # No BN-ReLU after the stem: the first unit's pre-activation follows it directly.
    x = conv(inputs, 16, 3, weight_decay=weight_decay, name="stem_conv")
    for stage, filters in enumerate(widths, start=1):
        for b in range(1, blocks + 1):
            strides = 2 if stage > 1 and b == 1 else 1
            unit_name = f"stage{stage}_block{b}"
            if block == "basic":
                x = preact_basic_block(x, filters, strides, weight_decay=weight_decay, name=unit_name)
            else:
                x = _preact_bottleneck(x, filters, strides, weight_decay=weight_decay, name=unit_name)
    # The last unit ends in an addition, so one more BN-ReLU comes before pooling.
    x = bn_relu(x, name="final")
    outputs = classifier(x, num_classes, weight_decay=weight_decay)
    return keras.Model(inputs, outputs, name=name)


# He et al. 2016b, appendix (implementation details): batch 128, lr 0.1 divided by 10 at 32k and
# 48k iterations, stopped at 64k (epochs 82, 123 and 164 at 391 iterations per epoch), weight decay 1e-4,
# momentum 0.9. The paper also warms up at lr 0.01 for the first 400 iterations (about one
# epoch); this recipe table has no warm-up field, so a trainer that wants it must add it.
PREACT_RECIPE = dict(
    epochs=164, batch_size=128, lr=0.1, momentum=0.9, nesterov=False, weight_decay=1e-4,
    schedule="step", lr_milestones=[82, 123], lr_factor=[0.1],
    preprocess="standardize", augment="standard",
    source="He et al. 2016b (arXiv:1603.05027), appendix (warm-up 0.01 for 400 "
           "iterations not encoded)")
_PAPER = "He et al. 2016b, Identity Mappings in Deep Residual Networks"

register("preact_resnet110", preact_resnet, depth=110, block="basic", paper=_PAPER,
         paper_params="1.7M", recipe=PREACT_RECIPE)
register("preact_resnet164", preact_resnet, depth=164, block="bottleneck", paper=_PAPER,
         paper_params="1.7M", recipe=PREACT_RECIPE)
