"""Model registry: one name per architecture variant, in the manner of timm.

    create_model("resnet20")                 # CIFAR-10 ResNet-20, 10 classes
    create_model("wrn_28_10", num_classes=100, dropout=0.3)
    list_models("resnet*")

Each family file registers its variants at its bottom, one line each, with the paper, the
parameter count the paper prints, and the training recipe of the reference result.
"""

import fnmatch
import sys
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable
    kwargs: dict
    paper: str
    paper_params: str  # as the paper prints it, e.g. "0.27M"; "" where the paper gives none
    recipe: dict = field(default_factory=dict)


_REGISTRY: dict[str, ModelEntry] = {}


def register(name, builder, *, paper, paper_params="", recipe=None, **kwargs):
    """Registers `builder(**kwargs)` under `name`; `recipe` holds its default training settings."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    _REGISTRY[name] = ModelEntry(name, builder, dict(kwargs), paper, paper_params, dict(recipe or {}))


def list_models(pattern="*"):
    """Registered names matching a shell-style `pattern`, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def get_entry(name) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(list_models())
        raise ValueError(f"unknown model {name!r}; known models: {known}") from None


def create_model(name, **overrides):
    """Builds the registered model `name`; keyword arguments override its architecture arguments.

    The model returns logits and is named `name`.
    """
    entry = get_entry(name)
    # Keras walks a functional graph recursively to build, save and load it; resnet1202's ~4,800
    # layers need more than Python's default limit of 1,000, for the rest of the process.
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20_000))
    return entry.builder(**{**entry.kwargs, **overrides, "name": name})


def get_recipe(name):
    """The default training settings of `name` (a copy), with their source under "source"."""
    return dict(get_entry(name).recipe)
