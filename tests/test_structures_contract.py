"""Every registered structure passes one contract: it prunes a tiny model to the level asked
(in the one unit every structure shares: the fraction of the pruned layers' weights gone),
credits itself with what it removed, and ships a model that computes what the pruned one does.
"""

from __future__ import annotations

import copy
from itertools import islice

import pytest
import torch
from torch import nn

from prunelab import PrunelabError, compute_scores, select_targets
from prunelab.data import Split
from prunelab.prune.oneshot import prune_once
from prunelab.prune.structures import STRUCTURES, Pruning, Structure, parse_structure
from prunelab.prune.surgery.decoder import decoder_linear_params
from prunelab.prune.surgery.heads import block_params, transformer_blocks

SPELLINGS = {"unstructured": "unstructured", "n:m": "2:4", "channels": "channels",
             "heads": "heads", "heads+ffn": "heads+ffn", "decoder-heads": "decoder-heads",
             "decoder-ffn": "decoder-ffn", "decoder-heads+ffn": "decoder-heads+ffn",
             "decoder-blocks": "decoder-blocks",
             "decoder-blocks-loss": "decoder-blocks-loss",
             "decoder-sublayers-loss": "decoder-sublayers-loss",
             "decoder-blocks-loss+ffn": "decoder-blocks-loss+ffn"}  # fmt: skip
# heads alone reach at most the attention's share of a block: ask for what they can give
LEVELS = {"heads": 0.3, "decoder-heads": 0.2}


def test_every_registered_structure_has_a_spelling_here():
    assert set(SPELLINGS) == set(STRUCTURES.names())


def _job(model: nn.Module, targets, level: float, x: torch.Tensor, method: str = "magnitude",
         structure: Structure | None = None) -> Pruning:  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    batches = [(x[i : i + 16], torch.zeros(len(x[i : i + 16]), dtype=torch.long))
               for i in range(0, len(x), 16)]  # fmt: skip

    def scores():
        s = compute_scores(model, targets, method, gen, batches)
        return structure.group_scores(model, x[:1], s, method) if structure else s

    return Pruning(
        level, method, targets, scores, lambda s: "global", "global",
        lambda n: list(islice(iter(batches), 4)), lambda b: b[0], x[:1], gen,
    )  # fmt: skip


def _mlp() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                          nn.Linear(32, 4)).eval()  # fmt: skip
    return model, torch.randn(64, 16, generator=torch.Generator().manual_seed(1))


def _llama() -> tuple[nn.Module, torch.Tensor]:
    pytest.importorskip("transformers")
    from tinymodels import tiny_llama

    ids = torch.randint(0, 64, (32, 12), generator=torch.Generator().manual_seed(2))
    return tiny_llama(), ids


def _out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out.logits if hasattr(out, "logits") else out  # a causal LM's logits (B, T, V)


def _bert() -> tuple[nn.Module, torch.Tensor]:
    pytest.importorskip("transformers")
    from prunelab.sources.models.encoder import tiny_bert

    enc = tiny_bert(seed=0, hidden=32, heads=4, intermediate=64)
    ids = torch.randint(1, 1000, (32, 12), generator=torch.Generator().manual_seed(2))
    return enc, ids


@pytest.mark.parametrize("name", sorted(SPELLINGS))
def test_structure_contract(name):
    st = parse_structure(SPELLINGS[name])
    assert parse_structure(str(st)) == st  # the spelling round-trips
    physical, decoder = st.physical, name.startswith("decoder-")
    dense, x = _llama() if decoder else _bert() if physical else _mlp()
    model = copy.deepcopy(dense)
    level = st.fixed_level if st.fixed_level is not None else LEVELS.get(name, 0.5)
    targets = select_targets(model, prune_last=st.prunes_last)
    prune_once(model, st, _job(model, targets, level, x, structure=st))
    got = st.achieved(model, dense, x[:1])
    # credited with what it removed, in the shared unit, close to what was asked
    if physical:
        count = decoder_linear_params if decoder else (
            lambda m: sum(block_params(b) for b in transformer_blocks(m)))  # fmt: skip
        before, after = count(dense), count(model)
        assert got == pytest.approx(1 - after / before)
        assert sum(p.numel() for p in model.parameters()) < sum(
            p.numel() for p in dense.parameters()
        )
    assert abs(got - level) < 0.08, (name, got)
    shipped = st.shipped(model, x[:1])
    with torch.no_grad():  # what ships computes what the pruned model computes
        assert torch.allclose(_out(shipped, x), _out(model, x), atol=1e-5)
    if name == "channels":  # physically smaller when shipped: weights gone, as credited
        w = [m.weight.numel() for m in shipped.modules() if isinstance(m, nn.Linear)]
        d = [m.weight.numel() for m in dense.modules() if isinstance(m, nn.Linear)]
        assert 1 - sum(w) / sum(d) == pytest.approx(got)


def test_channels_level_is_the_fraction_of_weights_removed():
    """A channel level means weights gone, not channels: at 0.75 the slim MLP has a quarter of
    its weights (about half of each hidden layer's channels), not a quarter of its channels."""
    dense, x = _mlp()
    model = copy.deepcopy(dense)
    st = parse_structure("channels")
    targets = select_targets(model, prune_last=False)
    prune_once(model, st, _job(model, targets, 0.75, x, structure=st))
    assert st.achieved(model, dense, x[:1]) == pytest.approx(0.75, abs=0.02)
    hidden = [m.out_features for m in st.shipped(model, x[:1]) if isinstance(m, nn.Linear)][:2]
    assert all(8 <= h <= 24 for h in hidden), hidden


def test_weight_structures_refuse_a_second_meaning():
    with pytest.raises(PrunelabError, match="fixes sparsity at 0.5"):
        parse_structure("2:4").masks({"a": torch.rand(4, 8)}, 0.7, "global")
    with pytest.raises(PrunelabError, match="unknown structure"):
        parse_structure("rows")
    with pytest.raises(PrunelabError, match="removes heads physically"):
        parse_structure("heads").masks({}, 0.5, "global")


def test_reconstruction_refuses_structures_it_cannot_prune():
    dense, x = _mlp()
    st = parse_structure("channels")
    targets = select_targets(dense, prune_last=False)
    with pytest.raises(PrunelabError, match="prunes weights, not channels"):
        prune_once(dense, st, _job(dense, targets, 0.5, x, method="sparsegpt", structure=st))


def test_split_is_only_data():  # the ground-floor type structures never need to import
    assert Split.__module__ == "prunelab.data"


@pytest.mark.parametrize("name", sorted(SPELLINGS))
def test_structure_restores_what_it_kept(name):
    """What a cell stores is enough to make its model again: ``kept`` → ``restore`` on the dense
    model gives the pruned one, and with the weights recovery changed, bit for bit."""
    from prunelab.sweep.snapshot import describe, digest, rebuild, snapshot

    st = parse_structure(SPELLINGS[name])
    dense, x = _llama() if name.startswith("decoder-") else _bert() if st.physical else _mlp()
    model = copy.deepcopy(dense)
    level = st.fixed_level if st.fixed_level is not None else LEVELS.get(name, 0.5)
    targets = select_targets(model, prune_last=st.prunes_last)
    prune_once(model, st, _job(model, targets, level, x, structure=st))
    again = copy.deepcopy(dense)
    st.restore(again, st.kept(model), x[:1])
    assert digest(again) == digest(model)  # the pruning alone: the plan or masks suffice
    pruned_only = snapshot(model, dense, st, x[:1])
    assert describe(pruned_only)["state"]["tensors"] == {}  # only the plan or masks stored
    if not st.physical:  # masks: one bit per weight of the pruned layers, no values
        bits = sum(m.weight.numel() for m in targets.values())
        assert bits / 8 <= len(pruned_only) < bits / 8 + 4096
    other = copy.deepcopy(dense)  # a dense model that is not the sweep's
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    with pytest.raises(PrunelabError, match="does not rebuild bit for bit"):
        rebuild(pruned_only, other, st, x[:1])
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # stands in for recovery: every parameter moves
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=gen))
    blob = snapshot(model, dense, st, x[:1])
    back = rebuild(blob, dense, st, x[:1])
    assert digest(back) == digest(model)
    with torch.no_grad():
        out, want = back(x), model.eval()(x)
        assert torch.equal(getattr(out, "logits", out), getattr(want, "logits", want))
