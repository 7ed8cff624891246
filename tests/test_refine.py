"""Refining kept weights after the mask on tiny seeded layers and models: layer error of
refined (ADMM, masked CG) < SparseGPT < Wanda at 50 % and 2:4, masks never change, ADMM and CG
equal a direct per-row least-squares solve in float64, the sequential walk with ``refine``
lowers a small MLP's output error; dense-model targets equal a literal ridge fit and lower a
2-block Llama's final error; block reconstruction (Adam) lowers a Llama block's output error."""

from __future__ import annotations

import copy

import pytest
import torch
from tinymodels import tiny_llama
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.prune.admm import AdmmConfig, admm_prune
from prunelab.prune.apply import apply_masks
from prunelab.prune.blockfit import BlockFitConfig, fit_block
from prunelab.prune.reconstruct import InputStats, sparsegpt
from prunelab.prune.refine import RefineConfig, layer_error, output_matching_weight, refine
from prunelab.prune.sequential import SequentialConfig, prune_sequential
from prunelab.prune.structures import NM, Unstructured, select_masks


def _correlated_inputs(n: int, d: int, seed: int) -> torch.Tensor:
    """(n, d) inputs with correlated features of very different scales (like activations)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) / d**0.5
    scale = torch.exp(torch.randn(d, generator=g))  # log-normal feature scales
    return torch.randn(n, d, generator=g) @ mix * scale  # (n, d)


def _hessian(x: torch.Tensor) -> torch.Tensor:
    return 2 * x.T @ x / x.shape[0]  # (d, d)


def _direct(w: torch.Tensor, keep: torch.Tensor, h: torch.Tensor, damp: float) -> torch.Tensor:
    """The literal optimum, row by row: ``ŵ_K = (H_KK)⁻¹ (H w)_K`` with ``H`` dampened."""
    h = h.double().clone()
    h.diagonal().add_(damp * h.diagonal().mean())
    out = torch.zeros_like(w, dtype=torch.float64)
    for r in range(w.shape[0]):
        k = keep[r]
        out[r, k] = torch.linalg.solve(h[k][:, k], h[k] @ w[r].double())
    return out


def _output_error(x: torch.Tensor, w: torch.Tensor, dense: torch.Tensor) -> float:
    return float(torch.linalg.norm(x @ w.T - x @ dense.T))  # ‖ŴX - WX‖


def _llama_ids(batches: int = 8, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 64, (2, 32), generator=g) for _ in range(batches)]


def _llama_targets(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".layers." in n}


STRUCTURES = [Unstructured(), NM(2, 4)]


@pytest.mark.parametrize("structure", STRUCTURES, ids=str)
def test_refined_error_below_sparsegpt_below_wanda_and_masks_kept(structure):
    x = _correlated_inputs(512, 64, 7)
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(0))
    h = _hessian(x)
    wanda = select_masks({"l": w.abs() * x.pow(2).sum(0).sqrt()}, 0.5, "row", structure)["l"]
    sgpt, keep = sparsegpt(w, h, 0.5, structure)
    refined = refine(w, keep, h, start=sgpt)
    wanda_refined = refine(w, wanda, h)
    err = {
        "refined": _output_error(x, refined, w),
        "sparsegpt": _output_error(x, sgpt, w),
        "wanda": _output_error(x, w * wanda, w),
        "wanda+refine": _output_error(x, wanda_refined, w),
    }
    assert err["refined"] < err["sparsegpt"] < err["wanda"], err
    assert err["wanda+refine"] < 0.9 * err["wanda"], err
    for mask, out in ((keep, refined), (wanda, wanda_refined)):
        assert torch.all(out[~mask] == 0)  # the mask is respected exactly ...
        assert torch.all(out[mask] != 0)  # ... and not shrunk
    assert int((~keep).sum()) == w.numel() // 2
    if isinstance(structure, NM):
        assert torch.all(refined.view(32, 16, 4).ne(0).sum(-1) == 2)


@pytest.mark.parametrize("method", ["admm", "cg"])
@pytest.mark.parametrize("structure", STRUCTURES, ids=str)
def test_float64_solution_equals_a_direct_least_squares_solve_per_row(method, structure):
    x = _correlated_inputs(256, 16, 3)
    w = torch.randn(6, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    h = _hessian(x).double()
    keep = select_masks({"l": w.abs()}, 0.5, "row", structure)["l"]
    iters = 400 if method == "admm" else 16  # CG: exact after at most |K| = 8 steps per row
    cfg = RefineConfig(method=method, iters=iters, cg_iters=0, dtype=torch.float64)
    expected = _direct(w, keep, h, cfg.percdamp)
    torch.testing.assert_close(refine(w, keep, h, cfg), expected, rtol=1e-9, atol=1e-9)


def test_admm_with_growing_rho_and_cg_polish_reach_the_optimum():
    x = _correlated_inputs(256, 24, 5)
    w = torch.randn(8, 24, generator=torch.Generator().manual_seed(6))
    h = _hessian(x)
    keep = select_masks({"l": w.abs()}, 0.5, "row", Unstructured())["l"]
    best = layer_error(_direct(w, keep, h, 0.01).float(), w, h)
    grown = refine(w, keep, h, RefineConfig(iters=30, rho=0.3, rho_growth=1.2, cg_iters=0))
    polished = refine(w, keep, h, RefineConfig(iters=10, cg_iters=10))
    for out in (grown, polished):
        assert layer_error(out, w, h) < 1.01 * best
        assert torch.all(out[~keep] == 0)
    assert layer_error(w * keep, w, h) > 1.5 * best  # there was something to refine


def test_refine_leaves_an_already_optimal_layer_and_a_full_mask_alone():
    h = _hessian(_correlated_inputs(128, 8, 1))
    w = torch.randn(4, 8, generator=torch.Generator().manual_seed(2))
    full = torch.ones_like(w, dtype=torch.bool)
    torch.testing.assert_close(refine(w, full, h), w, rtol=1e-4, atol=1e-5)
    keep = select_masks({"l": w.abs()}, 0.5, "row", Unstructured())["l"]
    cfg = RefineConfig(method="cg", iters=20, dtype=torch.float64)
    best = refine(w.double(), keep, h.double(), cfg)
    torch.testing.assert_close(refine(w.double(), keep, h.double(), cfg, start=best), best)


def test_refine_rejects_bad_configs_and_shapes():
    with pytest.raises(PrunelabError):
        RefineConfig(iters=-1)
    with pytest.raises(PrunelabError):
        RefineConfig(rho=0.0)
    with pytest.raises(PrunelabError, match="unknown refinement method"):
        refine(torch.ones(2, 2), torch.ones(2, 2, dtype=torch.bool), torch.eye(2),
               RefineConfig(method="adm"))  # fmt: skip
    with pytest.raises(PrunelabError, match="Hessian"):
        refine(torch.ones(2, 3), torch.ones(2, 3, dtype=torch.bool), torch.eye(2))


def test_conv_weights_are_refined_in_their_flattened_layout():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    rows = nn.functional.unfold(x, 3, padding=1).transpose(1, 2).reshape(-1, 27)  # (144, 27)
    w = conv.weight.detach()
    h = _hessian(rows)
    keep = select_masks({"l": w.abs()}, 0.5, "row", Unstructured())["l"]
    out = refine(w, keep, h)
    assert out.shape == w.shape and torch.all(out[~keep] == 0)
    assert _output_error(rows, out.flatten(1), w.flatten(1)) < _output_error(
        rows, (w * keep).flatten(1), w.flatten(1)
    )


# --- ADMM with gradual mask selection ---------------------------------------------------------


@pytest.mark.parametrize("structure", STRUCTURES, ids=str)
def test_gradual_admm_prunes_exactly_and_beats_refined_sparsegpt(structure):
    x = _correlated_inputs(512, 64, 7)
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(0))
    h = _hessian(x)
    new, keep = admm_prune(w, h, 0.5, structure)
    assert int((~keep).sum()) == w.numel() // 2 and torch.all(new[~keep] == 0)
    if isinstance(structure, NM):
        assert torch.all(keep.view(32, 16, 4).sum(-1) == 2)
    sgpt, sgpt_keep = sparsegpt(w, h, 0.5, structure)
    refined = refine(w, sgpt_keep, h, start=sgpt)
    assert _output_error(x, new, w) < _output_error(x, refined, w) < _output_error(x, sgpt, w)


def test_gradual_admm_is_a_sequential_method_and_rejects_bad_configs():
    dense, ids = tiny_llama(), _llama_ids(2)
    model = copy.deepcopy(dense)
    masks = prune_sequential(model, _llama_targets(model), ids, "admm-grad", 0.5, NM(2, 4))
    for name, module in _llama_targets(model).items():
        assert torch.all(masks[name].view(module.weight.shape[0], -1, 4).sum(-1) == 2)
        assert torch.all(module.weight[~masks[name]] == 0)
    with pytest.raises(PrunelabError):
        AdmmConfig(iters=10, gradual=12)


# --- through the sequential walk --------------------------------------------------------------


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 8))


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_sequential_refine_keeps_each_mask_and_lowers_the_output_error(method):
    x = _correlated_inputs(128, 12, 11)
    dense = _mlp()
    plain, refined = copy.deepcopy(dense), copy.deepcopy(dense)
    targets = lambda m: {"0": m[0], "2": m[2]}  # noqa: E731
    masks = prune_sequential(plain, targets(plain), [x[:64], x[64:]], method, 0.5)
    cfg = SequentialConfig(refine=RefineConfig())
    masks_r = prune_sequential(refined, targets(refined), [x[:64], x[64:]], method, 0.5, config=cfg)
    assert torch.equal(masks["0"], masks_r["0"])  # the first layer sees the same inputs
    for name, module in targets(refined).items():
        assert torch.all(module.weight[~masks_r[name]] == 0)
        assert int((module.weight == 0).sum()) == module.weight.numel() // 2
    with torch.no_grad():
        ref = dense(x)
        e_plain = torch.linalg.norm(plain(x) - ref)
        e_refined = torch.linalg.norm(refined(x) - ref)
    assert e_refined < e_plain, (e_refined, e_plain)


# --- dense-model targets ("asymmetric" calibration) -------------------------------------------


def test_output_matching_weight_is_the_ridge_least_squares_fit_of_the_dense_outputs():
    x = _correlated_inputs(200, 10, 21).double()  # the pruned model's inputs
    x_dense = x + 0.3 * _correlated_inputs(200, 10, 22).double()  # the dense model's
    w = torch.randn(5, 10, generator=torch.Generator().manual_seed(23), dtype=torch.float64)
    h, cross = 2 * x.T @ x / 200, 2 * x_dense.T @ x / 200
    v = output_matching_weight(w, h, cross, percdamp=0.01)
    lam = 0.01 * h.diagonal().mean()
    # normal equations of min ‖V Xᵀ - W X_denseᵀ‖²·2/n + λ‖V - W‖²
    expected = torch.linalg.solve(
        h + lam * torch.eye(10, dtype=torch.float64), cross.T @ w.T + lam * w.T
    ).T
    torch.testing.assert_close(v, expected)
    stats = InputStats(nn.Linear(10, 5), full=True)
    stats.add(x[:120], x_dense[:120])
    stats.add(x[120:], x_dense[120:])
    torch.testing.assert_close(stats.cross(), cross.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(output_matching_weight(w, h, h), w)  # same inputs: W itself


def _logit_error(model: nn.Module, dense: nn.Module, ids: list[torch.Tensor]) -> float:
    """‖logits_pruned - logits_dense‖ summed over the calibration batches ``ids``."""
    with torch.no_grad():
        return sum(float(torch.linalg.norm(model(i).logits - dense(i).logits)) for i in ids)


def test_dense_target_changes_nothing_in_the_first_block_and_lowers_the_error():
    dense, ids = tiny_llama(), _llama_ids()
    local, matched = copy.deepcopy(dense), copy.deepcopy(dense)
    staged = SequentialConfig(staged=True)
    prune_sequential(local, _llama_targets(local), ids, "sparsegpt", 0.5, config=staged)
    cfg = SequentialConfig(staged=True, target="dense")
    masks = prune_sequential(matched, _llama_targets(matched), ids, "sparsegpt", 0.5, config=cfg)
    for name in [n for n in _llama_targets(dense) if ".layers.0.self_attn.q" in n]:
        # the first stage of block 0 sees the dense model's inputs either way
        torch.testing.assert_close(
            matched.get_submodule(name).weight, local.get_submodule(name).weight
        )
    for name, module in _llama_targets(matched).items():
        assert torch.all(module.weight[~masks[name]] == 0)
        assert int((module.weight == 0).sum()) == module.weight.numel() // 2
    assert _logit_error(matched, dense, ids) < 0.9 * _logit_error(local, dense, ids)


# --- block reconstruction ---------------------------------------------------------------------


def _block0(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The first decoder block's output on ``ids``."""
    out: list[torch.Tensor] = []
    hook = model.model.layers[0].register_forward_hook(
        lambda _m, _i, o: out.append(o[0] if isinstance(o, tuple) else o)
    )
    with torch.no_grad():
        model(ids)
    hook.remove()
    return out[0]


@pytest.mark.parametrize("target", ["local", "dense"])
def test_block_fit_lowers_the_block_output_error_and_keeps_the_masks(target):
    dense, ids = tiny_llama(), _llama_ids()
    plain, fitted = copy.deepcopy(dense), copy.deepcopy(dense)
    prune_sequential(plain, _llama_targets(plain), ids, "wanda", 0.5)
    cfg = SequentialConfig(block_fit=BlockFitConfig(steps=60, lr=3e-3, target=target))
    masks = prune_sequential(fitted, _llama_targets(fitted), ids, "wanda", 0.5, config=cfg)
    # block 0 on the dense embeddings: its output error with and without the fit
    block_err = {
        label: float(torch.linalg.norm(_block0(model, ids[0]) - _block0(dense, ids[0])))
        for label, model in (("plain", plain), ("fitted", fitted))
    }
    assert block_err["fitted"] < 0.9 * block_err["plain"], block_err
    assert _logit_error(fitted, dense, ids) < _logit_error(plain, dense, ids)
    for name, module in _llama_targets(fitted).items():
        assert torch.all(module.weight[~masks[name]] == 0)
        assert int((module.weight == 0).sum()) == module.weight.numel() // 2


def test_fit_block_moves_only_kept_weights_and_lowers_its_loss():
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 6))
    calls = [(torch.randn(16, 6), (None,), {}) for _ in range(3)]
    with torch.no_grad():
        wanted = [block(h) for h, _, _ in calls]
    keep = {"0": torch.rand(8, 6) > 0.5, "2": torch.rand(6, 8) > 0.5}
    apply_masks(block, keep)
    bias = block[0].bias.detach().clone()

    def mse() -> float:
        with torch.no_grad():
            return sum(float(((block(h) - y) ** 2).mean()) for (h, _, _), y in zip(calls, wanted))

    before = mse()
    cfg = BlockFitConfig(steps=30, lr=1e-2)
    losses = fit_block(block, [block[0], block[2]], calls, wanted, cfg)
    assert len(losses) == 30 and mse() < 0.8 * before
    for name in ("0", "2"):
        layer = block.get_submodule(name)
        assert torch.all(layer.parametrizations.weight.original[~keep[name]] == 0)
        assert layer.parametrizations.weight.original.grad is None
    torch.testing.assert_close(block[0].bias, bias)  # only the listed layers' weights train
