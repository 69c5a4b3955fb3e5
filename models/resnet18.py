"""ResNet-18 at ImageNet widths for 32x32 images: a 3x3 stride-1 stem and no max-pool."""

import keras

from models.layers import bn, check_common, classifier, conv, relu
from models.registry import register
from models.resnet import _basic_block


def imagenet_resnet(blocks=(2, 2, 2, 2), *, num_classes=10, input_shape=(32, 32, 3), weight_decay=0.0,
                    name="imagenet_resnet"):
    """ImageNet ResNet (He et al. 2016, Table 1) with a CIFAR stem: resnet18 has 11.2M parameters.

    Four stages of basic blocks, widths 64/128/256/512, strides 1/2/2/2, projection shortcuts
    (option B) where the shape changes. The 7x7 stride-2 stem and the max-pool are replaced by
    one 3x3 stride-1 convolution, which keeps 32x32 images from shrinking to 8x8 at once
    (as kuangliu/pytorch-cifar does).
    """
    check_common(num_classes, input_shape)
    blocks = tuple(blocks)
    if len(blocks) != 4 or not all(isinstance(b, int) and b >= 1 for b in blocks):
        raise ValueError(f"blocks must be four positive integers, one per stage (ResNet-18: (2, 2, 2, 2), "
                         f"ResNet-34: (3, 4, 6, 3)); got {blocks!r}")
    inputs = keras.Input(input_shape, name="image")
    x = conv(inputs, 64, 3, weight_decay=weight_decay, name="stem_conv")
    x = relu(bn(x, name="stem_bn"), name="stem_relu")
    for stage, (count, filters) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
        for b in range(1, count + 1):
            strides = 2 if stage > 1 and b == 1 else 1
            x = _basic_block(x, filters, strides, "B", weight_decay=weight_decay,
                             name=f"stage{stage}_block{b}")
    outputs = classifier(x, num_classes, weight_decay=weight_decay)
    return keras.Model(inputs, outputs, name=name)


# kuangliu/pytorch-cifar: SGD momentum 0.9, weight decay 5e-4, batch 128 (main.py), and the manual
# schedule of its earlier README, lr 0.1 for epochs [0, 150), 0.01 for [150, 250), 0.001 for
# [250, 350). (It has since moved to cosine annealing over 200 epochs.)
RESNET18_RECIPE = dict(
    epochs=350, batch_size=128, lr=0.1, momentum=0.9, nesterov=False, weight_decay=5e-4,
    schedule="step", lr_milestones=[150, 250], lr_factor=[0.1],
    preprocess="standardize", augment="standard",
    source="kuangliu/pytorch-cifar (main.py; step schedule of its earlier README)")

register("resnet18", imagenet_resnet, blocks=(2, 2, 2, 2),
         paper="He et al. 2016, Deep Residual Learning for Image Recognition (ResNet-18, CIFAR stem "
               "of kuangliu/pytorch-cifar)", paper_params="11.2M", recipe=RESNET18_RECIPE)
