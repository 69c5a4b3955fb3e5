"""CIFAR architectures. Importing this package registers every family."""

import tfenv  # noqa: F401  (before keras: TensorFlow reads its settings when it loads)
from models import (  # noqa: F401  (registration side effects)
    densenet, lenet, nin, preact_resnet, resnet, resnet18, resnext, vgg, wrn)
from models.registry import create_model, get_entry, get_recipe, list_models, register

__all__ = ["create_model", "get_entry", "get_recipe", "list_models", "register"]
