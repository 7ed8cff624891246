"""The block walk's shortcuts (:mod:`prunelab.prune.walk`) save work and change nothing:
recording block arguments without running the middle blocks, one ``XᵀX`` for layers fed the
same tensor, and the staged walk reusing the outputs of a block's finished children."""

from __future__ import annotations

import copy

import pytest
import torch
from tinymodels import tiny_llama
from torch import nn

from prunelab.prune import blockcalls, walk
from prunelab.prune.blockfit import BlockFitConfig
from prunelab.prune.reconstruct import InputStats
from prunelab.prune.refine import RefineConfig
from prunelab.prune.sequential import SequentialConfig, prune_sequential

pytest.importorskip("transformers")


def _ids(batches: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 64, (2, 16), generator=g) for _ in range(batches)]


def _count_calls(module: nn.Module) -> list[int]:
    count = [0]
    module.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1))
    return count


def test_block_arguments_are_recorded_as_a_full_pass_would_without_running_middle_blocks():
    model, ids = tiny_llama(layers=4), _ids()
    blocks = model.model.layers
    middle = _count_calls(blocks[1].mlp)
    with torch.no_grad():
        calls = walk.record_block_calls(model, blocks, ids)
        assert middle[0] == 1  # only the one full pass that checks the shortcut
        full = blockcalls._record(model, blocks, ids, skip=False)
    assert middle[0] == 1 + len(ids)
    assert blockcalls._same(calls, full)
    # the recorded rotary embeddings are real tensors, not placeholders
    cos, _sin = calls[3][2][1]["position_embeddings"]
    assert cos.shape[-2:] == (16, 8) and not torch.equal(cos, torch.zeros_like(cos))
    assert "forward" not in blocks[1].__dict__  # the blocks run again afterwards


class _GatedBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * gate


class _Stack(nn.Module):
    """``n`` blocks in an ``nn.ModuleList``; ``gated``: each block is also handed a gate
    computed from its input (an argument that depends on the blocks before it)."""

    def __init__(self, block: type[nn.Module], n: int, gated: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers, self.gated = nn.ModuleList(block() for _ in range(n)), gated

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, gate=torch.sigmoid(x.mean())) if self.gated else layer(x)
        return x


def test_arguments_that_depend_on_earlier_blocks_fall_back_to_full_passes():
    model = _Stack(_GatedBlock, 4, gated=True)
    xs = [torch.randn(3, 4, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    middle = _count_calls(model.layers[1].linear)
    with torch.no_grad():
        calls = walk.record_block_calls(model, model.layers, xs)
        full = blockcalls._record(model, model.layers, xs, skip=False)
        quick = blockcalls._record(model, model.layers, xs, skip=True)
    assert blockcalls._same(calls, full) and not blockcalls._same(quick, full)
    # the shortcut runs no middle block, its check 1 item, the fallback and `full` 3 each
    assert middle[0] == 1 + 2 * len(xs)
    # the walk on these blocks equals pruning each block on the real gates
    dense, pruned = copy.deepcopy(model), copy.deepcopy(model)
    targets = {f"layers.{i}.linear": pruned.layers[i].linear for i in range(4)}
    prune_sequential(pruned, targets, xs, "sparsegpt", 0.5)
    with torch.no_grad():
        assert float((pruned(xs[0]) - dense(xs[0])).abs().max()) > 0
    for i in range(4):
        assert int((pruned.layers[i].linear.weight == 0).sum()) == 8


def test_layers_fed_the_same_tensor_share_one_product_per_call():
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(0))
    d = x * 2  # the dense model's inputs
    a, b = nn.Linear(6, 3), nn.Linear(6, 5)
    memo: dict = {}
    shared = [InputStats(a, True), InputStats(b, True)]
    alone = [InputStats(a, True), InputStats(b, True)]
    for s in shared:
        s.add(x, d, memo)
    for s in alone:
        s.add(x, d)
    assert len(memo) == 1
    for s, t in zip(shared, alone):
        torch.testing.assert_close(s.hessian(), t.hessian(), rtol=0, atol=0)
        torch.testing.assert_close(s.cross(), t.cross(), rtol=0, atol=0)
        torch.testing.assert_close(s.input_norm(), t.input_norm(), rtol=0, atol=0)
    InputStats(a, True).add(x.clone(), d, memo)  # equal values, another tensor: not shared
    assert len(memo) == 2
    shared[0].add(x, d, memo)  # a second add accumulates into a new tensor, not the memo's
    torch.testing.assert_close(shared[0].hessian(), alone[0].hessian())
    torch.testing.assert_close(shared[1].hessian(), alone[1].hessian(), rtol=0, atol=0)
    assert int(shared[0].count) == 10 and int(shared[1].count) == 5


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[walk._Reuse]:
    """Every ``_Reuse`` the walk makes from now on, in order."""
    made: list[walk._Reuse] = []

    class _Spy(walk._Reuse):
        def __init__(self, *args: object) -> None:
            super().__init__(*args)  # type: ignore[arg-type]
            made.append(self)

    monkeypatch.setattr(walk, "_Reuse", _Spy)
    return made


class _NoReuse(walk._Reuse):
    """The staged walk without reuse: every pass recomputes every child."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.recording = False


@pytest.mark.parametrize("block_fit", [False, True])
def test_staged_walk_reuses_finished_attention_and_changes_no_weight(monkeypatch, block_fit):
    dense, ids = tiny_llama(), _ids()
    config = SequentialConfig(
        staged=True,
        refine=RefineConfig(iters=5, cg_iters=2),
        target="dense",
        block_fit=BlockFitConfig(steps=3) if block_fit else None,
    )
    runs, made = {}, _spy(monkeypatch)
    for name in ("reuse", "recompute"):
        if name == "recompute":
            monkeypatch.setattr(walk, "_Reuse", _NoReuse)
        model = copy.deepcopy(dense)
        q_calls = _count_calls(model.model.layers[0].self_attn.q_proj)
        targets = {
            n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".layers." in n
        }
        prune_sequential(model, targets, ids, "sparsegpt", 0.5, config=config)
        runs[name] = (model, q_calls[0])
    (fast, fast_q), (slow, slow_q) = runs["reuse"], runs["recompute"]
    for (name, p), q in zip(fast.named_parameters(), slow.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    # per calibration item, stage 4 and the output pass reuse the attention's outputs; after
    # a block fit the output pass recomputes them (the fit moved the weights)
    assert slow_q - fast_q == len(ids) * (1 if block_fit else 2)
    # what block 0 kept per call: the attention whole (its projections' outputs dropped once
    # it was kept), gate and up for the last pass; nothing of the last stage's layer
    layer = fast.model.layers[0]
    kept = {n: len(made[0].outputs[layer.get_submodule(n)]) for n in (
        "self_attn", "self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
        "mlp", "mlp.down_proj")}  # fmt: skip
    n = len(ids)
    assert kept == {"self_attn": n, "self_attn.q_proj": 0, "self_attn.o_proj": 0,
                    "mlp.gate_proj": n, "mlp.up_proj": n, "mlp": 0, "mlp.down_proj": 0}  # fmt: skip
    assert "forward" not in fast.model.layers[0].self_attn.__dict__


class _GluBlock(nn.Module):
    """A block whose gate and up projections are its own children, fed the same tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(8)
        self.gate, self.up, self.down = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        return x + self.down(nn.functional.silu(self.gate(h)) * self.up(h))


def test_a_child_is_reused_only_once_every_layer_before_it_is_pruned(monkeypatch):
    """``gate`` returns before ``up`` (same stage) is even seen: its output in that pass
    is the dense one and must not be replayed once the stage is pruned."""
    dense = _Stack(_GluBlock, 3)
    xs = [torch.randn(4, 5, 8, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    config = SequentialConfig(staged=True, refine=RefineConfig(iters=5, cg_iters=2))
    made = _spy(monkeypatch)
    runs = {}
    for name, kind in (("reuse", walk._Reuse), ("recompute", _NoReuse)):
        monkeypatch.setattr(walk, "_Reuse", kind)
        model = copy.deepcopy(dense)
        targets = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        prune_sequential(model, targets, xs, "sparsegpt", 0.5, config=config)
        runs[name] = model
    for (name, p), q in zip(runs["reuse"].named_parameters(), runs["recompute"].parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    # kept (for the down projection's stage and the output pass) only once gate and up were
    # both pruned: gate's and up's pruned outputs, one per call; down is the last layer
    block = runs["reuse"].layers[1]
    kept = {n: len(made[1].outputs[getattr(block, n)]) for n in ("gate", "up", "down")}
    assert kept == {"gate": len(xs), "up": len(xs), "down": 0}
    with torch.no_grad():
        h = block.norm(runs["reuse"].layers[0](xs[0]))  # block 1's input, normalised
        assert blockcalls._same(made[1].outputs[block.gate][0], block.gate(h))  # the pruned gate's
