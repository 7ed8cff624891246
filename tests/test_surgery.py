"""Physical channel removal: equivalence with channel zeroing, coupling, training, save/rebuild."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from prunelab import PrunelabError, build_model, select_masks
from prunelab.measure.metrics.efficiency import count_macs
from prunelab.prune.criteria import compute_scores
from prunelab.prune.structures import Channels
from prunelab.prune.surgery import (
    ChannelPlan,
    plan_channels,
    plan_from_masks,
    prune_channels,
    slim,
    trace_channels,
)
from prunelab.prune.surgery.importance import group_scores, slice_scores
from prunelab.prune.targets import select_targets
from prunelab.ship.architecture import BaseModel, rebuild, save_slim

# Where each producer's channels leave their conv(-BN) pair in resnet-tiny.
RESNET_EXITS = {
    "stem.0": "stem.1",
    "layer1.conv1": "layer1.bn1",
    "layer1.conv2": "layer1.bn2",
    "layer2.conv1": "layer2.bn1",
    "layer2.conv2": "layer2.bn2",
    "layer2.shortcut.0": "layer2.shortcut.1",
}


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine terms (fresh ones are identity)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))
    return model.eval()


def _zeroed_outputs(
    model: nn.Module, plan: ChannelPlan, exits: dict[str, str], x: Tensor
) -> Tensor:
    """The original network with the removed channels' outputs forced to zero.

    Zeroing a conv's *filter* (a weight mask) is not equivalent to removing the channel when
    BatchNorm follows: BN turns the zero into the constant ``beta - gamma*mean/sqrt(var+eps)``,
    which the slimmed network no longer computes. Removal is exactly "this channel contributes
    nothing downstream", i.e. the channel is zero where it *leaves* its conv-BN pair (the BN
    output, or the conv output when no BN follows). With coupled channels zeroed in every
    branch, a residual sum is 0 + 0, ReLU/pooling keep 0, and a consumer's weights on a zero
    input contribute nothing, so the outputs must match the slimmed network.
    """
    modules = dict(model.named_modules())
    handles = []
    for layer, idx in plan.keep:
        keep = torch.zeros(plan.sizes[plan.layers.index(layer)][1])
        keep[list(idx)] = 1.0

        def hook(_m: nn.Module, _i: tuple[Tensor, ...], out: Tensor, keep: Tensor = keep) -> Tensor:
            return out * keep.view((1, -1) + (1,) * (out.dim() - 2))  # (1, C, 1, 1) broadcast

        handles.append(modules[exits.get(layer, layer)].register_forward_hook(hook))
    try:
        with torch.no_grad():
            return model(x)
    finally:
        for h in handles:
            h.remove()


@pytest.fixture
def resnet() -> nn.Module:
    return _randomize_bn(build_model("resnet-tiny", (1, 8, 8), 10, seed=0))


def test_slim_resnet_matches_zeroed_channels(resnet: nn.Module) -> None:
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    small, plan = prune_channels(resnet, x[:1], sparsity=0.5)
    with torch.no_grad():
        dense_out, small_out = resnet(x), small.eval()(x)
    zeroed = _zeroed_outputs(resnet, plan, RESNET_EXITS, x)
    assert not torch.allclose(dense_out, zeroed, atol=1e-3)  # removal really changes the function
    torch.testing.assert_close(small_out, zeroed, atol=1e-5, rtol=0)
    # residual add: stem and layer1.conv2 (identity shortcut) lose the same channels
    assert plan.kept("stem.0") == plan.kept("layer1.conv2")
    assert plan.kept("layer2.conv2") == plan.kept("layer2.shortcut.0")
    assert small.stem[0].out_channels == 8 and small.layer1.conv1.in_channels == 8
    assert small.stem[1].num_features == 8 and small.fc.in_features == 16
    assert small.fc.out_features == 10  # classifier outputs intact
    assert resnet.stem[0].out_channels == 16  # the original is untouched


def test_slim_flatten_linear_matches_zeroed_channels() -> None:
    model = build_model("cnn", (1, 8, 8), 10, seed=0).eval()  # conv-conv-flatten(64*2*2)-fc-fc
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    small, plan = prune_channels(model, x[:1], sparsity=0.5)
    assert small[3].in_channels == 16 and small[7].in_features == 32 * 2 * 2  # H*W per channel
    assert small[9].in_features == 64 and small[9].out_features == 10
    torch.testing.assert_close(small(x), _zeroed_outputs(model, plan, {}, x), atol=1e-5, rtol=0)


class CatNet(nn.Module):
    """Two branches concatenated on channels, then a conv; and a coupled add."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = (
            nn.Conv2d(2, 4, 3, padding=1),
            nn.Conv2d(2, 3, 1),
            nn.Conv2d(2, 3, 1),
        )
        self.head = nn.Conv2d(7, 5, 1)
        self.fc = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.cat([self.a(x), self.b(x) + self.c(x)], dim=1).relu()  # (B, 4+3, H, W)
        return self.fc(self.head(y).mean((2, 3)))


def test_slim_concat_and_add() -> None:
    model = CatNet().eval()
    x = torch.randn(4, 2, 5, 5, generator=torch.Generator().manual_seed(3))
    plan = ChannelPlan.from_dict(
        {"a": [0, 3], "b": [1], "c": [1], "head": [0, 2, 4]}, {"a": 4, "b": 3, "c": 3, "head": 5}
    )
    small = slim(model, x[:1], plan)
    assert small.head.in_channels == 3 and small.fc.in_features == 3
    torch.testing.assert_close(small(x), _zeroed_outputs(model, plan, {}, x), atol=1e-5, rtol=0)
    split = ChannelPlan.from_dict({"b": [1], "c": [0]}, {"b": 3, "c": 3})
    with pytest.raises(PrunelabError, match="coupled"):
        slim(model, x[:1], split)


def test_cannot_remove_classifier_outputs(resnet: nn.Module) -> None:
    plan = ChannelPlan.from_dict({"fc": list(range(9))}, {"fc": 10})
    with pytest.raises(PrunelabError, match="reaches the model output"):
        slim(resnet, torch.zeros(1, 1, 8, 8), plan)


def test_plan_from_channel_masks_keeps_coupled_union(resnet: nn.Module) -> None:
    targets = select_targets(resnet, prune_last=False)
    masks = select_masks(compute_scores(resnet, targets, "magnitude"), 0.5, "uniform", Channels())
    plan = plan_from_masks(resnet, torch.zeros(1, 1, 8, 8), masks)
    rows = {n: m.reshape(m.shape[0], -1).any(1) for n, m in masks.items()}
    union = (rows["stem.0"] | rows["layer1.conv2"]).nonzero().flatten().tolist()
    assert list(plan.kept("stem.0")) == union == list(plan.kept("layer1.conv2"))
    assert list(plan.kept("layer1.conv1")) == rows["layer1.conv1"].nonzero().flatten().tolist()
    small = slim(resnet, torch.zeros(1, 1, 8, 8), masks)  # masks accepted directly
    assert small.stem[0].out_channels == len(union)


def test_slimmed_model_trains(resnet: nn.Module) -> None:
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g)
    small, _ = prune_channels(resnet, x[:1], sparsity=0.5)
    small.train()
    opt = torch.optim.Adam(small.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(small(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_params_and_macs_shrink_literally() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 3 * 3, 2))
    x = torch.zeros(1, 1, 5, 5)
    small = slim(model, x, ChannelPlan.from_dict({"0": [1, 3]}, {"0": 4}))
    assert sum(p.numel() for p in model.parameters()) == (4 * 9 + 4) + (2 * 36 + 2)  # 114
    assert sum(p.numel() for p in small.parameters()) == (2 * 9 + 2) + (2 * 18 + 2)  # 58
    assert count_macs(model, x).dense == 9 * 36 + 72  # 3x3 positions x 36 weights + linear
    assert count_macs(small, x).dense == 9 * 18 + 36
    torch.testing.assert_close(
        small[3].weight, model[3].weight[:, list(range(9, 18)) + list(range(27, 36))]
    )


def test_save_rebuild_round_trip(resnet: nn.Module, tmp_path) -> None:
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    small, _ = prune_channels(resnet, x[:1], sparsity=0.3, allocation="global")
    path = save_slim(small, tmp_path / "slim.safetensors", BaseModel("resnet-tiny", (1, 8, 8), 10))
    back = rebuild(path).eval()
    assert back.layer2.conv1.weight.shape == small.layer2.conv1.weight.shape
    for (k, v), (k2, v2) in zip(small.state_dict().items(), back.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)
    assert torch.equal(back(x), small.eval()(x))
    (tmp_path / "plain.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(PrunelabError, match="cannot read slimmed model .*plain.safetensors"):
        rebuild(tmp_path / "plain.safetensors")


class Reshaping(nn.Module):
    """Flatten written as ``view``: with the batch size (supported) or a literal width."""

    def __init__(self, literal: bool) -> None:
        super().__init__()
        self.literal = literal
        self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4 * 2 * 2, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)  # (B, 4, 2, 2)
        y = y.view(-1, 16) if self.literal else y.view(y.size(0), -1)  # (B, 16)
        return self.fc(y)


def test_view_flatten_supported_and_hardcoded_shapes_kept() -> None:
    x = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(6))
    small, plan = prune_channels(Reshaping(literal=False), x[:1], sparsity=0.5)
    assert small.conv.out_channels == 2 and small.fc.in_features == 8
    # a literal width in the forward would break after removal: the conv is left whole
    small, plan = prune_channels(Reshaping(literal=True), x[:1], sparsity=0.5)
    assert small.conv.out_channels == 4 and plan.kept("conv") == (0, 1, 2, 3)
    assert small(x).shape == (3, 3)


def test_untraceable_model_is_refused() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(x) if x.sum() > 0 else -self.fc(x)  # data-dependent control flow

    with pytest.raises(PrunelabError, match="torch.fx"):
        plan_channels(Branchy(), torch.zeros(1, 3), 0.5)


def test_coupled_importance_counts_the_consumers_input_slice() -> None:
    """Hand-computed: channel 0's filter is small but the next layer leans on it heavily."""
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0], [2.0, 2.0]]))  # L1 1, 1, 4
        model[2].weight.copy_(torch.tensor([[5.0, 0.0, 0.0], [-5.0, 0.0, 0.0]]))  # cols 10, 0, 0
    x = torch.zeros(1, 2)
    cg = trace_channels(model, x, eligible={"0", "2"})
    scores = {n: model[int(n)].weight.abs() for n in ("0", "2")}
    assert slice_scores(model, cg, scores) == {("0", 0): 11.0, ("0", 1): 1.0, ("0", 2): 4.0}
    assert slice_scores(model, cg, scores, p=2)[("0", 0)] == 1 + 25 + 25
    assert plan_channels(model, x, 2 / 3).kept("0") == (0,)  # 11 > 4 > 1
    assert plan_channels(model, x, 2 / 3, coupled=False).kept("0") == (2,)  # filter alone: 4


def test_coupled_importance_through_batchnorm_and_flatten() -> None:
    """conv -> BN -> flatten -> linear: channel c owns 4 linear columns and one BN scale."""
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, -3.0]).view(2, 1, 1, 1))  # filters 1, 3
        model[1].weight.copy_(torch.tensor([2.0, -0.5]))  # |gamma| 2, 0.5
        model[3].weight.copy_(torch.tensor([[1.0, 1.0, -1.0, 1.0, 0.0, 0.0, 0.0, 0.5]]))
    x = torch.zeros(1, 1, 2, 2)  # channel c -> features 4c .. 4c+3
    cg = trace_channels(model.eval(), x, eligible={"0", "3"})
    scores = {"0": model[0].weight.abs(), "3": model[3].weight.abs()}
    assert slice_scores(model, cg, scores) == {("0", 0): 1 + 2 + 4, ("0", 1): 3 + 0.5 + 0.5}
    assert slice_scores(model, cg, scores, norm_scales=False)[("0", 0)] == 1 + 4
    families = group_scores(cg, slice_scores(model, cg, scores))
    assert families == {"0": [(7 / 5.5, ("0", 0)), (4 / 5.5, ("0", 1))]}  # / family mean
