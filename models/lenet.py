"""LeNet-5 for 32x32 colour images."""

import keras

from models.layers import check_common, l2
from models.registry import register


def lenet(*, num_classes=10, input_shape=(32, 32, 3), weight_decay=0.0, name="lenet"):
    """LeNet-5 (LeCun et al. 1998), CIFAR variant with ReLU and max-pooling: 62,006 parameters.

    conv 6@5x5 - pool - conv 16@5x5 - pool - FC 120 - FC 84 - FC num_classes (logits).
    """
    check_common(num_classes, input_shape)
    dense = dict(activation="relu", kernel_initializer="he_normal", kernel_regularizer=l2(weight_decay))
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Conv2D(6, 5, name="conv1", **dense)(inputs)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = keras.layers.Conv2D(16, 5, name="conv2", **dense)(x)
    x = keras.layers.MaxPooling2D(2, name="pool2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(120, name="fc1", **dense)(x)
    x = keras.layers.Dense(84, name="fc2", **dense)(x)
    outputs = keras.layers.Dense(num_classes, kernel_regularizer=l2(weight_decay), name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


# The reference's "all tricks" LeNet: per-channel standardisation, flip + 4-pixel shifts, L2 1e-4,
# SGD with Nesterov momentum, 200 epochs at batch 128, lr 0.01 -> 0.005 (epoch 100) -> 0.001 (150).
LENET_RECIPE = dict(
    epochs=200, batch_size=128, lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4,
    schedule="step", lr_milestones=[100, 150], lr_factor=[0.5, 0.2],
    preprocess="standardize", augment="standard",
    source="BIGBALLON/cifar-10-cnn, 1_Lecun_Network (LeNet_dp_da_wd_keras.py)")

register("lenet", lenet, paper="LeCun et al. 1998, Gradient-based learning applied to document "
         "recognition", paper_params="62,006", recipe=LENET_RECIPE)
