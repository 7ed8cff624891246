"""The only code that changes a model's weights: masks attached by parametrization.

``W_effective = W_original * mask`` (PyTorch ``parametrize``), so pruned weights are exactly
zero in every forward pass and receive zero gradient during fine-tuning.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from prunelab.errors import PrunelabError
from prunelab.prune.masks import Masks
from prunelab.prune.targets import PRUNABLE_TYPES


class FixedMask(nn.Module):
    """Parametrization multiplying the weight by a boolean mask (kept as a buffer)."""

    def __init__(self, mask: Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool).clone())  # never alias the caller's

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self.mask


def _mask_param(module: nn.Module) -> FixedMask | None:
    if not parametrize.is_parametrized(module, "weight"):
        return None
    for p in module.parametrizations.weight:  # type: ignore[union-attr]
        if isinstance(p, FixedMask):
            return p
    return None


def apply_masks(model: nn.Module, masks: Masks) -> nn.Module:
    """Attach (or replace) masks on the named modules of ``model``; returns ``model``.

    The original values under a mask are zeroed too, so removing the parametrization later
    leaves exact zeros.
    """
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        if name not in modules:
            raise PrunelabError(f"mask for unknown layer '{name}'")
        module = modules[name]
        if tuple(mask.shape) != tuple(module.weight.shape):
            raise PrunelabError(
                f"mask shape {tuple(mask.shape)} does not fit layer '{name}' "
                f"{tuple(module.weight.shape)}"
            )
        existing = _mask_param(module)
        if existing is not None:
            existing.mask.copy_(mask.to(torch.bool))
            orig = module.parametrizations.weight.original  # type: ignore[union-attr]
        else:
            parametrize.register_parametrization(module, "weight", FixedMask(mask))
            orig = module.parametrizations.weight.original  # type: ignore[union-attr]
        with torch.no_grad():
            orig.mul_(mask.to(orig.dtype))
    return model


def get_masks(model: nn.Module) -> Masks:
    """The masks currently attached to ``model`` (copies)."""
    out = {}
    for name, module in model.named_modules():
        p = _mask_param(module)
        if p is not None:
            out[name] = p.mask.clone()
    return out


def make_permanent(model: nn.Module) -> nn.Module:
    """Remove mask parametrizations, leaving plain weights with exact zeros.

    Safe on a ``copy.deepcopy`` of a masked model: deep copies share PyTorch's dynamically
    created ``Parametrized*`` class, and ``parametrize.remove_parametrizations`` deletes the
    property from that shared class (breaking the original). Here only the instance changes.
    """
    for module in model.modules():
        if _mask_param(module) is None:
            continue
        plist = module.parametrizations  # type: ignore[union-attr]
        if set(plist.keys()) != {"weight"} or len(plist.weight) != 1:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            continue
        with torch.no_grad():
            weight = module.weight.detach().clone()
        original = plist.weight.original
        del module._modules["parametrizations"]
        module.__class__ = module.__class__.__bases__[0]  # the plain class, for this instance
        module.weight = nn.Parameter(weight, requires_grad=original.requires_grad)
    return model


def folded_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with its masks folded into plain weights, in eval mode.

    The one way to get "a frozen, mask-folded copy": the original keeps its masks.

    >>> m = nn.Linear(4, 2)
    >>> _ = apply_masks(m, {"": torch.tensor([[True, False] * 2] * 2)})
    >>> c = folded_copy(m)
    >>> hasattr(c, "parametrizations"), hasattr(m, "parametrizations"), int((c.weight == 0).sum())
    (False, True, 4)
    """
    return make_permanent(copy.deepcopy(model)).eval()


def layer_sparsity(
    model: nn.Module, targets: dict[str, nn.Module] | None = None
) -> dict[str, float]:
    """Fraction of exact zeros in each target weight (all Linear/Conv weights by default)."""

    if targets is None:
        targets = {n: m for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}
    with torch.no_grad():
        return {n: float((m.weight == 0).float().mean()) for n, m in targets.items()}


def plain_state(model: nn.Module) -> dict[str, Tensor]:
    """The state dict as the original architecture names it (masks made permanent on a copy).

    Floating zeros are canonical ``+0.0`` (``-0.0`` compares equal and computes the same).
    """
    if any(parametrize.is_parametrized(m) for m in model.modules()):
        model = folded_copy(model)
    out = {}
    for k, v in model.state_dict().items():
        v = v.detach().contiguous().clone()
        if v.is_floating_point():
            v[v == 0] = 0.0  # -0.0 -> +0.0
        out[k] = v
    return out
