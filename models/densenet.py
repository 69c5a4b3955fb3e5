"""DenseNet-BC for CIFAR (Huang et al. 2017): bottleneck layers and compressing transitions."""

import keras

from models.layers import bn_relu, check_common, classifier, conv
from models.registry import register


def densenet_bc(depth, growth_rate, *, compression=0.5, num_classes=10, input_shape=(32, 32, 3),
                weight_decay=0.0, name="densenet_bc"):
    """DenseNet-BC-`depth` with growth rate k (Huang et al. 2017, Table 2): (100, 12) has 0.8M parameters.

    Three dense blocks of (depth - 4) / 6 layers BN-ReLU-conv1x1(4k)-BN-ReLU-conv3x3(k), each
    concatenated to its input; between blocks, and only there, a transition
    BN-ReLU-conv1x1(compression * channels)-avgpool2x2; then BN-ReLU, pooling and a dense layer.
    """
    check_common(num_classes, input_shape)
    if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        raise ValueError(f"depth must be 6n+4 with n >= 1 (40, 100, 190, 250); got {depth!r}")
    if not isinstance(growth_rate, int) or growth_rate < 1:
        raise ValueError(f"growth_rate must be a positive integer (12, 24, 40); got {growth_rate!r}")
    if not 0.0 < compression <= 1.0:
        raise ValueError(f"compression must be in (0, 1] (0.5 for DenseNet-BC); got {compression!r}")
    layers = (depth - 4) // 6
    inputs = keras.Input(input_shape, name="image")
    # Sec. 3 of the paper: for DenseNet-BC the first convolution has 2k output channels.
    x = conv(inputs, 2 * growth_rate, 3, weight_decay=weight_decay, name="stem_conv")
    for b in (1, 2, 3):
        for i in range(1, layers + 1):
            n = f"block{b}_layer{i}"
            y = bn_relu(x, name=f"{n}_1")
            y = conv(y, 4 * growth_rate, 1, weight_decay=weight_decay, name=f"{n}_conv1")
            y = bn_relu(y, name=f"{n}_2")
            y = conv(y, growth_rate, 3, weight_decay=weight_decay, name=f"{n}_conv2")
            x = keras.layers.Concatenate(name=f"{n}_concat")([x, y])
        # Two transitions for three blocks: a third one after the last block (and before the
        # final BN-ReLU) is the bug behind the older Keras port's 0.85M for DenseNet-BC-100-12.
        if b < 3:
            t = f"transition{b}"
            x = bn_relu(x, name=t)
            x = conv(x, int(compression * x.shape[-1]), 1, weight_decay=weight_decay, name=f"{t}_conv")
            x = keras.layers.AveragePooling2D(2, name=f"{t}_pool")(x)
    x = bn_relu(x, name="final")
    outputs = classifier(x, num_classes, weight_decay=weight_decay)
    return keras.Model(inputs, outputs, name=name)


# Huang et al. 2017, Sec. 4.2: SGD, batch 64, 300 epochs, lr 0.1 divided by 10 at 50% and 75% of
# training, weight decay 1e-4, Nesterov momentum 0.9 without dampening. (Dropout 0.2 is used only
# without data augmentation, so not here.)
DENSENET_RECIPE = dict(
    epochs=300, batch_size=64, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4,
    schedule="step", lr_milestones=[150, 225], lr_factor=[0.1],
    preprocess="standardize", augment="standard",
    source="Huang et al. 2017 (arXiv:1608.06993), Sec. 4.2")
_PAPER = "Huang et al. 2017, Densely Connected Convolutional Networks"
_OLDER = _PAPER + " (variant of BIGBALLON/cifar-10-cnn, not in the paper)"

register("densenet_bc_100_12", densenet_bc, depth=100, growth_rate=12, paper=_PAPER, paper_params="0.8M",
         recipe=DENSENET_RECIPE)
register("densenet_bc_250_24", densenet_bc, depth=250, growth_rate=24, paper=_PAPER, paper_params="15.3M",
         recipe=DENSENET_RECIPE)
register("densenet_bc_190_40", densenet_bc, depth=190, growth_rate=40, paper=_PAPER, paper_params="25.6M",
         recipe=DENSENET_RECIPE)
register("densenet_bc_100_24", densenet_bc, depth=100, growth_rate=24, paper=_OLDER, recipe=DENSENET_RECIPE)
register("densenet_bc_160_24", densenet_bc, depth=160, growth_rate=24, paper=_OLDER, recipe=DENSENET_RECIPE)
