"""Refining a pruned layer's kept weights with its mask fixed (Boža 2024; ALPS, Meng et al. 2024).

Once a mask ``K`` is chosen (by SparseGPT, Wanda, magnitude, ...), the weights it keeps can
still be re-fitted. For a layer ``y = W x`` with calibration Hessian ``H = 2/n · XᵀX`` the
layer-wise objective is

    min_Ŵ  tr((Ŵ - W) H (Ŵ - W)ᵀ)   subject to  Ŵ = 0 outside K,

a least-squares problem per output row over that row's kept inputs. SparseGPT only pushes each
pruned weight's error onto the columns to its right, so its weights are not this optimum;
Wanda and magnitude do not update at all.

Two solvers, both working on all rows at once with one ``(out, in) × (in, in)`` product per
iteration, in coordinates where ``diag(H) = 1`` (the Jacobi preconditioning of ALPS and of
Boža's code):

- ``admm`` (fmfi-compbio/admm-pruning ``lib/admm.py``): with ``A = H + λI`` and
  ``B = W A``, alternate ``Ŵ = (B + ρ(Z − U))(A + ρI)⁻¹``, ``Z = (Ŵ + U) ⊙ K``,
  ``U += Ŵ − Z`` (scaled ADMM), ρ = 1 fixed as in that code (one Cholesky inverse); with
  ``rho_growth > 1`` ρ grows by that factor every iteration (ALPS's increasing ρ, simplified),
  from one eigendecomposition of ``A``.
- ``cg``: conjugate gradients on every row's system ``A_KK ŵ_K = B_K`` at once, residuals and
  directions projected onto the mask (ALPS's back-solve ``cg_batch``). Exact in the limit.

``RefineConfig(method="admm", cg_iters=10)`` runs ADMM, then polishes its ``Z`` with CG
(ALPS's order). The result is always exactly zero outside the mask.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from prunelab.errors import PrunelabError
from prunelab.registry import Registry


@dataclass(frozen=True)
class RefineConfig:
    """``method``: a :data:`REFINERS` name; ``iters`` of it; ADMM's penalty ``rho`` (in units
    of the normalised Hessian's diagonal, 1) multiplied by ``rho_growth`` after every
    iteration up to ``rho_max``; ``cg_iters`` CG steps after ADMM; dampening ``percdamp`` ×
    mean diag(H) as in SparseGPT; arithmetic in ``dtype``."""

    method: str = "admm"
    iters: int = 20
    rho: float = 1.0
    rho_growth: float = 1.0
    rho_max: float = 1e4
    cg_iters: int = 10
    percdamp: float = 0.01
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        if self.iters < 0 or self.cg_iters < 0 or self.rho <= 0 or self.rho_growth < 1:
            raise PrunelabError(f"invalid refinement config {self}")
        if self.percdamp < 0:
            raise PrunelabError(f"percdamp must be >= 0, got {self.percdamp}")


def refine(
    dense: Tensor,
    keep: Tensor,
    hessian: Tensor,
    config: RefineConfig = RefineConfig(),
    start: Tensor | None = None,
) -> Tensor:
    """Kept weights re-fitted so the layer's outputs match ``dense``'s on the calibration data.

    ``dense`` (out, in, *k): the weights to imitate; ``keep``: the fixed mask, same shape;
    ``hessian`` (in·k, in·k): ``2/n · XᵀX``; ``start``: an initial guess (e.g. SparseGPT's
    weights; default ``dense ⊙ keep``). Returns the refined weight, zero outside ``keep``.

    >>> h = torch.tensor([[2., 1.], [1., 2.]])  # correlated inputs
    >>> w = refine(torch.tensor([[1., 1.]]), torch.tensor([[True, False]]), h,
    ...            RefineConfig(method="cg", iters=5, percdamp=0.0))
    >>> w.tolist()  # the kept weight absorbs half of the pruned one: 1 + 1·H₀₁/H₀₀
    [[1.5, 0.0]]
    """
    if keep.shape != dense.shape or (start is not None and start.shape != dense.shape):
        raise PrunelabError("dense, keep and start must have the same shape")
    rows = dense.shape[0]
    mask = keep.reshape(rows, -1).to(config.dtype)  # (out, cols)
    a, scale = _normalised(hessian, config)  # (cols, cols), (cols,)
    if a.shape[0] != mask.shape[1]:
        shapes = f"{tuple(hessian.shape)} vs weight {tuple(dense.shape)}"
        raise PrunelabError(f"Hessian does not fit the weight: {shapes}")
    target = dense.detach().reshape(rows, -1).to(config.dtype) * scale  # (out, cols)
    init = dense if start is None else start
    z = init.detach().reshape(rows, -1).to(config.dtype) * scale * mask  # (out, cols)
    b = target @ a  # (out, cols): the unconstrained optimum solves Ŵ A = B
    z = REFINERS.get(config.method)(a, b, mask, z, config)
    if config.method != "cg" and config.cg_iters:
        z = masked_cg(a, b, mask, z, config.cg_iters)
    out = (z / scale) * mask  # back to the layer's coordinates, exact zeros off the mask
    return out.to(dense.dtype).view(dense.shape)


def _normalised(hessian: Tensor, config: RefineConfig) -> tuple[Tensor, Tensor]:
    """``D⁻¹(H + λI)D⁻¹`` with ``D = sqrt(diag(H + λI))`` (unit diagonal), and ``D``."""
    h = hessian.to(config.dtype).clone()
    dead = h.diagonal() == 0  # inputs never active: keep the system definite
    h[dead, dead] = 1.0
    h.diagonal().add_(config.percdamp * h.diagonal().mean())
    scale = h.diagonal().sqrt()  # (cols,)
    return h / scale[:, None] / scale[None, :], scale


def admm(a: Tensor, b: Tensor, mask: Tensor, z: Tensor, config: RefineConfig) -> Tensor:
    """Scaled ADMM for ``min tr(Ŵ A Ŵᵀ) - 2 tr(Ŵ Bᵀ)`` over ``Ŵ = Z``, ``Z`` on ``mask``;
    starts from ``Z = z`` (on the mask), returns the last ``Z``."""
    solve = _shifted_solver(a, config.rho_growth > 1)
    u = torch.zeros_like(z)
    rho = config.rho
    for _ in range(config.iters):
        w = solve(b + rho * (z - u), rho)  # Ŵ = (B + ρ(Z − U)) (A + ρI)⁻¹
        z = (w + u) * mask
        u += w - z
        grown = min(rho * config.rho_growth, config.rho_max)
        u *= rho / grown  # the scaled dual follows ρ
        rho = grown
    return z


def _shifted_solver(a: Tensor, varying: bool) -> Callable[[Tensor, float], Tensor]:
    """``(R, ρ) ↦ R (A + ρI)⁻¹``: one eigendecomposition when ρ varies, else one inverse
    (Cholesky, cheaper) computed at the first call's ρ."""
    if varying:
        evals, evecs = torch.linalg.eigh(a)  # A = Q Λ Qᵀ

        def by_eig(rhs: Tensor, rho: float) -> Tensor:
            return ((rhs @ evecs) / (evals + rho)) @ evecs.T  # (out, cols)

        return by_eig
    inverse: list[Tensor] = []

    def by_inverse(rhs: Tensor, rho: float) -> Tensor:
        if not inverse:
            shifted = a + rho * torch.eye(a.shape[0], dtype=a.dtype)
            inverse.append(torch.cholesky_inverse(torch.linalg.cholesky(shifted)))
        return rhs @ inverse[0]  # (out, cols)

    return by_inverse


def masked_cg(a: Tensor, b: Tensor, mask: Tensor, z: Tensor, iters: int) -> Tensor:
    """``iters`` conjugate-gradient steps on every row's ``A_KK ŵ_K = B_K`` at once (rows
    are independent systems: step sizes per row), starting from ``z`` on the mask."""
    r = (b - z @ a) * mask  # (out, cols) residuals on the kept entries
    p = r.clone()
    rs = (r * r).sum(1, keepdim=True)  # (out, 1)
    tiny = torch.finfo(a.dtype).tiny
    for _ in range(iters):
        ap = (p @ a) * mask  # (out, cols)
        alpha = rs / (p * ap).sum(1, keepdim=True).clamp_min(tiny)
        z = z + alpha * p
        r = r - alpha * ap
        rs_new = (r * r).sum(1, keepdim=True)
        p = r + (rs_new / rs.clamp_min(tiny)) * p
        rs = rs_new
    return z


def _cg(a: Tensor, b: Tensor, mask: Tensor, z: Tensor, config: RefineConfig) -> Tensor:
    return masked_cg(a, b, mask, z, config.iters)


Refiner = Callable[[Tensor, Tensor, Tensor, Tensor, RefineConfig], Tensor]
REFINERS: Registry[Refiner] = Registry("refinement method")
REFINERS.add("admm", admm)
REFINERS.add("cg", _cg)


def output_matching_weight(
    weight: Tensor, hessian: Tensor, cross: Tensor, percdamp: float = 0.01
) -> Tensor:
    """The dense weights that best map the pruned model's inputs ``X`` to the dense model's
    outputs ``W X_dense`` ("asymmetric" calibration, as GPTAQ does for quantisation):
    ``argmin_V ‖V X - W X_dense‖² + λ‖V - W‖² = (W C + λW)(H + λI)⁻¹`` with
    ``H = 2/n·XᵀX``, ``C = 2/n·X_denseᵀX`` and ``λ = percdamp·mean diag(H)``.

    Pruning and refining this ``V`` against ``H`` minimises ``‖Ŵ X - W X_dense‖²``: every
    layer also corrects the error the pruned layers before it left in its inputs.

    >>> h = torch.eye(2)
    >>> w = torch.tensor([[1., 2.]])
    >>> torch.allclose(output_matching_weight(w, h, h), w)  # same inputs: W itself
    True
    """
    rows = weight.shape[0]
    w = weight.detach().reshape(rows, -1).to(hessian.dtype)  # (out, cols)
    h = hessian.clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    damp = percdamp * h.diagonal().mean()
    h.diagonal().add_(damp)
    rhs = (w @ cross + damp * w).T  # (cols, out)
    v = torch.cholesky_solve(rhs, torch.linalg.cholesky(h)).T  # (out, cols)
    return v.to(weight.dtype).reshape(weight.shape)


def layer_error(weight: Tensor, dense: Tensor, hessian: Tensor) -> float:
    """``tr((Ŵ - W) H (Ŵ - W)ᵀ)``: with ``H = 2/n·XᵀX`` this is ``2/n · ‖ŴX - WX‖²``.

    >>> layer_error(torch.tensor([[1., 0.]]), torch.tensor([[1., 1.]]), torch.eye(2))
    1.0
    """
    d = (weight - dense).reshape(weight.shape[0], -1).to(torch.float64)  # (out, cols)
    return float(((d @ hessian.to(torch.float64)) * d).sum())
