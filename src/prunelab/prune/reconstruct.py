"""SparseGPT (Frantar & Alistarh 2023): prune one layer *and* reconstruct its remaining weights.

For a layer ``y = W x`` with calibration inputs ``X`` (rows = tokens or conv patches), the
layer-wise objective is ``‖W X^T - Ŵ X^T‖²``; its Hessian w.r.t. a row of ``W`` is
``H = 2/n · X^T X``. Columns are visited left to right in blocks of ``blocksize``. Within a
block the mask is chosen by the OBS saliency ``w² / [H⁻¹]_jj²`` (for unstructured sparsity once
per block, for N:M once per group of ``m`` columns); each pruned weight's error
``e = w / [H⁻¹]_jj`` is pushed onto the not-yet-visited columns, ``W[:, j:] -= e ⊗ H⁻¹[j, j:]``,
using the upper Cholesky factor of ``H⁻¹`` (reference: IST-DASLab/sparsegpt ``sparsegpt.py``).
Updates inside a block are applied eagerly, to later blocks lazily as one matrix product.

This module is the layer-level algorithm and the input statistics it needs;
:mod:`prunelab.prune.sequential` drives it over a whole model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prunelab.errors import PrunelabError
from prunelab.prune.admm import AdmmConfig, admm_prune
from prunelab.prune.calibration import _input_sqsum
from prunelab.prune.structures.base import Structure  # not the package: it imports us back
from prunelab.prune.structures.masked import NM, Unstructured
from prunelab.registry import Registry


@dataclass(frozen=True)
class SparseGPTConfig:
    """``blocksize`` columns per lazy-update block; dampening ``percdamp`` × mean diag(H);
    arithmetic in ``dtype`` (float32 as in the reference; float64 for exact comparisons)."""

    blocksize: int = 128
    percdamp: float = 0.01
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        if self.blocksize < 1 or not 0 <= self.percdamp:
            raise PrunelabError(f"invalid SparseGPT config {self}")


def layer_input_rows(module: nn.Module, x: Tensor) -> Tensor:
    """The rows the layer multiplies by its flattened weight: (n, in_features * k...).

    Linear: every token; Conv: every (unfolded) patch, columns ordered like
    ``weight.flatten(1)`` (in_channel, then kernel positions).

    >>> layer_input_rows(nn.Conv2d(2, 3, 3, padding=1), torch.zeros(4, 2, 5, 5)).shape
    torch.Size([100, 18])
    """
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])  # (..., in) -> (tokens, in)
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(2)  # (B, C, L) -> (B, C, 1, L)
        kernel, stride = (1, *module.kernel_size), (1, *module.stride)
        dilation = (1, *module.dilation)
        pad = (0, *_conv_padding(module))
    elif isinstance(module, nn.Conv2d):
        kernel, stride, dilation = module.kernel_size, module.stride, module.dilation
        pad = _conv_padding(module)
    else:
        raise PrunelabError(f"SparseGPT supports Linear, Conv1d and Conv2d, not {type(module)}")
    if module.groups != 1 or module.padding_mode != "zeros":
        raise PrunelabError("SparseGPT needs groups=1 convolutions with zero padding")
    cols = nn.functional.unfold(x, kernel, dilation, pad, stride)  # (B, C*kh*kw, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])  # (B*L, C*kh*kw)


def _conv_padding(module: nn.Module) -> tuple[int, ...]:
    if module.padding == "valid":
        return (0,) * len(module.kernel_size)
    if module.padding == "same":
        return tuple(d * (k - 1) // 2 for d, k in zip(module.dilation, module.kernel_size))
    return tuple(module.padding)


class InputStats:
    """Running statistics of one layer's calibration inputs.

    ``full=True`` keeps ``X^T X`` (SparseGPT's Hessian); otherwise only the per-feature sum of
    squares that Wanda's ``‖X_j‖`` needs (per input channel for convolutions, as in
    :mod:`prunelab.prune.calibration`). When :meth:`add` is also given the dense model's input
    for the same rows, ``X_dense^T X`` is kept too (:meth:`cross`).
    """

    def __init__(self, module: nn.Module, full: bool) -> None:
        self.module, self.full, self.count = module, full, 0
        self.xtx: Tensor | None = None
        self.sqsum: Tensor | None = None
        self.xdx: Tensor | None = None

    def add(self, x: Tensor, dense_x: Tensor | None = None, memo: dict | None = None) -> None:
        """Add one batch of inputs ``x`` (and the dense model's ``dense_x`` for the same rows).

        ``memo``: products already computed in this forward pass, keyed by the input tensors'
        identity, so Linear layers fed the very same tensor (a block's q/k/v, gate/up)
        multiply ``X^T X`` once; the caller empties it between passes."""
        key = (id(x), id(dense_x), self.full) if isinstance(self.module, nn.Linear) else None
        if memo is not None and key is not None and key in memo:
            n, xtx, xdx, sq = memo[key][1]
        else:
            n, xtx, xdx, sq = self._products(x, dense_x)
            if memo is not None and key is not None:
                memo[key] = ((x, dense_x), (n, xtx, xdx, sq))  # holding x keeps its id unique
        if xtx is not None:
            self.count += n
            self.xtx = xtx if self.xtx is None else self.xtx + xtx
        if xdx is not None:
            self.xdx = xdx if self.xdx is None else self.xdx + xdx
        self.sqsum = sq if self.sqsum is None else self.sqsum + sq

    def _products(
        self, x: Tensor, dense_x: Tensor | None
    ) -> tuple[int, Tensor | None, Tensor | None, Tensor]:
        """This batch's row count, ``X^T X``, ``X_dense^T X`` (None when not kept) and sum
        of squares."""
        x = x.detach().float()
        n, xtx, xdx = 0, None, None
        if self.full:
            rows = layer_input_rows(self.module, x)  # (n, cols)
            n, xtx = rows.shape[0], rows.T @ rows  # (cols, cols)
            if dense_x is not None:
                dense_rows = layer_input_rows(self.module, dense_x.detach().float())  # (n, cols)
                xdx = dense_rows.T @ rows  # (cols, cols)
        return n, xtx, xdx, _input_sqsum(self.module, x)  # sq: (in,) / (C,)

    def hessian(self) -> Tensor:
        """``2/n · X^T X`` (cols, cols), n = rows seen."""
        if self.xtx is None:
            raise PrunelabError("no calibration inputs reached this layer")
        return self.xtx * (2.0 / self.count)

    def cross(self) -> Tensor | None:
        """``2/n · X_dense^T X`` (cols, cols) when dense inputs were given, else None."""
        return None if self.xdx is None else self.xdx * (2.0 / self.count)

    def input_norm(self) -> Tensor:
        """‖X_j‖₂ per input feature (channel): what Wanda multiplies |W| by."""
        if self.sqsum is None:
            raise PrunelabError("no calibration inputs reached this layer")
        return self.sqsum.sqrt()


def _upper_cholesky_of_inverse(h: Tensor) -> Tensor:
    """Upper Cholesky factor of H⁻¹ (the reference's ``Hinv``)."""
    low, info = torch.linalg.cholesky_ex(h)
    if int(info) != 0:
        raise PrunelabError("Hessian is not positive definite; raise SparseGPTConfig.percdamp")
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    hinv = torch.cholesky_solve(eye, low)  # (cols, cols); ~10× faster than cholesky_inverse on CPU
    up, info = torch.linalg.cholesky_ex(hinv, upper=True)
    if int(info) != 0:
        raise PrunelabError("H⁻¹ is not positive definite; raise SparseGPTConfig.percdamp")
    return up


def _block_counts(rows: int, cols: int, sparsity: float, blocksize: int) -> list[int]:
    """Weights to prune per column block; they sum to exactly ``round(sparsity·rows·cols)``.

    >>> _block_counts(2, 5, 0.5, 2)
    [2, 2, 1]
    """
    ends = list(range(blocksize, cols, blocksize)) + [cols]
    cum = [round(sparsity * rows * e) for e in ends]
    return [b - a for a, b in zip([0] + cum[:-1], cum)]


def _lowest(scores: Tensor, k: int) -> Tensor:
    """Boolean mask of the ``k`` lowest scores (ties by position)."""
    flat = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    flat[torch.argsort(scores.flatten(), stable=True)[:k]] = True
    return flat.view(scores.shape)


def sparsegpt(
    weight: Tensor,
    hessian: Tensor,
    sparsity: float,
    structure: Structure = Unstructured(),
    config: SparseGPTConfig = SparseGPTConfig(),
) -> tuple[Tensor, Tensor]:
    """Prune ``weight`` (out, in, *k) to ``sparsity`` and update what is kept; returns
    ``(new_weight, keep_mask)``, both weight-shaped. ``hessian`` is (in·k, in·k).

    >>> w = torch.tensor([[1., -2., 3., 0.5]])
    >>> new, keep = sparsegpt(w, torch.eye(4), 0.5)
    >>> keep.tolist(), new.tolist()  # H = I: no correlations, nothing to compensate
    ([[False, True, True, False]], [[0.0, -2.0, 3.0, 0.0]])
    """
    if not 0.0 <= sparsity < 1.0:
        raise PrunelabError(f"sparsity must be in [0, 1), got {sparsity}")
    w = weight.detach().reshape(weight.shape[0], -1).to(config.dtype).clone()  # (out, cols)
    rows, cols = w.shape
    if hessian.shape != (cols, cols):
        raise PrunelabError(f"Hessian {tuple(hessian.shape)} does not fit weight ({rows}, {cols})")
    h = hessian.to(config.dtype).clone()
    dead = h.diagonal() == 0  # inputs never active: their weights cost nothing to prune
    h[dead, dead] = 1.0
    h.diagonal().add_(config.percdamp * h.diagonal().mean())
    hinv = _upper_cholesky_of_inverse(h)  # (cols, cols)
    nm = structure if isinstance(structure, NM) else None
    if nm is not None and (config.blocksize % nm.m or cols % nm.m):
        raise PrunelabError(f"N:M {nm} needs M to divide the blocksize and the input dim {cols}")
    if not isinstance(structure, NM | Unstructured):
        raise PrunelabError(f"SparseGPT supports unstructured and N:M, not '{structure}'")
    counts = _block_counts(rows, cols, sparsity, config.blocksize)
    keep = torch.ones(rows, cols, dtype=torch.bool, device=w.device)
    for b, i1 in enumerate(range(0, cols, config.blocksize)):
        i2 = min(i1 + config.blocksize, cols)
        pruned, err = _obs_block(w, hinv, dead, i1, i2, None if nm else counts[b], nm)
        keep[:, i1:i2] = ~pruned
        w[:, i2:] -= err @ hinv[i1:i2, i2:]  # lazy update of the later blocks
    return w.to(weight.dtype).view(weight.shape), keep.view(weight.shape)


def _obs_block(
    w: Tensor, hinv: Tensor, dead: Tensor, i1: int, i2: int, count: int | None, nm: NM | None
) -> tuple[Tensor, Tensor]:
    """Prune columns ``i1:i2`` of ``w`` in place; returns (pruned mask, scaled errors).

    The column-by-column updates run eagerly within sub-blocks of ``_SUB`` columns and reach
    the rest of the block as one product per sub-block: the same arithmetic as the reference's
    eager loop, but each step touches a (rows, ≤16) slice instead of (rows, ≤128).
    """
    w1 = w[:, i1:i2].clone()  # (rows, b)
    h1 = hinv[i1:i2, i1:i2]  # (b, b)
    d = h1.diagonal()  # (b,)
    err = torch.zeros_like(w1)
    if nm is None:
        pruned = _lowest(_saliency(w1, d, dead[i1:i2]), count or 0)
    else:
        pruned = torch.zeros_like(w1, dtype=torch.bool)
    sub = _SUB if nm is None else nm.m * max(1, _SUB // nm.m)  # N:M groups never straddle
    for j1 in range(0, i2 - i1, sub):
        j2 = min(j1 + sub, i2 - i1)
        for i in range(j1, j2):
            if nm is not None and i % nm.m == 0:
                s = _saliency(w1[:, i : i + nm.m], d[i : i + nm.m], dead[i1 + i : i1 + i + nm.m])
                low = torch.topk(s, nm.m - nm.n, dim=1, largest=False).indices  # (rows, m-n)
                pruned[:, i : i + nm.m].scatter_(1, low, True)
            e = w1[:, i] * pruned[:, i] / d[i]  # (rows,) scaled error of the pruned weights
            w1[:, i:j2].sub_(torch.outer(e, h1[i, i:j2]))  # w1 -= e ⊗ h1[i]; kept: e = 0
            err[:, i] = e
        w1[:, j2:] -= err[:, j1:j2] @ h1[j1:j2, j2:]  # the sub-block's errors, lazily
    w[:, i1:i2] = w1.masked_fill_(pruned, 0.0)  # pruned columns are ~0 now; make them exact
    return pruned, err


_SUB = 16  # columns per eager sub-block inside a lazy block


def _saliency(w: Tensor, d: Tensor, dead: Tensor) -> Tensor:
    """OBS saliency ``w² / [H⁻¹]_jj²``; dead inputs score 0 (pruned first)."""
    return torch.where(dead, 0.0, w.pow(2) / d.pow(2))  # (rows, b)


Reconstructor = Callable[[Tensor, Tensor, float, Structure, SparseGPTConfig], tuple[Tensor, Tensor]]
RECONSTRUCTORS: Registry[Reconstructor] = Registry("reconstruction method")
RECONSTRUCTORS.add("sparsegpt", sparsegpt)


def _admm(
    weight: Tensor, hessian: Tensor, sparsity: float, structure: Structure, config: SparseGPTConfig
) -> tuple[Tensor, Tensor]:
    """``admm-grad`` (Boža 2024's gradual ADMM, :mod:`prunelab.prune.admm`) with its published
    iteration settings; SparseGPT's dampening and dtype."""
    return admm_prune(
        weight,
        hessian,
        sparsity,
        structure,
        AdmmConfig(percdamp=config.percdamp, dtype=config.dtype),
    )


RECONSTRUCTORS.add("admm-grad", _admm)
