"""Re-fitting a decoder's kept blocks to the dense hidden states after blocks were removed."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from prunelab import PrunelabError
from prunelab.measure.language import dense_reference, evaluate_lm
from prunelab.prune.blockfit import BlockFitConfig
from prunelab.prune.surgery.decoder import DecoderPlan, LayerPlan, apply_plan, decoder_layers
from prunelab.prune.surgery.decoder_plan import _full
from prunelab.prune.surgery.decoder_refit import refit_kept_blocks

pytest.importorskip("transformers")
from tinymodels import tiny_llama  # noqa: E402


def cut(dense: torch.nn.Module, keep: list[int]) -> torch.nn.Module:
    """``dense`` with only blocks ``keep`` left."""
    m = copy.deepcopy(dense)
    layers = decoder_layers(m)
    plan = DecoderPlan(tuple(_full(b) if i in keep else None for i, b in enumerate(layers)))
    apply_plan(m, plan, {})
    return m


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_refit_brings_the_cut_decoder_back_towards_dense(precision):
    """After block 2 of 4 is removed, block 1 is fitted to the dense output of block 2 and the
    others to their own dense outputs: the KL to the dense model falls on the calibration
    windows and on windows the fit never saw; embeddings and head do not move."""
    dense = tiny_llama(layers=4)
    g = torch.Generator().manual_seed(1)
    calib, held = (torch.randint(0, 64, (n, 24), generator=g) for n in (32, 8))
    refs = {n: dense_reference(dense, w, k=64) for n, w in (("calib", calib), ("held", held))}
    keep = [0, 1, 3]
    model = cut(dense, keep)
    before = {n: evaluate_lm(model, w, refs[n]).kl for n, w in (("calib", calib), ("held", held))}
    emb = model.get_input_embeddings().weight.clone()
    first = copy.deepcopy(decoder_layers(model)[0].state_dict())
    seen = []
    hook = decoder_layers(model)[1].mlp.down_proj.register_forward_hook(
        lambda _m, _i, o: seen.append(o.dtype)
    )
    cfg = BlockFitConfig(steps=60, lr=3e-3, loss="relative", precision=precision)
    res = refit_kept_blocks(model, dense, keep, list(calib.split(2)), cfg)
    hook.remove()
    assert [b[:2] for b in res.blocks] == [(0, 0), (1, 2), (3, 3)]
    assert math.isnan(res.blocks[0][2])  # nothing removed before block 0: left as it is
    kept0 = decoder_layers(model)[0].state_dict()
    assert all(torch.equal(kept0[k], v) for k, v in first.items())
    assert res.blocks[1][3] < 0.7 * res.blocks[1][2]
    assert (torch.bfloat16 in seen) == (precision == "bf16")  # the fit ran under autocast
    after = {n: evaluate_lm(model, w, refs[n]).kl for n, w in (("calib", calib), ("held", held))}
    assert after["calib"] < 0.5 * before["calib"]
    assert after["held"] < 0.8 * before["held"]
    assert torch.equal(model.get_input_embeddings().weight, emb)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not any(p.requires_grad is False for p in model.parameters())  # flags restored


def test_a_narrowed_block_before_the_first_gap_is_fitted_too():
    """Blocks 0 and 1 come before the removed block 2 but lost FFN neurons (``blocks-loss+ffn``
    cuts the width of every kept block): they no longer compute the dense hidden states, so the
    re-fit fits them instead of leaving them as they are."""
    dense = tiny_llama(layers=4)
    keep = [0, 1, 3]
    model = copy.deepcopy(dense)
    narrow = [LayerPlan(full.kv_heads, full.q_heads, full.ffn[:40]) for full in
              (_full(b) for b in decoder_layers(model))]  # fmt: skip
    apply_plan(model, DecoderPlan(tuple(p if i in keep else None for i, p in enumerate(narrow))))
    first = copy.deepcopy(decoder_layers(model)[0].state_dict())
    calib = torch.randint(0, 64, (8, 24), generator=torch.Generator().manual_seed(1))
    cfg = BlockFitConfig(steps=20, lr=3e-3, loss="relative")
    res = refit_kept_blocks(model, dense, keep, list(calib.split(2)), cfg)
    assert [b[:2] for b in res.blocks] == [(0, 0), (1, 2), (3, 3)]
    assert all(not math.isnan(b[2]) for b in res.blocks)
    assert res.blocks[0][3] < res.blocks[0][2]
    kept0 = decoder_layers(model)[0].state_dict()
    assert not torch.equal(kept0["mlp.down_proj.weight"], first["mlp.down_proj.weight"])


def test_refit_checks_the_kept_blocks_describe_the_model():
    dense = tiny_llama(layers=4)
    model = cut(dense, [0, 1, 3])
    ids = [torch.randint(0, 64, (2, 8))]
    for kept in ([0, 1], [0, 3, 1], [0, 1, 4]):
        with pytest.raises(PrunelabError, match="kept blocks"):
            refit_kept_blocks(model, dense, kept, ids)
    with pytest.raises(PrunelabError, match="calibration"):
        refit_kept_blocks(model, dense, [0, 1, 3], [])
