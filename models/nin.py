"""Network in Network (Lin et al. 2014): three mlpconv blocks and global average pooling."""

import keras

from models.layers import bn, check_common, conv, relu
from models.registry import register


def nin(*, batch_norm=False, dropout=0.5, num_classes=10, input_shape=(32, 32, 3), weight_decay=0.0,
        name="nin"):
    """CIFAR Network in Network (Lin et al. 2014, Sec. 4.2): 0.97M parameters.

    Blocks 192-160-96, 192-192-192, 192-192-num_classes (a 5x5, 5x5 and 3x3 convolution each
    followed by two 1x1 ones); `batch_norm=True` puts batch norm after every convolution.
    """
    check_common(num_classes, input_shape)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1); got {dropout!r}")
    blocks = ((5, (192, 160, 96)), (5, (192, 192, 192)), (3, (192, 192, num_classes)))
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for b, (kernel, widths) in enumerate(blocks, start=1):
        for i, filters in enumerate(widths, start=1):
            # A bias in front of batch norm is cancelled by its mean subtraction.
            x = conv(x, filters, kernel if i == 1 else 1, use_bias=not batch_norm,
                     weight_decay=weight_decay, name=f"mlpconv{b}_conv{i}")
            if batch_norm:
                x = bn(x, name=f"mlpconv{b}_bn{i}")
            # The last ReLU acts on the class maps, as in the paper's Caffe model: the scores
            # that reach the softmax are non-negative.
            x = relu(x, name=f"mlpconv{b}_relu{i}")
        if b == 1:
            x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name=f"mlpconv{b}_pool")(x)
        elif b == 2:
            # The released Caffe model averages here (the reference Keras port max-pools).
            x = keras.layers.AveragePooling2D(3, strides=2, padding="same", name=f"mlpconv{b}_pool")(x)
        if b < 3 and dropout:
            x = keras.layers.Dropout(dropout, name=f"mlpconv{b}_dropout")(x)
    outputs = keras.layers.GlobalAveragePooling2D(name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


# The paper trains "until the training accuracy stops improving" (no fixed schedule), so these
# follow the reference Keras port, BIGBALLON/cifar-10-cnn 2_Network_in_Network. Milestones are
# 0-based epochs from which the factor applies: its `epoch <= 80` keeps the first rate through
# epoch 80, so the first milestone is 81.
NIN_RECIPE = dict(
    epochs=200, batch_size=128, lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4,
    schedule="step", lr_milestones=[81, 141], lr_factor=[0.5, 0.2],
    preprocess="standardize", augment="standard",
    source="BIGBALLON/cifar-10-cnn, 2_Network_in_Network/Network_in_Network_keras.py")
NIN_BN_RECIPE = dict(
    epochs=200, batch_size=128, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4,
    schedule="step", lr_milestones=[61, 121, 161], lr_factor=[0.2],
    preprocess="standardize", augment="standard",
    source="BIGBALLON/cifar-10-cnn, 2_Network_in_Network/Network_in_Network_bn_keras.py")
# The paper prints no parameter count; 0.97M is the reference repository's figure, which the
# 966,986 parameters of the paper's CIFAR model match.
_PAPER = "Lin et al. 2014, Network In Network"

register("nin", nin, paper=_PAPER, paper_params="0.97M", recipe=NIN_RECIPE)
register("nin_bn", nin, batch_norm=True, paper=_PAPER + " (with batch norm)", paper_params="0.97M",
         recipe=NIN_BN_RECIPE)
