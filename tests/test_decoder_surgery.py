"""Structured pruning of Llama-style decoders: exact removal, GQA rule, levels, scores, export."""

from __future__ import annotations

import copy

import pytest
import torch

from prunelab import PrunelabError
from prunelab.prune.surgery.decoder import (
    DecoderPlan,
    LayerPlan,
    apply_plan,
    decoder_layers,
    decoder_linear_params,
    layer_shape,
    prune_layer,
    zero_reference,
)
from prunelab.prune.surgery.decoder_plan import (
    DECODER_STRUCTURES,
    DEPTH_SHARE,
    FFN_MULTIPLE,
    _full,
    calibrate,
    fluctuation_scores,
    loss_removal_order,
    prune_decoder,
    sublayer_plan,
    sublayer_removal_order,
)
from prunelab.ship.hf_decoder import export_decoder, is_standard, load_decoder

transformers = pytest.importorskip("transformers")


def tiny_decoder(layers: int = 2, seed: int = 0, ffn: int = 64) -> torch.nn.Module:
    """The tests' GQA decoder: hidden 32, 4 query heads, 2 KV heads (as test_task_kinds)."""
    cfg = transformers.LlamaConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg).eval()


def ids(seed: int = 1, shape: tuple[int, int] = (2, 12)) -> torch.Tensor:
    return torch.randint(0, 96, shape, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(input_ids=x, use_cache=False).logits


@pytest.mark.parametrize(
    "plan",
    [
        LayerPlan((0, 1), (1, 3), tuple(range(0, 64, 2))),  # one query head from each group
        LayerPlan((1,), (2, 3), tuple(range(40))),  # a whole KV group
        LayerPlan((0,), (0,), (5,)),  # one head, one neuron
    ],
)
def test_removal_equals_zeroed_columns(plan):
    dense = tiny_decoder()
    x = ids()
    slim, ref = copy.deepcopy(dense), copy.deepcopy(dense)
    prune_layer(decoder_layers(slim)[0], plan)
    zero_reference(decoder_layers(ref)[0], plan)
    assert (logits(slim, x) - logits(ref, x)).abs().max() <= 1e-5
    s = layer_shape(decoder_layers(slim)[0])
    assert (s["heads"], s["kv_heads"], s["ffn"]) == (
        len(plan.q_heads),
        len(plan.kv_heads),
        len(plan.ffn),
    )


def test_uneven_query_heads_per_group_refused():
    layer = decoder_layers(tiny_decoder())[0]
    with pytest.raises(PrunelabError, match="same number"):
        prune_layer(layer, LayerPlan((0, 1), (0, 1, 2), tuple(range(64))))
    with pytest.raises(PrunelabError, match="removed KV groups"):
        prune_layer(layer, LayerPlan((0,), (0, 2), tuple(range(64))))


@pytest.mark.parametrize(
    "structure",
    ["heads", "ffn", "heads+ffn", "blocks", "blocks-loss", "sublayers-loss", "blocks-loss+ffn"],
)
def test_levels_are_reported_exactly_and_models_generate(structure):
    model, x = tiny_decoder(layers=4), ids()
    before = decoder_linear_params(model)
    r = prune_decoder(model, [x], structure, 0.25 if structure != "heads" else 0.1)
    after = decoder_linear_params(model)
    assert r.params_before == before and r.params_after == after
    assert r.level == pytest.approx(1 - after / before, abs=0)
    assert 0.05 < r.level < 0.4
    out = model.generate(x[:1], max_new_tokens=4, do_sample=False)  # with a KV cache
    assert out.shape == (1, x.shape[1] + 4)
    if structure.startswith("blocks"):
        assert model.config.num_hidden_layers == 3 and len(r.plan.kept_blocks) == 3


def test_blocks_then_ffn_cuts_depth_by_loss_then_one_rounded_width_scored_on_the_cut_model(
    tmp_path,
):
    """``blocks-loss+ffn`` at 0.5 of a 6-block decoder with 256 FFN neurons: 0.55 of the level
    as whole blocks (2 blocks, the greedy loss order's first two), then one FFN width for the
    4 blocks left that brings the level closest to 0.5 in multiples of 64 (192 kept), the
    neurons FLAP ranks best on the *cut* model's calibration pass, with its compensation. The
    plan and shifts returned rebuild the model from the dense one; the export is a standard
    Llama directory that reloads with the same outputs."""
    dense = tiny_decoder(layers=6, ffn=256)
    calib = [ids(seed) for seed in (1, 2)]
    model = copy.deepcopy(dense)
    r = prune_decoder(model, calib, "blocks-loss+ffn", 0.5)
    order = loss_removal_order(copy.deepcopy(dense), calib, DEPTH_SHARE * 0.5)
    assert len(order) == 2 and sorted(set(range(6)) - set(r.plan.kept_blocks)) == sorted(order)
    assert [layer_shape(b)["ffn"] for b in decoder_layers(model)] == [192] * 4
    assert model.config.intermediate_size == 192 and 192 % FFN_MULTIPLE == 0
    assert r.level == pytest.approx(1 - r.params_after / r.params_before, abs=0)
    assert r.params_after == decoder_linear_params(model)
    # the neurons kept: FLAP's best on the cut model, not on the dense one
    cut = copy.deepcopy(dense)
    apply_plan(cut, DecoderPlan(tuple(_full(b) if i in r.plan.kept_blocks else None
                                      for i, b in enumerate(decoder_layers(cut)))))  # fmt: skip
    scores = fluctuation_scores(cut, calibrate(cut, calib))
    for i, s in zip(r.plan.kept_blocks, scores):
        assert set(r.plan.layers[i].ffn) == set(torch.topk(s["ffn"], 192).indices.tolist())
    assert all(r.shifts[i][1] is not None for i in r.plan.kept_blocks)  # compensated
    again = apply_plan(copy.deepcopy(dense), r.plan, r.shifts)
    x = ids(5)
    assert torch.equal(logits(again, x), logits(model, x))
    assert is_standard(model)
    back = load_decoder(export_decoder(model, tmp_path / "mix"))
    assert (logits(back, x) - logits(model, x)).abs().max() <= 1e-5


def test_structures_registry_lists_choices():
    assert DECODER_STRUCTURES.names() == [
        "blocks",
        "blocks-loss",
        "ffn",
        "heads",
        "heads+ffn",
        "sublayers-loss",
    ]
    with pytest.raises(PrunelabError, match="valid: blocks"):
        prune_decoder(tiny_decoder(), [ids()], "chanels", 0.3)


def test_equal_sized_gqa_options_keep_the_better_heads():
    """6 heads in 3 KV groups (as SmolLM2's 9 in 3): removing one query head per group and
    removing one whole group remove the same parameters; the better-scoring heads stay."""
    cfg = transformers.LlamaConfig(
        vocab_size=96,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=3,
        head_dim=8,
    )
    model, x = transformers.LlamaForCausalLM(cfg).eval(), ids()
    stats = calibrate(model, [x])
    scores = fluctuation_scores(model, stats)
    scores[0]["heads"] = torch.tensor([5.0, 4.0, 1.0, 0.5, 0.2, 0.1], dtype=torch.float64)
    scores[1]["heads"] = torch.tensor([5.0, 0.1, 4.0, 0.1, 3.0, 0.1], dtype=torch.float64)
    three_heads = 3 * 2 * 48 * 8  # q rows + o columns of 3 heads = k + v rows of 1 group + 2 heads
    level = three_heads / (decoder_linear_params(model) / 2)
    plan = DECODER_STRUCTURES.get("heads")(model, scores, stats, level)
    assert (plan.layers[0].kv_heads, plan.layers[0].q_heads) == ((0, 1), (0, 1, 2, 3))
    assert (plan.layers[1].kv_heads, plan.layers[1].q_heads) == ((0, 1, 2), (0, 2, 4))


def test_block_removal_equals_skipping_the_block():
    model, x = tiny_decoder(layers=3), ids()
    plan = DecoderPlan((LayerPlan((0, 1), (0, 1, 2, 3), tuple(range(64))), None, None))
    ref = copy.deepcopy(model)
    apply_plan(model, plan)
    ref.model.layers = torch.nn.ModuleList([ref.model.layers[0]])
    ref.config.num_hidden_layers = 1
    assert torch.equal(logits(model, x), logits(ref, x))


def test_least_influential_block_goes_first():
    model, x = tiny_decoder(layers=3), ids()
    idle = decoder_layers(model)[1]  # a block whose residual branches add nothing
    with torch.no_grad():
        idle.self_attn.o_proj.weight.zero_()
        idle.mlp.down_proj.weight.zero_()
    stats = calibrate(model, [x])
    assert float(stats.influence[1]) == pytest.approx(0.0, abs=1e-9)
    r = prune_decoder(model, [x], "blocks", 0.3, stats=stats)
    assert r.plan.layers[1] is None and r.plan.kept_blocks == (0, 2)


def _nll_without(model, removed, calibration) -> float:
    """Mean next-token loss of a copy of ``model`` with blocks ``removed`` cut out (full
    forward passes: the reference for the criterion's cached, block-by-block search)."""
    m = copy.deepcopy(model)
    layers = decoder_layers(m)
    full = LayerPlan((0, 1), (0, 1, 2, 3), tuple(range(64)))
    apply_plan(m, DecoderPlan(tuple(None if i in removed else full for i in range(len(layers)))))
    return _nll_of(m, calibration)


def test_loss_criterion_removes_greedily_what_hurts_the_calibration_loss_least():
    """Each round removes the block whose removal, given the ones already gone, leaves the
    lowest calibration loss — checked against full forward passes of models with those blocks
    cut out (the criterion itself reuses the blocks before each candidate)."""
    model, calib = tiny_decoder(layers=5), [ids(), ids(seed=2)]
    with torch.no_grad():
        for p in model.parameters():  # larger weights: blocks that matter, and differ
            p.mul_(4.0)
    order = loss_removal_order(model, calib, 0.6)
    assert len(order) == 3
    for r in range(3):
        losses = {
            c: _nll_without(model, order[:r] + [c], calib) for c in range(5) if c not in order[:r]
        }
        assert order[r] == min(losses, key=losses.__getitem__), (r, losses)
        assert sorted(losses.values())[0] < sorted(losses.values())[1] - 1e-4  # not a tie
    r = prune_decoder(model, calib, "blocks-loss", 0.6)
    assert r.plan.kept_blocks == tuple(sorted(set(range(5)) - set(order)))
    with pytest.raises(PrunelabError, match="calibration"):
        loss_removal_order(model, [], 0.4)


def _nll_of(model, calibration) -> float:
    """Mean next-token cross-entropy of ``model`` over the (B, T) token-id windows."""
    tot, n = 0.0, 0
    for x in calibration:
        out = logits(model, x)[:, :-1]
        tot += float(
            torch.nn.functional.cross_entropy(
                out.flatten(0, 1), x[:, 1:].flatten(), reduction="sum"
            )
        )
        n += x[:, 1:].numel()
    return tot / n


def test_sublayer_criterion_removes_the_least_loss_per_parameter_greedily():
    """Each round removes the attention or MLP sub-layer whose removal, given those already
    gone, raises the calibration loss least per parameter — checked against full forwards of
    models with those sub-layers cut out by the surgery; a block whose two sub-layers went is
    removed whole."""
    model, calib = tiny_decoder(layers=4), [ids(), ids(seed=2)]
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)
    layer = decoder_layers(model)[0]
    size = {
        "attn": sum(p.numel() for p in layer.self_attn.parameters()),
        "mlp": sum(p.numel() for p in layer.mlp.parameters()),
    }
    order = sublayer_removal_order(model, calib, 0.55, shortlist=8)  # every unit, every round
    assert len(order) >= 3
    target = 0.55 * decoder_linear_params(model)
    for r in range(len(order)):
        cum = sum(size[k] for k, _ in order[:r])
        units = [  # those that bring the level closer
            (k, i)
            for i in range(4)
            for k in ("attn", "mlp")
            if (k, i) not in order[:r] and abs(cum + size[k] - target) < abs(cum - target)
        ]
        m0 = copy.deepcopy(model)
        apply_plan(m0, sublayer_plan(m0, order[:r]))
        now = _nll_of(m0, calib)
        rise = {}
        for u in units:
            m = copy.deepcopy(model)
            apply_plan(m, sublayer_plan(m, order[:r] + [u]))
            rise[u] = (_nll_of(m, calib) - now) / size[u[0]]
        best = sorted(rise.values())
        assert order[r] == min(rise, key=rise.__getitem__), (r, rise)
        assert len(best) == 1 or best[0] < best[1] - 1e-7  # not a tie
    cum = sum(size[k] for k, _ in order)
    assert all(abs(cum + size[k] - target) >= abs(cum - target) for k in size)  # none closer
    want, seen = sublayer_plan(model, order), []
    r = prune_decoder(model, calib, "sublayers-loss", 0.55, progress=lambda *a: seen.append(a))
    assert r.plan == want
    assert [name for *_, name in seen] == [f"{k} {i}" for k, i in order]  # one report a round
    done = [d for d, total, _ in seen]
    assert done == sorted(done) and done[-1] == min(100, round(100 * cum / target))
    assert seen[0][1] == 100
    with pytest.raises(PrunelabError, match="calibration"):
        sublayer_removal_order(model, [], 0.4)


def test_layers_without_attention_or_mlp_generate_with_a_cache_and_reload(tmp_path):
    """Block 0 loses its attention (the KV cache's slot 0 is then block 1's), block 2 its MLP:
    generation with a KV cache equals greedy decoding without one, the parameters and shapes
    say what went, and the export (shipped modeling file) reloads to the same outputs."""
    model, x = tiny_decoder(layers=3), ids()
    before = decoder_linear_params(model)
    plan = sublayer_plan(model, [("attn", 0), ("mlp", 2)])
    apply_plan(model, plan)
    shapes = [layer_shape(layer) for layer in decoder_layers(model)]
    assert [(s["heads"], s["kv_heads"], s["ffn"]) for s in shapes] == [
        (0, 0, 64),
        (4, 2, 64),
        (4, 2, 0),
    ]
    gone = (32 * 32 * 2 + 32 * 16 * 2) + 3 * 32 * 64  # q, o, k, v of block 0; MLP of block 2
    assert before - decoder_linear_params(model) == gone
    prompt = x[:1, :5]
    with torch.no_grad():
        gen = model.generate(prompt, max_new_tokens=6, do_sample=False)
        seq = prompt
        for _ in range(6):
            seq = torch.cat([seq, logits(model, seq)[:, -1:].argmax(-1)], 1)
    assert torch.equal(gen, seq)
    # a manual step with the cache and no positions: the model reads the cache's length
    # from slot 0, so the slots must be numbered over the layers that keep attention
    with torch.no_grad():
        first = model(input_ids=prompt, use_cache=True)
        step = model(input_ids=seq[:, 5:6], past_key_values=first.past_key_values)
    assert (step.logits[:, -1] - logits(model, seq[:, :6])[:, -1]).abs().max() <= 1e-5
    assert not is_standard(model)
    path = export_decoder(model, tmp_path / "pruned")
    assert (path / "modeling_pruned_llama.py").is_file()
    back = load_decoder(path)
    assert (logits(back, x) - logits(model, x)).abs().max() <= 1e-5
    assert torch.equal(back.generate(prompt, max_new_tokens=6, do_sample=False), gen)
    with pytest.raises(PrunelabError, match="keeps nothing"):
        prune_layer(decoder_layers(model)[0], LayerPlan((), (), ()))
    with pytest.raises(PrunelabError, match="attention sub-layer was removed"):
        prune_layer(decoder_layers(model)[0], LayerPlan((0,), (0,), tuple(range(64))))


def test_fluctuation_score_literal():
    """Var(x_c)·‖W[:, c]‖²: a channel that never varies scores zero; sums over a head."""
    model, x = tiny_decoder(), ids()
    stats = calibrate(model, [x])
    with torch.no_grad():
        s = fluctuation_scores(model, stats)[0]
    layer = decoder_layers(model)[0]
    wd = layer.mlp.down_proj.weight.detach().double()
    assert torch.allclose(s["ffn"], stats.mlp_var[0] * (wd**2).sum(0))
    wo = layer.self_attn.o_proj.weight.detach().double()
    head1 = (stats.attn_var[0] * (wo**2).sum(0))[8:16].sum()  # head_dim 8
    assert float(s["heads"][1]) == pytest.approx(float(head1))
    assert s["heads"].shape == (4,) and s["ffn"].shape == (64,)


def test_bias_compensation_brings_outputs_closer():
    dense, x = tiny_decoder(), ids(shape=(4, 16))
    ref = logits(dense, x)
    errs = {}
    for comp in (False, True):
        m = copy.deepcopy(dense)
        prune_decoder(m, [x], "heads+ffn", 0.5, compensate=comp)
        errs[comp] = float(((logits(m, x) - ref) ** 2).mean())
        assert (decoder_layers(m)[0].mlp.down_proj.bias is not None) == comp
    assert errs[True] < errs[False]


@pytest.mark.parametrize(
    "structure, level, standard",
    [
        ("heads+ffn", 0.5, True),  # uniform counts: a plain LlamaConfig
        ("blocks", 0.5, True),
        ("heads+ffn", [0.15, 0.6], False),  # per-layer counts: shipped modeling file
        ("ffn", [0.1, 0.4], False),
    ],
)
def test_export_reloads_in_transformers_with_same_outputs(tmp_path, structure, level, standard):
    model, x = tiny_decoder(), ids()
    dense_bytes = export_decoder(copy.deepcopy(model), tmp_path / "dense")
    prune_decoder(model, [x], structure, level)
    assert is_standard(model) is standard
    path = export_decoder(model, tmp_path / "pruned")
    files = {p.name for p in path.iterdir()}
    assert ("modeling_pruned_llama.py" in files) is (not standard)
    assert not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    back = load_decoder(path)
    assert (logits(back, x) - logits(model, x)).abs().max() <= 1e-5
    gen = back.generate(x[:1], max_new_tokens=5, do_sample=False)
    assert torch.equal(gen, model.generate(x[:1], max_new_tokens=5, do_sample=False))
    size = (path / "model.safetensors").stat().st_size
    assert size < (dense_bytes / "model.safetensors").stat().st_size
    assert sum(p.numel() for p in back.parameters()) < sum(
        p.numel() for p in tiny_decoder().parameters()
    )


def test_uniform_counts_that_llamaconfig_refuses_use_the_modeling_file(tmp_path):
    """3 of 6 heads with hidden 36: LlamaConfig wants hidden % heads == 0 even with head_dim."""
    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=8,
    )
    model, x = transformers.LlamaForCausalLM(cfg).eval(), torch.randint(0, 64, (1, 6))
    apply_plan(model, DecoderPlan((LayerPlan((0, 1, 2), (0, 1, 2), tuple(range(32))),)))
    assert not is_standard(model)
    back = load_decoder(export_decoder(model, tmp_path / "m"))
    assert (logits(back, x) - logits(model, x)).abs().max() <= 1e-5
