"""SparseGPT, the sequential driver and OWL on tiny seeded models (a Linear, an MLP, a 2-layer
BERT and a 2-layer Llama built from configs): exact sparsity and N:M patterns, a literal OBS
update, reconstruction error below magnitude and Wanda, sequential vs one-pass calibration
against a hand-rolled reference, and OWL levels averaging to the target."""

from __future__ import annotations

import copy
import io
import logging
import sys

import pytest
import torch
from tinymodels import tiny_llama
from torch import nn

from prunelab.progress import layer_progress
from prunelab.prune.allocation.owl import owl, owl_sparsities
from prunelab.prune.criteria import compute_scores
from prunelab.prune.reconstruct import InputStats, SparseGPTConfig, sparsegpt
from prunelab.prune.sequential import SequentialConfig, prune_sequential
from prunelab.prune.structures import NM, Unstructured, select_masks
from prunelab.prune.walk import block_stages, find_blocks, record_block_calls

transformers = pytest.importorskip("transformers")


def _correlated_inputs(n: int, d: int, seed: int) -> torch.Tensor:
    """(n, d) inputs with correlated features of very different scales (like activations)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) / d**0.5
    scale = torch.exp(torch.randn(d, generator=g))  # log-normal feature scales
    return torch.randn(n, d, generator=g) @ mix * scale  # (n, d)


def _hessian(x: torch.Tensor) -> torch.Tensor:
    return 2 * x.T @ x / x.shape[0]  # (d, d)


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 8))


def _tiny_bert() -> nn.Module:
    cfg = transformers.BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        initializer_range=0.2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return transformers.BertModel(cfg, add_pooling_layer=False).eval()


def _ids(batches: int = 2, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 64, (2, 16), generator=g) for _ in range(batches)]


def _decoder_targets(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".layers." in n}


# --- one layer -------------------------------------------------------------------------------


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.77])
def test_sparsegpt_prunes_exactly_the_requested_fraction(sparsity):
    w = torch.randn(7, 40, generator=torch.Generator().manual_seed(1))
    new, keep = sparsegpt(
        w, _hessian(_correlated_inputs(64, 40, 2)), sparsity, config=SparseGPTConfig(16)
    )
    assert int((~keep).sum()) == round(sparsity * w.numel())
    assert torch.all(new[~keep] == 0)
    assert torch.all(new[keep] != 0)


def test_sparsegpt_nm_keeps_n_of_every_m_and_does_not_depend_on_the_blocksize():
    w = torch.randn(6, 32, generator=torch.Generator().manual_seed(3))
    h = _hessian(_correlated_inputs(100, 32, 4))
    cfgs = [SparseGPTConfig(b, dtype=torch.float64) for b in (4, 8, 32)]
    results = [sparsegpt(w, h, 0.5, NM(2, 4), c) for c in cfgs]
    for new, keep in results:
        assert torch.all(keep.view(6, 8, 4).sum(2) == 2)  # (out, in/4, 4): two kept per group
        assert torch.all(new[~keep] == 0)
    # lazy (blockwise) updates are exact: every blocksize gives the same result
    for new, keep in results[1:]:
        assert torch.equal(keep, results[0][1])
        torch.testing.assert_close(new, results[0][0])


def test_sparsegpt_at_sparsity_zero_leaves_weights_unchanged():
    w = torch.randn(5, 24, generator=torch.Generator().manual_seed(5))
    new, keep = sparsegpt(w, _hessian(_correlated_inputs(50, 24, 6)), 0.0)
    assert keep.all()
    assert torch.equal(new, w)


def test_sparsegpt_obs_update_literal():
    # H = [[2, 1], [1, 4]], no dampening: pruning w0 moves w1 by w0 * H01 / H11 (least squares)
    new, keep = sparsegpt(
        torch.tensor([[1.0, 3.0]]),
        torch.tensor([[2.0, 1.0], [1.0, 4.0]]),
        0.5,
        config=SparseGPTConfig(percdamp=0.0),
    )
    assert keep.tolist() == [[False, True]]
    torch.testing.assert_close(new, torch.tensor([[0.0, 3.25]]))


def _reference_fasterprune(w, h, sparsity, prune_n=0, prune_m=0, blocksize=128, percdamp=0.01):
    """IST-DASLab/sparsegpt ``SparseGPT.fasterprune`` transcribed (float64, no quantiser),
    except ``tmp < thresh``: the reference's ``<=`` prunes one weight more per block."""
    w, h = w.clone().double(), h.clone().double()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h += percdamp * torch.mean(torch.diag(h)) * torch.eye(h.shape[0], dtype=h.dtype)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    for i1 in range(0, w.shape[1], blocksize):
        i2 = min(i1 + blocksize, w.shape[1])
        w1, q1, err1 = (
            w[:, i1:i2].clone(),
            torch.zeros_like(w[:, i1:i2]),
            torch.zeros_like(w[:, i1:i2]),
        )
        hinv1 = hinv[i1:i2, i1:i2]
        if prune_n == 0:
            tmp = w1**2 / torch.diag(hinv1).reshape((1, -1)) ** 2
            mask1 = tmp < torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
        else:
            mask1 = torch.zeros_like(w1) == 1
        for i in range(i2 - i1):
            if prune_n != 0 and i % prune_m == 0:
                tmp = w1[:, i : i + prune_m] ** 2 / torch.diag(hinv1)[i : i + prune_m] ** 2
                mask1.scatter_(1, i + torch.topk(tmp, prune_n, dim=1, largest=False)[1], True)
            q = w1[:, i].clone()
            q[mask1[:, i]] = 0
            q1[:, i] = q
            err = (w1[:, i] - q) / hinv1[i, i]
            w1[:, i:] -= err.unsqueeze(1).matmul(hinv1[i, i:].unsqueeze(0))
            err1[:, i] = err
        w[:, i1:i2] = q1
        w[:, i2:] -= err1.matmul(hinv[i1:i2, i2:])
    return w


@pytest.mark.parametrize("structure", [Unstructured(), NM(2, 4)])
def test_sparsegpt_equals_the_reference_implementation(structure):
    x = _correlated_inputs(300, 192, 11).double()  # 192 columns: one full and one partial block
    w = torch.randn(24, 192, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    args = (2, 4) if isinstance(structure, NM) else ()
    expected = _reference_fasterprune(w, _hessian(x), 0.5, *args)
    new, keep = sparsegpt(w, _hessian(x), 0.5, structure, SparseGPTConfig(dtype=torch.float64))
    assert torch.equal(keep, expected != 0)
    torch.testing.assert_close(new, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("structure", [None, NM(2, 4)])
def test_sparsegpt_reconstructs_a_linear_layer_better_than_magnitude_and_wanda(structure):
    torch.manual_seed(0)
    layer = nn.Linear(64, 32)
    x = _correlated_inputs(512, 64, 7)
    w = layer.weight.detach()
    norm = x.pow(2).sum(0).sqrt()  # (64,) Wanda's ||X_j||
    errors = {}
    level = 0.5
    for name, scores in {"magnitude": w.abs(), "wanda": w.abs() * norm}.items():
        keep = select_masks({"l": scores}, level, "row", structure or Unstructured())["l"]
        errors[name] = torch.linalg.norm(x @ (w * keep).T - x @ w.T)
    new, keep = sparsegpt(w, _hessian(x), level, structure or Unstructured())
    errors["sparsegpt"] = torch.linalg.norm(x @ new.T - x @ w.T)
    assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"], errors


def test_input_stats_unfold_a_conv_like_the_weight_flattens():
    conv = nn.Conv2d(2, 3, 3, padding=1)
    x = torch.randn(2, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    stats = InputStats(conv, full=True)
    stats.add(x)
    rows = nn.functional.unfold(x, 3, padding=1).transpose(1, 2).reshape(-1, 18)  # (50, 18)
    torch.testing.assert_close(
        rows @ conv.weight.flatten(1).T + conv.bias, conv(x).permute(0, 2, 3, 1).reshape(-1, 3)
    )
    torch.testing.assert_close(stats.hessian(), 2 * rows.T @ rows / 50)


# --- sequential driver ---------------------------------------------------------------------


def _hand_rolled(model: nn.Sequential, x: torch.Tensor, sequential: bool) -> list[torch.Tensor]:
    """SparseGPT on the two layers by hand; layer 2 sees pruned or dense layer-1 outputs."""
    w1, _ = sparsegpt(model[0].weight, _hessian(x), 0.5)
    hidden_w = w1 if sequential else model[0].weight
    x2 = torch.relu(x @ hidden_w.T + model[0].bias)  # (n, 32)
    w2, _ = sparsegpt(model[2].weight, _hessian(x2), 0.5)
    return [w1, w2]


def test_sequential_sparsegpt_matches_a_hand_rolled_two_layer_reference():
    model = _mlp()
    x = _correlated_inputs(96, 12, 8)
    with torch.no_grad():
        seq_ref = _hand_rolled(model, x, sequential=True)
        one_pass = _hand_rolled(model, x, sequential=False)
    calib = [x[:48], x[48:]]
    prune_sequential(model, {"0": model[0], "2": model[2]}, calib, "sparsegpt", 0.5)
    torch.testing.assert_close(model[0].weight, seq_ref[0])
    torch.testing.assert_close(model[2].weight, seq_ref[1])
    assert not torch.allclose(model[2].weight, one_pass[1], atol=1e-3)


def test_sequential_wanda_differs_from_one_pass_wanda_and_matches_by_hand():
    model = _mlp(1)
    x = _correlated_inputs(64, 12, 9)
    dense = copy.deepcopy(model)
    one_pass = select_masks(
        compute_scores(dense, {"0": dense[0], "2": dense[2]}, "wanda", calibration=[(x, x)]),
        0.5,
        "row",
    )
    masks = prune_sequential(model, {"0": model[0], "2": model[2]}, [x], "wanda", 0.5)
    # by hand: layer 2's norms from the outputs of the pruned layer 1
    x2 = torch.relu(x @ (dense[0].weight * masks["0"]).T + dense[0].bias)
    by_hand = select_masks({"2": dense[2].weight.abs() * x2.pow(2).sum(0).sqrt()}, 0.5, "row")
    assert torch.equal(masks["0"], one_pass["0"])
    assert torch.equal(masks["2"], by_hand["2"])
    assert not torch.equal(masks["2"], one_pass["2"])


def test_llama_blocks_are_found_and_every_layer_is_pruned_exactly():
    model = tiny_llama()
    targets = _decoder_targets(model)
    assert find_blocks(model, targets) == "model.layers"
    assert find_blocks(model, {**targets, "lm_head": model.lm_head}) is None
    done = []
    masks = prune_sequential(
        model, targets, _ids(), "sparsegpt", 0.5, progress=lambda i, n, name: done.append(name)
    )
    assert done == list(targets)  # one progress call per layer, in order
    for name, module in targets.items():
        assert int((module.weight == 0).sum()) == round(0.5 * module.weight.numel()), name
        assert torch.equal(masks[name], module.weight != 0)


def test_layer_progress_draws_one_bar_and_logs_without_tqdm(monkeypatch, caplog):
    out, model = io.StringIO(), tiny_llama()
    with layer_progress("wanda 50%", file=out) as bar:
        prune_sequential(model, _decoder_targets(model), _ids(), "wanda", 0.5, progress=bar)
    assert "wanda 50%" in out.getvalue() and "14/14" in out.getvalue()  # 2 blocks × 7 Linear
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # tqdm absent: log lines instead
    with caplog.at_level(logging.INFO, logger="prunelab.progress"):
        with layer_progress("magnitude") as progress:
            for i in range(1, 15):
                progress(i, 14, f"layer{i}")
    lines = [r.getMessage() for r in caplog.records if r.name == "prunelab.progress"]
    assert len(lines) == 14 and lines[-1].startswith("magnitude: 14/14 layers (layer14)")


def test_llama_two_four_pattern_per_layer():
    model = tiny_llama()
    targets = _decoder_targets(model)
    prune_sequential(model, targets, _ids(), "sparsegpt", 0.5, NM(2, 4))
    for module in targets.values():
        w = module.weight.detach()
        assert torch.all((w != 0).view(w.shape[0], -1, 4).sum(2) == 2)  # (out, in/4, 4)


def test_block_walk_equals_layer_walk_when_each_block_holds_one_target():
    # one target per block: block mode (recorded kwargs, KV cache dropped, hidden states
    # replaced) must reproduce the plain early-stopped full-model passes exactly
    results = []
    for blocks in ("auto", None):
        model = tiny_llama()
        targets = {n: m for n, m in _decoder_targets(model).items() if n.endswith("down_proj")}
        prune_sequential(model, targets, _ids(), "sparsegpt", 0.6, config=SequentialConfig(blocks))
        results.append([m.weight.detach().clone() for m in targets.values()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_sparsity_zero_leaves_the_llama_unchanged():
    model = tiny_llama()
    before = copy.deepcopy(model.state_dict())
    prune_sequential(model, _decoder_targets(model), _ids(), "sparsegpt", 0.0)
    after = {
        k.replace(".parametrizations.weight.original", ".weight"): v
        for k, v in model.state_dict().items()
    }
    for key, value in before.items():
        assert torch.equal(after[key], value), key


def test_bert_blocks_pruned_exactly_and_outputs_move_less_than_magnitude():
    dense = _tiny_bert()
    ids = _ids(seed=1)
    targets = lambda m: {n: x for n, x in m.named_modules() if isinstance(x, nn.Linear)}  # noqa: E731
    outputs = {}
    for method in ("magnitude", "sparsegpt"):
        model = copy.deepcopy(dense)
        prune_sequential(model, targets(model), ids, method, 0.5)
        for name, module in targets(model).items():
            assert int((module.weight == 0).sum()) == round(0.5 * module.weight.numel()), name
        with torch.no_grad():
            outputs[method] = model(ids[0]).last_hidden_state
    with torch.no_grad():
        ref = dense(ids[0]).last_hidden_state
    err = {k: float(torch.linalg.norm(v - ref)) for k, v in outputs.items()}
    assert err["sparsegpt"] < err["magnitude"], err


def test_per_layer_sparsities_from_a_mapping():
    model = _mlp()
    levels = {"0": 0.25, "2": 0.75}
    masks = prune_sequential(
        model, {"0": model[0], "2": model[2]}, [torch.randn(20, 12)], "sparsegpt", levels
    )
    assert {n: 1 - float(m.float().mean()) for n, m in masks.items()} == levels


# --- OWL -----------------------------------------------------------------------------------


def _heavy_scores(seed: int = 0) -> dict[str, torch.Tensor]:
    """Wanda-like scores of 4 blocks (2 layers each, different sizes) with outliers."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for b in range(4):
        for layer, shape in (("attn", (8, 16)), ("mlp", (24, 16))):
            s = torch.rand(shape, generator=g)
            s.view(-1)[: 3 * b + 1] *= 30  # block b: more outliers
            out[f"model.layers.{b}.{layer}"] = s
    return out


@pytest.mark.parametrize("target", [0.5, 0.7])
def test_owl_levels_average_to_the_target(target):
    scores = _heavy_scores()
    plain = owl_sparsities(scores, target, lam=0.08, m=5)
    blocks = [plain[f"model.layers.{b}.attn"] for b in range(4)]
    assert sum(blocks) / 4 == pytest.approx(target)  # the paper's plain mean over blocks
    assert max(blocks) - min(blocks) == pytest.approx(0.16)  # range 2 * lam
    assert blocks == sorted(blocks, reverse=True)  # more outliers, lower sparsity
    weighted = owl_sparsities(scores, target, weighted=True)
    pruned = sum(weighted[n] * s.numel() for n, s in scores.items())
    assert pruned / sum(s.numel() for s in scores.values()) == pytest.approx(target)


def test_owl_allocation_meets_the_target_and_prunes_nothing_at_zero():
    scores = _heavy_scores(1)
    total = sum(s.numel() for s in scores.values())
    counts = owl(scores, 0.7)
    assert abs(sum(counts.values()) - round(0.7 * total)) <= len(scores) / 2
    assert len(set(counts.values())) > 2  # not uniform
    assert owl(scores, 0.0) == dict.fromkeys(scores, 0)


def test_owl_composes_with_sequential_sparsegpt():
    model = tiny_llama()
    targets = _decoder_targets(model)
    scores = compute_scores(model, targets, "wanda", calibration=[(i, i) for i in _ids()])
    levels = owl_sparsities(scores, 0.7, lam=0.1, m=3)
    masks = prune_sequential(model, targets, _ids(), "sparsegpt", levels)
    for name, mask in masks.items():
        assert int((~mask).sum()) == round(levels[name] * mask.numel())
    assert len({round(v, 6) for v in levels.values()}) == 2  # one level per block


def test_cnn_layer_walk_prunes_convolutions_exactly_and_beats_magnitude():
    torch.manual_seed(0)
    dense = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3),
        nn.ReLU(),
        nn.Flatten(),  # (B, 8, 4, 4) -> (B, 128)
        nn.Linear(128, 10),
    )
    x = torch.randn(32, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    errors = {}
    for method in ("magnitude", "sparsegpt"):
        model = copy.deepcopy(dense)
        targets = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}
        cfg = SequentialConfig(comparison="layer")  # rows of 27 weights: per-row rounding is off
        prune_sequential(model, targets, [x[:16], x[16:]], method, 0.5, config=cfg)
        for name, module in targets.items():
            assert int((module.weight == 0).sum()) == round(0.5 * module.weight.numel()), name
        with torch.no_grad():
            errors[method] = float(torch.linalg.norm(model(x) - dense(x)))
    assert errors["sparsegpt"] < errors["magnitude"], errors


# --- staged ("true sequential") walk inside a block ------------------------------------------


def test_block_stages_group_layers_by_shared_input_in_execution_order():
    llama, bert = tiny_llama(), _tiny_bert()
    ids = _ids()[0]
    calls = {}
    for name, model, blocks in (("llama", llama, "model.layers"), ("bert", bert, "encoder.layer")):
        layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        block = model.get_submodule(blocks)[0]
        inside = {n: m for n, m in layers.items() if n.startswith(blocks + ".0.")}
        record = record_block_calls(model, model.get_submodule(blocks), [ids])[0][0]
        hidden = record[0][0] if record[0] else record[1]["hidden_states"]
        stages = block_stages(block, inside, (hidden, *record))
        calls[name] = [[n.split(".0.")[1] for n in stage] for stage in stages]
    assert calls["llama"] == [
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
        ["self_attn.o_proj"],
        ["mlp.gate_proj", "mlp.up_proj"],
        ["mlp.down_proj"],
    ]
    assert calls["bert"] == [
        ["attention.self.query", "attention.self.key", "attention.self.value"],
        ["attention.output.dense"],
        ["intermediate.dense"],
        ["output.dense"],
    ]


def test_staged_walk_calibrates_the_attention_output_on_pruned_qkv():
    dense, ids = tiny_llama(), _ids()
    staged, flat = copy.deepcopy(dense), copy.deepcopy(dense)
    prune_sequential(staged, _decoder_targets(staged), ids, "sparsegpt", 0.5,
                     config=SequentialConfig(staged=True))  # fmt: skip
    prune_sequential(flat, _decoder_targets(flat), ids, "sparsegpt", 0.5)
    attn = lambda m: m.model.layers[0].self_attn  # noqa: E731
    for proj in ("q_proj", "k_proj", "v_proj"):  # the first stage sees the same inputs
        torch.testing.assert_close(
            getattr(attn(staged), proj).weight, getattr(attn(flat), proj).weight
        )
    # by hand: dense model with the staged q/k/v weights, o_proj's inputs, one SparseGPT call
    ref = copy.deepcopy(dense)
    with torch.no_grad():
        for proj in ("q_proj", "k_proj", "v_proj"):
            getattr(attn(ref), proj).weight.copy_(getattr(attn(staged), proj).weight)
        stats = InputStats(attn(ref).o_proj, True)
        handle = attn(ref).o_proj.register_forward_hook(lambda _m, i, _o: stats.add(i[0]))
        for x in ids:
            ref(x)
        handle.remove()
        expected, _ = sparsegpt(attn(dense).o_proj.weight, stats.hessian(), 0.5)
    torch.testing.assert_close(attn(staged).o_proj.weight, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(attn(staged).o_proj.weight, attn(flat).o_proj.weight, atol=1e-4)
    for name, module in _decoder_targets(staged).items():
        assert int((module.weight == 0).sum()) == round(0.5 * module.weight.numel()), name
