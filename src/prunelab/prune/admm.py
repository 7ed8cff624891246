"""ADMM pruning with gradual mask selection (Boža 2024, "Fast and Effective Weight Update for
Pruned Large Language Models"; fmfi-compbio/admm-pruning ``lib/admm.py``, ``iterative_prune``).

The mask is not fixed in advance: during the first ``gradual`` of the ``iters`` ADMM iterations
(:func:`prunelab.prune.refine.admm`) it is re-chosen from ``|Ŵ + U|`` (in the coordinates where
``diag(H) = 1``, so this is Wanda's score of the current iterate) at a sparsity that rises
cubically, ``s_t = s · (1 - (1 - t/gradual)³)``, to the target; the last iterations update
the weights on the final mask, and ``cg_iters`` conjugate-gradient steps finish them
(:func:`prunelab.prune.refine.masked_cg`). For N:M the candidates of each group are its
``n`` largest entries; the others are pruned gradually by the same schedule, all of them
by the end. Unstructured masks are chosen per layer, as in that code and in SparseGPT.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from prunelab.errors import PrunelabError
from prunelab.prune.refine import RefineConfig, _normalised, _shifted_solver, masked_cg
from prunelab.prune.structures.base import Structure  # not the package: it imports us back
from prunelab.prune.structures.masked import NM, Unstructured


@dataclass(frozen=True)
class AdmmConfig:
    """``iters`` ADMM iterations, the mask re-chosen in the first ``gradual`` of them; penalty
    ``rho``; ``cg_iters`` CG steps on the final mask; dampening ``percdamp`` × mean diag(H);
    arithmetic in ``dtype``. Defaults: the reference's 20 / 15 / ρ = 1."""

    iters: int = 20
    gradual: int = 15
    rho: float = 1.0
    cg_iters: int = 10
    percdamp: float = 0.01
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        if not 0 < self.gradual <= self.iters or self.rho <= 0 or self.cg_iters < 0:
            raise PrunelabError(f"invalid ADMM config {self}")


def admm_prune(
    weight: Tensor,
    hessian: Tensor,
    sparsity: float,
    structure: Structure = Unstructured(),
    config: AdmmConfig = AdmmConfig(),
) -> tuple[Tensor, Tensor]:
    """Prune ``weight`` (out, in, *k) to ``sparsity`` choosing the mask gradually inside ADMM;
    returns ``(new_weight, keep_mask)``, both weight-shaped. ``hessian``: ``2/n·XᵀX``.

    >>> w = torch.tensor([[1., -2., 3., 0.5]])
    >>> new, keep = admm_prune(w, torch.eye(4), 0.5)
    >>> keep.tolist(), new.tolist()  # H = I: keep the largest, nothing to compensate
    ([[False, True, True, False]], [[0.0, -2.0, 3.0, 0.0]])
    """
    if not 0.0 <= sparsity < 1.0:
        raise PrunelabError(f"sparsity must be in [0, 1), got {sparsity}")
    if not isinstance(structure, NM | Unstructured):
        raise PrunelabError(f"ADMM pruning supports unstructured and N:M, not '{structure}'")
    rows = weight.shape[0]
    refine_cfg = RefineConfig(rho=config.rho, percdamp=config.percdamp, dtype=config.dtype)
    a, scale = _normalised(hessian, refine_cfg)  # (cols, cols), (cols,)
    w = weight.detach().reshape(rows, -1).to(config.dtype) * scale  # (out, cols)
    if isinstance(structure, NM) and w.shape[1] % structure.m:
        raise PrunelabError(f"N:M {structure} needs M to divide the input dim {w.shape[1]}")
    b = w @ a  # (out, cols)
    solve = _shifted_solver(a, varying=False)
    w_hat, u = w.clone(), torch.zeros_like(w)
    mask = torch.ones_like(w)
    for t in range(config.iters):
        if t < config.gradual:
            level = sparsity * (1 - (1 - (t + 1) / config.gradual) ** 3)
            mask = _keep(w_hat + u, level, structure).to(w.dtype)
        z = (w_hat + u) * mask
        u += w_hat - z
        w_hat = solve(b + config.rho * (z - u), config.rho)  # (out, cols)
    z = (w_hat + u) * mask
    if config.cg_iters:
        z = masked_cg(a, b, mask, z, config.cg_iters)
    keep = mask.bool()
    out = (z / scale) * mask
    return out.to(weight.dtype).view(weight.shape), keep.view(weight.shape)


def _keep(score: Tensor, level: float, structure: Structure) -> Tensor:
    """Keep mask pruning the ``level`` fraction of smallest ``|score|``; N:M: only entries
    outside each group's ``n`` largest may be pruned (all of them at N:M's own sparsity)."""
    mag = score.abs()  # (out, cols)
    if isinstance(structure, NM):
        groups = mag.view(mag.shape[0], -1, structure.m)  # (out, cols/m, m)
        top = groups.topk(structure.n, dim=-1).indices
        cand = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True).view_as(mag)
        mag = mag.masked_fill(cand, float("inf"))  # never pruned
    k = round(level * mag.numel())
    if k == 0:
        return torch.ones_like(mag, dtype=torch.bool)
    keep = mag > torch.kthvalue(mag.flatten(), k).values  # O(n); a sort only on ties
    if int((~keep).sum()) != k:
        keep = torch.ones(mag.numel(), dtype=torch.bool)
        keep[torch.argsort(mag.flatten(), stable=True)[:k]] = False
    return keep.view(mag.shape)
