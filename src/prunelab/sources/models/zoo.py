"""Reference architectures, registered by name. Each builder takes (input_shape, num_classes)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.registry import Registry

Builder = Callable[[tuple[int, ...], int], nn.Module]
MODELS: Registry[Builder] = Registry("model")  # trained (or fine-tuned) on the sweep's data
PRETRAINED: Registry[Callable[[], nn.Module]] = Registry("pretrained model")  # used as shipped


@MODELS.register("lenet300")
def lenet300(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """LeNet-300-100 (Han et al. 2015): 266,610 parameters on 28x28 inputs."""
    n_in = math.prod(input_shape)
    return nn.Sequential(
        nn.Flatten(),  # (B, C, H, W) -> (B, C*H*W)
        nn.Linear(n_in, 300),
        nn.ReLU(),
        nn.Linear(300, 100),
        nn.ReLU(),
        nn.Linear(100, num_classes),
    )


@MODELS.register("cnn")
def cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """conv32-conv64-fc128-fcK: 421,642 parameters on 1x28x28 inputs."""
    c, h, w = input_shape
    return nn.Sequential(
        nn.Conv2d(c, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (B, 32, H/2, W/2)
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (B, 64, H/4, W/4)
        nn.Flatten(),  # (B, 64 * H/4 * W/4)
        nn.Linear(64 * (h // 4) * (w // 4), 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


@MODELS.register("mlp-tiny")
def mlp_tiny(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A 2-hidden-layer MLP for tests (about 6k parameters on 8x8 digits)."""
    n_in = math.prod(input_shape)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(n_in, 64),
        nn.ReLU(),
        nn.Linear(64, 32),
        nn.ReLU(),
        nn.Linear(32, num_classes),
    )


def model_names() -> list[str]:
    """Every built-in model: trained on the sweep's data or pretrained, sorted."""
    return sorted([*MODELS, *PRETRAINED])


def check_model_name(name: str) -> None:
    """One clear line naming every built-in model when ``name`` is none of them."""
    if name not in MODELS and name not in PRETRAINED:
        raise PrunelabError(f"unknown model '{name}'; valid: {', '.join(model_names())}")


def build_model(
    name: str, input_shape: tuple[int, ...], num_classes: int, seed: int = 0
) -> nn.Module:
    """Build a registered model with seeded initialisation.

    >>> sum(p.numel() for p in build_model("cnn", (1, 28, 28), 10).parameters())
    421642
    """
    if name in PRETRAINED:
        return PRETRAINED.get(name)()
    check_model_name(name)
    builder = MODELS.get(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder(tuple(input_shape), num_classes)
