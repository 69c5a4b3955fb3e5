"""ResNeXt-29 for CIFAR (Xie et al. 2017), optionally with squeeze-and-excitation (Hu et al. 2018)."""

import keras

from models.layers import bn, check_common, classifier, conv, relu, squeeze_excite
from models.registry import register


def _resnext_block(x, filters, group_width, cardinality, strides, se_reduction, *, weight_decay, name):
    y = conv(x, group_width, 1, weight_decay=weight_decay, name=f"{name}_conv1")
    y = relu(bn(y, name=f"{name}_bn1"), name=f"{name}_relu1")
    y = conv(y, group_width, 3, strides=strides, groups=cardinality, weight_decay=weight_decay,
             name=f"{name}_conv2")
    y = relu(bn(y, name=f"{name}_bn2"), name=f"{name}_relu2")
    y = conv(y, filters, 1, weight_decay=weight_decay, name=f"{name}_conv3")
    y = bn(y, name=f"{name}_bn3")
    if se_reduction:
        # Hu et al. 2018, Fig. 3: the gate rescales the residual branch before the addition.
        y = squeeze_excite(y, se_reduction, weight_decay=weight_decay, name=f"{name}_se")
    if strides == 1 and x.shape[-1] == filters:
        shortcut = x
    else:
        # Projection only where the shape changes, as in the paper. (One in every block is the
        # bug behind the older Keras port's 20M for ResNeXt-29 4x64d.)
        shortcut = conv(x, filters, 1, strides=strides, weight_decay=weight_decay,
                        name=f"{name}_shortcut_conv")
        shortcut = bn(shortcut, name=f"{name}_shortcut_bn")
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return relu(y, name=f"{name}_out")


def resnext(depth, cardinality, base_width, *, widen_factor=4, se_reduction=0, num_classes=10,
            input_shape=(32, 32, 3), weight_decay=0.0, name="resnext"):
    """ResNeXt-`depth` C x `base_width`d for CIFAR (Xie et al. 2017, Table 7): 8x64d has 34.4M parameters.

    A 3x3 stem of 64 channels, three stages of (depth - 2) / 9 bottleneck blocks
    1x1 - grouped 3x3 (`cardinality` groups of `base_width` channels) - 1x1 with outputs
    64 * `widen_factor` (256 in the paper), all widths doubling at each stage.
    `se_reduction` > 0 adds squeeze-and-excitation with that reduction ratio to every block.
    """
    check_common(num_classes, input_shape)
    if not isinstance(depth, int) or depth < 11 or (depth - 2) % 9:
        raise ValueError(f"depth must be 9n+2 with n >= 1 (11, 20, 29); got {depth!r}")
    for arg, value, examples in (("cardinality", cardinality, "2, 4, 8, 16, 32"),
                                 ("base_width", base_width, "4, 32, 64"),
                                 ("widen_factor", widen_factor, "4 in the paper")):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive integer ({examples}); got {value!r}")
    if not isinstance(se_reduction, int) or se_reduction < 0 or se_reduction > 64 * widen_factor:
        raise ValueError(f"se_reduction must be 0 (no squeeze-and-excitation) or a ratio from 1 to "
                         f"{64 * widen_factor} (16 in the paper); got {se_reduction!r}")
    blocks = (depth - 2) // 9
    inputs = keras.Input(input_shape, name="image")
    x = conv(inputs, 64, 3, weight_decay=weight_decay, name="stem_conv")
    x = relu(bn(x, name="stem_bn"), name="stem_relu")
    for stage in (1, 2, 3):
        scale = 2 ** (stage - 1)
        for b in range(1, blocks + 1):
            strides = 2 if stage > 1 and b == 1 else 1
            x = _resnext_block(x, 64 * widen_factor * scale, cardinality * base_width * scale,
                               cardinality, strides, se_reduction, weight_decay=weight_decay,
                               name=f"stage{stage}_block{b}")
    outputs = classifier(x, num_classes, weight_decay=weight_decay)
    return keras.Model(inputs, outputs, name=name)


# Xie et al. 2017, Sec. 5.3: batch 128, weight decay 5e-4, lr 0.1 divided by 10 at epochs 150 and
# 225 of 300, momentum 0.9. Nesterov as in fb.resnet.torch, on which the authors' code is built.
RESNEXT_RECIPE = dict(
    epochs=300, batch_size=128, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
    schedule="step", lr_milestones=[150, 225], lr_factor=[0.1],
    preprocess="standardize", augment="standard",
    source="Xie et al. 2017 (arXiv:1611.05431), Sec. 5.3; Nesterov as facebookresearch/ResNeXt train.lua")
SE_RESNEXT_RECIPE = dict(
    RESNEXT_RECIPE,
    source="ResNeXt-29 recipe (Xie et al. 2017, Sec. 5.3); the SE paper trains no ResNeXt-29 on CIFAR")
_PAPER = "Xie et al. 2017, Aggregated Residual Transformations for Deep Neural Networks"

# The paper prints no count for 4x64d (Table 7 has 8x64d and 16x64d only).
register("resnext29_4x64d", resnext, depth=29, cardinality=4, base_width=64, paper=_PAPER,
         recipe=RESNEXT_RECIPE)
register("resnext29_8x64d", resnext, depth=29, cardinality=8, base_width=64, paper=_PAPER,
         paper_params="34.4M", recipe=RESNEXT_RECIPE)
register("resnext29_16x64d", resnext, depth=29, cardinality=16, base_width=64, paper=_PAPER,
         paper_params="68.1M", recipe=RESNEXT_RECIPE)
register("se_resnext29_4x64d", resnext, depth=29, cardinality=4, base_width=64, se_reduction=16,
         paper="Hu et al. 2018, Squeeze-and-Excitation Networks, on ResNeXt-29 4x64d (Xie et al. 2017)",
         recipe=SE_RESNEXT_RECIPE)
