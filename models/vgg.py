"""VGG with batch norm for 32x32 images (Simonyan & Zisserman 2015; Ioffe & Szegedy 2015)."""

import keras

from models.layers import bn, check_common, conv, l2, relu
from models.registry import register


def vgg(depth=19, *, dropout=0.5, num_classes=10, input_shape=(32, 32, 3), weight_decay=0.0,
        name="vgg"):
    """VGG-`depth` with batch norm (Simonyan & Zisserman 2015, Table 1): vgg19 has 39.0M parameters.

    Five blocks of 3x3 convolutions (conv-BN-ReLU), each closed by a 2x2 max-pool, then
    FC 4096 - FC 4096 - FC num_classes with dropout before each of the last two. At 32x32 the
    five pools leave 1x1x512 for the first FC layer.
    """
    check_common(num_classes, input_shape)
    convs_per_block = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3),
                       19: (2, 2, 4, 4, 4)}
    if depth not in convs_per_block:
        raise ValueError(f"depth must be one of {sorted(convs_per_block)}; got {depth!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1); got {dropout!r}")
    if input_shape[0] % 32 or input_shape[1] % 32:
        raise ValueError(f"input height and width must be multiples of 32 (five 2x2 pools); "
                         f"got {input_shape!r}")
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for b, (convs, filters) in enumerate(zip(convs_per_block[depth], (64, 128, 256, 512, 512)), start=1):
        for i in range(1, convs + 1):
            x = conv(x, filters, 3, weight_decay=weight_decay, name=f"block{b}_conv{i}")
            x = relu(bn(x, name=f"block{b}_bn{i}"), name=f"block{b}_relu{i}")
        x = keras.layers.MaxPooling2D(2, name=f"block{b}_pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    for i in (1, 2):
        x = keras.layers.Dense(4096, activation="relu", kernel_initializer="he_normal",
                               kernel_regularizer=l2(weight_decay), name=f"fc{i}")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"fc{i}_dropout")(x)
    outputs = keras.layers.Dense(num_classes, kernel_regularizer=l2(weight_decay), name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


# The paper's recipe is for ImageNet; these are the reference Keras port's CIFAR settings,
# without its ImageNet initialisation. Milestones are 0-based epochs at which the factor first
# applies (its `epoch > 80` lowers the rate from epoch 81 on).
VGG_RECIPE = dict(
    epochs=170, batch_size=128, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
    schedule="step", lr_milestones=[81, 121], lr_factor=[0.1],
    preprocess="standardize", augment="standard",
    source="BIGBALLON/cifar-10-cnn, 3_Vgg19_Network/Vgg19_keras.py")

# The paper counts 144M for ImageNet (7x7x512 into FC 4096); at 32x32 the first FC layer is small.
# 39.0M is the CIFAR model's count as the reference repository prints it ("39M").
register("vgg19", vgg, depth=19, paper="Simonyan & Zisserman 2015, Very Deep Convolutional "
         "Networks for Large-Scale Image Recognition (config E, with batch norm)",
         paper_params="39.0M", recipe=VGG_RECIPE)
