"""Block-level reconstruction: once a block's layers are pruned (masks fixed), re-fit their kept
weights so the pruned block's outputs match the wanted ones on the calibration inputs.

Wagner et al. 2025 ("A Free Lunch in LLM Compression", ZIB-IOL/Free-Lunch-in-LLM-Compression
``prune_methods.py``) reconstruct every transformer block (or its attention and MLP separately)
with a few hundred AdamW steps of MSE against the dense block's outputs; with it, plain Wanda
competes with SparseGPT. Here the unit is one block of the sequential walk
(:func:`prunelab.prune.walk.walk_blocks` calls :func:`fit_block` through ``after_block``), the
trained tensors are the pruned layers' weights under their mask parametrizations (pruned
entries get zero gradient, so Adam never moves them), and the wanted outputs are the dense
model's hidden states after this block (``target="dense"``: later blocks also absorb the
error of earlier ones) or the dense block's outputs on the pruned inputs (``"local"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from prunelab.errors import PrunelabError
from prunelab.prune.blockcalls import call_block
from prunelab.training import PRECISIONS, adam, mixed_precision


@dataclass(frozen=True)
class BlockFitConfig:
    """``steps`` Adam steps per block, one calibration call each (visited in a shuffled
    order, repeated as needed), learning rate ``lr`` decayed linearly to 0; outputs wanted:
    ``target`` = "dense" (the dense model's) or "local" (the dense block's on the pruned
    inputs). ``loss``: "mse" (mean squared error) or "relative" (each token's squared error
    over its wanted squared norm, averaged: a few tokens with huge hidden states, such as a
    decoder's first position, do not drown the rest); ``precision``: "bf16" runs the block
    under bfloat16 autocast (the weights stay float32)."""

    steps: int = 32
    lr: float = 1e-4
    target: str = "dense"
    loss: str = "mse"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.steps < 0 or self.lr <= 0:
            raise PrunelabError(f"invalid block fit config {self}")
        if self.target not in ("dense", "local"):
            raise PrunelabError(f"target must be 'dense' or 'local', got '{self.target}'")
        if self.loss not in _LOSSES:
            raise PrunelabError(f"loss must be one of {', '.join(_LOSSES)}, got '{self.loss}'")
        if self.precision not in PRECISIONS:
            raise PrunelabError(f"precision must be one of {', '.join(PRECISIONS)}")


def _relative(out: Tensor, wanted: Tensor) -> Tensor:
    """Mean over tokens of ``‖out − wanted‖² / ‖wanted‖²`` (last dimension = features)."""
    err = (out - wanted).pow(2).sum(-1)
    return (err / wanted.pow(2).sum(-1).clamp_min(1e-12)).mean()


_LOSSES = {"mse": nn.functional.mse_loss, "relative": _relative}


def fit_block(
    block: nn.Module,
    layers: Sequence[nn.Module],
    run: Sequence[tuple[Tensor, tuple, dict]],
    wanted: Sequence[Tensor],
    config: BlockFitConfig = BlockFitConfig(),
    generator: torch.Generator | None = None,
) -> list[float]:
    """Adam on the weights of ``layers`` (inside ``block``) so that ``block(h, *args, **kw)``
    approaches ``wanted[j]`` for each calibration call ``run[j] = (h, args, kw)`` (as the walk
    records them: ``h`` replaces ``args[0]``, or ``kw["hidden_states"]`` when ``args`` is
    empty); returns each step's loss (before its update). Masks stay as they are.

    >>> from prunelab.prune.apply import apply_masks
    >>> _ = torch.manual_seed(0); block = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
    >>> x = [torch.randn(8, 4) for _ in range(2)]; want = [block(h).detach() + 0.1 for h in x]
    >>> _ = apply_masks(block, {"0": torch.rand(4, 4) > 0.5})
    >>> losses = fit_block(block, [block[0]], [(h, (None,), {}) for h in x], want,
    ...                    BlockFitConfig(steps=40, lr=1e-2))
    >>> losses[-1] < losses[0]
    True
    """
    if len(run) != len(wanted) or not run:
        raise PrunelabError("fit_block needs one wanted output per calibration call")
    params = [_trainable(m) for m in layers]
    frozen = [p for p in params if not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    opt = adam(params, decoupled=False, lr=config.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / max(config.steps, 1))
    order: list[int] = []
    losses: list[float] = []
    with torch.enable_grad():
        for _ in range(config.steps):
            if not order:
                order = torch.randperm(len(run), generator=generator).tolist()
            j = order.pop()
            with mixed_precision(config.precision, wanted[j].device):
                out = call_block(block, *run[j])
            loss = _LOSSES[config.loss](out.float(), wanted[j])
            grads = torch.autograd.grad(loss, params)  # only these tensors; no stray .grad
            for p, g in zip(params, grads):
                p.grad = g
            opt.step()
            sched.step()
            losses.append(loss.item())
    for p in params:
        p.grad = None
    for p in frozen:
        p.requires_grad_(False)
    return losses


def _trainable(module: nn.Module) -> Tensor:
    """The tensor to train: the weight under its mask parametrization, or the plain weight."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original  # type: ignore[union-attr]
    return module.weight
