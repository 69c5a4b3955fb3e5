"""CIFAR architectures. Importing this package registers every family."""

import tfenv  # noqa: F401  (before keras: TensorFlow reads its settings when it loads)
from models import (  # noqa: F401  (registration side effects)
    densenet, lenet, nin, preact_resnet, resnet, resnet18, resnext, vgg, wrn)
from models.registry import (
    PRETRAINED, WeightsError, create_model, download_weights, get_entry, get_recipe, list_models, load_weights,
    register, weights_file, weights_layout)

__all__ = ["PRETRAINED", "WeightsError", "create_model", "download_weights", "get_entry", "get_recipe",
           "list_models", "load_weights", "register", "weights_file", "weights_layout"]
