"""Structured pruning of Llama-style decoders: calibrate, score, plan a level, remove.

One dense pass over the calibration windows (:func:`calibrate`) records, per decoder block,
the mean and variance of every input channel of ``o_proj`` and ``down_proj`` and the block's
influence. From them:

- **FLAP's fluctuation metric** (An et al. 2024, CASIA-IVA-Lab/FLAP ``WIFV``): channel ``c``
  of an output projection ``W`` scores ``Var(x_c) · ‖W[:, c]‖²`` — the expected squared change
  of the layer's output when the channel is replaced by its calibration mean. A query head
  scores the sum over its ``head_dim`` channels (FLAP squares the per-channel metric before
  summing; the plain sum is the expected error of removing the head and adds over heads); an
  FFN neuron scores its ``down_proj`` channel.
- **Bias compensation** (FLAP): the removed channels' mean contribution ``W[:, removed] ·
  mean(x_removed)`` becomes a bias of ``o_proj``/``down_proj``. Llama projections have no
  bias, so a compensated layer gets biases on all four attention (or three MLP) projections,
  zeros except the compensation: that is transformers' own ``attention_bias``/``mlp_bias``
  layout, so the pruned model still reloads as a plain ``LlamaConfig``.
- **Block influence** (ShortGPT, Men et al. 2024): ``1 − mean_t cos(h_in_t, h_out_t)`` per
  block; the least influential blocks are removed whole (structure ``blocks``).
- **Calibration loss, greedily** (Shortened LLaMA's perplexity criterion, Kim et al. 2024, made
  iterative): remove, one block at a time, the block whose skipping raises the calibration
  next-token loss least *given the blocks already removed* (structure ``blocks-loss``). It
  costs one forward of the remaining blocks per candidate and round (blocks before the
  candidate are reused) instead of one pass; on SmolLM2-135M, 11 of 30 blocks chosen on
  2,048 tokens gave a one-shot perplexity of 145 against influence's 182.
- **Sub-layers by calibration loss** (structure ``sublayers-loss``): the same greedy search
  over attention and MLP sub-layers (a block goes when both have gone), each round removing
  the sub-layer with the lowest loss increase *per parameter removed*. One at a time,
  attention sub-layers are cheap to lose (on SmolLM2-135M most raise the calibration loss by
  0.01–0.06 nats, the cheapest whole block by 0.08; "What Matters in Transformers? Not All
  Attention Is Needed", He et al. 2024, found the same on Llama-2), but the rises compound:
  at 0.36 of the parameters and the same batch-1 decode speed (1.41×), the one-shot
  perplexity was 5.21× dense against 5.44× for ``blocks-loss``
  (``benchmarks/results/decoder-sublayers.md``). After the first round only the
  ``shortlist`` sub-layers that scored best last time are tried again.

- **Depth, then width** (structure ``blocks-loss+ffn``, :func:`prune_blocks_then_ffn`): whole
  blocks by calibration loss for :data:`DEPTH_SHARE` of the level, then the same number of FFN
  neurons from every kept block (FLAP's scores and compensation, from a calibration pass over
  the cut model) for the rest, the width rounded to a multiple of :data:`FFN_MULTIPLE`. Batch-1
  decode on a CPU reads every weight once per token, so its time follows the parameters kept
  whichever part they come from, while the 11th-best block costs more quality than a third of
  the FFN neurons of the blocks left: on SmolLM2-135M, 7 blocks + FFN 1536 → 1126 (93.5 M
  parameters) re-fit and distilled for 651 s reached 45.1 perplexity against 48.4 for 11 blocks
  (95.6 M) with the same budget (scratch probes, one run each). FFN widths off the kernels'
  tiles are slow: 23 blocks at FFN 1126 decoded at 1.32× dense, at 1024 at 1.46×.

A *level* is the fraction of the decoder blocks' Linear parameters removed (weights and biases;
embeddings, norms and ``lm_head`` excluded); :func:`achieved_level` reports what was really
removed (whole heads, groups, neurons and blocks cannot hit every level exactly). Structures
(:data:`DECODER_STRUCTURES`): ``heads``, ``ffn``, ``heads+ffn`` (the same fraction of every
block; attention in whole-GQA steps, the FFN makes up the rest), ``blocks``, ``blocks-loss``
``sublayers-loss`` and ``blocks-loss+ffn``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from prunelab.errors import PrunelabError
from prunelab.progress import LayerProgress
from prunelab.prune.blockcalls import block_hidden, call_block, record_block_calls
from prunelab.prune.surgery.decoder import (
    ATTN,
    MLP,
    DecoderPlan,
    LayerPlan,
    apply_plan,
    decoder_layers,
    decoder_linear_params,
    head_rows,
    layer_shape,
    linear_params,
)
from prunelab.prune.surgery.pruned_llama import remove_attention, remove_mlp
from prunelab.registry import Registry
from prunelab.training import mixed_precision

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecoderStats:
    """Per block: o_proj / down_proj input means and variances (float64), block influence."""

    attn_mean: tuple[Tensor, ...]  # (heads * head_dim,) per block
    attn_var: tuple[Tensor, ...]
    mlp_mean: tuple[Tensor, ...]  # (ffn,) per block
    mlp_var: tuple[Tensor, ...]
    influence: Tensor  # (blocks,) 1 - mean cosine(block input, block output)


class _Moments:
    """Running sum and sum of squares of a layer's input channels."""

    def __init__(self) -> None:
        self.n, self.s, self.s2 = 0, 0.0, 0.0

    def add(self, x: Tensor) -> None:
        rows = x.detach().reshape(-1, x.shape[-1]).double()  # (tokens, channels)
        self.n += rows.shape[0]
        self.s = self.s + rows.sum(0)
        self.s2 = self.s2 + (rows * rows).sum(0)

    def mean_var(self) -> tuple[Tensor, Tensor]:
        mean = self.s / self.n
        return mean, (self.s2 / self.n - mean * mean).clamp(min=0)


@torch.no_grad()
def calibrate(model: nn.Module, calibration: Sequence[Tensor]) -> DecoderStats:
    """One forward pass over ``calibration`` ((B, T) token-id tensors) with hooks."""
    layers = decoder_layers(model)
    attn, mlp = [_Moments() for _ in layers], [_Moments() for _ in layers]
    cos_sum, cos_n = torch.zeros(len(layers), dtype=torch.float64), [0] * len(layers)

    def moments(m: _Moments) -> Callable:
        return lambda _mod, args: m.add(args[0])

    def influence(i: int) -> Callable:
        def hook(_mod: nn.Module, args: tuple, kwargs: dict, out) -> None:
            h_in = args[0] if args else kwargs["hidden_states"]  # (B, T, D)
            h_out = out[0] if isinstance(out, tuple | list) else out  # (B, T, D)
            cos = nn.functional.cosine_similarity(h_in.double(), h_out.double(), dim=-1)
            cos_sum[i] += cos.sum()  # (B, T) summed
            cos_n[i] += cos.numel()

        return hook

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(moments(attn[i])))
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(moments(mlp[i])))
        handles.append(layer.register_forward_hook(influence(i), with_kwargs=True))
    feed_windows(model, calibration, handles)
    if not calibration or not cos_n[0]:
        raise PrunelabError("calibration never reached the decoder layers")
    a, f = [m.mean_var() for m in attn], [m.mean_var() for m in mlp]
    return DecoderStats(
        tuple(x[0] for x in a),
        tuple(x[1] for x in a),
        tuple(x[0] for x in f),
        tuple(x[1] for x in f),
        1 - cos_sum / torch.tensor(cos_n, dtype=torch.float64),
    )


def feed_windows(model: nn.Module, calibration: Sequence[Tensor], handles: list) -> None:
    """Run ``model`` in eval mode on each (B, T) token-id window (no KV cache), then restore
    its mode and remove ``handles`` (the hooks that recorded what the caller wanted)."""
    was = model.training
    model.eval()
    try:
        for ids in calibration:
            model(input_ids=ids, use_cache=False)
    finally:
        model.train(was)
        for h in handles:
            h.remove()


def fluctuation_scores(model: nn.Module, stats: DecoderStats) -> list[dict[str, Tensor]]:
    """Per block ``{"heads": (H,), "ffn": (F,)}``: FLAP's ``Var(x_c)·‖W[:, c]‖²`` (higher =
    keep), summed over each query head's channels."""
    out = []
    for i, layer in enumerate(decoder_layers(model)):
        d = layer_shape(layer)["head_dim"]
        wo = layer.self_attn.o_proj.weight.detach().double()  # (D, H*d)
        wd = layer.mlp.down_proj.weight.detach().double()  # (D, F)
        chan = stats.attn_var[i] * (wo * wo).sum(0)  # (H*d,)
        out.append(
            {
                "heads": chan.view(-1, d).sum(1),  # (H*d,) -> (H, d) -> (H,)
                "ffn": stats.mlp_var[i] * (wd * wd).sum(0),  # (F,)
            }
        )
    return out


def _unit_params(layer: nn.Module) -> dict[str, int]:
    """Parameters one query head, one KV group (its k/v rows) and one FFN neuron own."""
    attn, mlp, d = layer.self_attn, layer.mlp, layer.self_attn.head_dim
    hidden = attn.q_proj.in_features
    ab, mb = int(attn.q_proj.bias is not None), int(mlp.gate_proj.bias is not None)
    return {
        "q": 2 * hidden * d + ab * d,  # q rows (+ bias) and o columns
        "kv": 2 * (hidden * d + ab * d),  # k and v rows (+ biases)
        "ffn": 3 * hidden + 2 * mb,  # gate and up rows (+ biases), down column
    }


def attention_options(layer: nn.Module) -> list[tuple[int, int, int]]:
    """Every GQA-valid attention size ``(kv groups kept, query heads per group, params
    removed)``, from removing nothing to keeping one head of one group."""
    s, u = layer_shape(layer), _unit_params(layer)
    n_rep = s["heads"] // s["kv_heads"]
    return [
        (g, r, (s["kv_heads"] - g) * u["kv"] + (s["heads"] - g * r) * u["q"])
        for g in range(s["kv_heads"], 0, -1)
        for r in range(n_rep, 0, -1)
    ]


def keep_heads(scores: Tensor, n_rep: int, groups: int, per_group: int) -> LayerPlan:
    """The best ``per_group`` query heads of each group, in the best ``groups`` groups.

    >>> keep_heads(torch.tensor([1., 9., 2., 3., 4., 5.]), 3, 1, 2)
    LayerPlan(kv_heads=(0,), q_heads=(1, 2), ffn=())
    """
    by_group = scores.view(-1, n_rep)  # (H,) -> (G, n_rep)
    top = torch.topk(by_group, per_group, dim=1)  # (G, per_group)
    best = torch.topk(top.values.sum(1), groups).indices.sort().values  # (groups,)
    q = sorted((int(g) * n_rep + int(j)) for g in best for j in top.indices[g])
    return LayerPlan(tuple(int(g) for g in best), tuple(q), ())


def _layer_plan(
    layer: nn.Module, s: dict[str, Tensor], attn_target: float, total: float | None
) -> LayerPlan:
    """Attention option closest to ``attn_target`` removed params (ties: the best-scoring
    heads), then FFN neurons closest to the rest of ``total`` (None: the FFN stays whole)."""
    shape, u = layer_shape(layer), _unit_params(layer)
    n_rep = shape["heads"] // shape["kv_heads"]
    opts = attention_options(layer)
    gap = min(abs(rem - attn_target) for *_, rem in opts)
    tied = [
        (rem, keep_heads(s["heads"], n_rep, g, r))
        for g, r, rem in opts
        if abs(rem - attn_target) == gap
    ]
    removed, heads = max(tied, key=lambda t: float(s["heads"][list(t[1].q_heads)].sum()))
    rest = 0.0 if total is None else total - removed
    n_drop = min(shape["ffn"] - 1, max(0, round(rest / u["ffn"])))
    keep = torch.topk(s["ffn"], shape["ffn"] - n_drop).indices.sort().values
    return LayerPlan(heads.kv_heads, heads.q_heads, tuple(int(j) for j in keep))


def _levels(level: float | Sequence[float], n: int) -> list[float]:
    levels = [float(level)] * n if isinstance(level, int | float) else [float(x) for x in level]
    if len(levels) != n or any(not 0.0 <= x < 1.0 for x in levels):
        raise PrunelabError(f"need one level in [0, 1) per block ({n}), got {level}")
    return levels


def _width(kind: str) -> Callable[..., DecoderPlan]:
    def plan(
        model: nn.Module, scores, stats: DecoderStats, level, calibration=(), progress=None
    ) -> DecoderPlan:
        layers = decoder_layers(model)
        out = []
        for layer, s, lv in zip(layers, scores, _levels(level, len(layers))):
            total = lv * linear_params(layer)
            attn_p = sum(p.numel() for p in layer.self_attn.parameters())
            attn_target = {"heads": total, "ffn": 0.0, "heads+ffn": lv * attn_p}[kind]
            out.append(_layer_plan(layer, s, attn_target, total if kind != "heads" else None))
        return DecoderPlan(tuple(out))

    return plan


def _check_level(level) -> float:
    if not isinstance(level, int | float) or not 0.0 <= level < 1.0:
        raise PrunelabError(f"block removal needs one level in [0, 1), got {level}")
    return float(level)


def _drop_blocks(model: nn.Module, order: Sequence[int], level: float) -> DecoderPlan:
    """Remove the prefix of ``order`` whose parameters come closest to ``level``."""
    layers = decoder_layers(model)
    sizes = [linear_params(layer) for layer in layers]
    target, cum, best, drop = level * sum(sizes), 0, (level * sum(sizes), 0), []
    for i in list(order)[: len(layers) - 1]:
        cum += sizes[i]
        drop.append(i)
        if abs(cum - target) < best[0]:
            best = (abs(cum - target), len(drop))
    gone = set(drop[: best[1]])
    return DecoderPlan(tuple(None if i in gone else _full(layer) for i, layer in enumerate(layers)))


def plan_blocks(
    model: nn.Module, scores, stats: DecoderStats, level, calibration=(), progress=None
) -> DecoderPlan:
    """Remove the least influential blocks whose parameters come closest to ``level``."""
    level = _check_level(level)
    return _drop_blocks(model, torch.argsort(stats.influence).tolist(), level)


def sublayer_plan(model: nn.Module, removed: Sequence[tuple[str, int]]) -> DecoderPlan:
    """The plan that removes the sub-layers ``removed`` (``("attn" | "mlp", block)``) and keeps
    everything else; a block that loses both is removed whole (``None``)."""
    gone, plans = set(map(tuple, removed)), []
    for i, layer in enumerate(decoder_layers(model)):
        full = _full(layer)
        attn, mlp = ("attn", i) in gone, ("mlp", i) in gone
        heads = ((), ()) if attn else (full.kv_heads, full.q_heads)
        plans.append(None if attn and mlp else LayerPlan(*heads, () if mlp else full.ffn))
    return DecoderPlan(tuple(plans))


SHORTLIST = 12  # sub-layers tried again in each round after the first


def _sublayer_params(layer: nn.Module, kind: str) -> int:
    sub, names = (layer.self_attn, ATTN) if kind == "attn" else (layer.mlp, MLP)
    return sum(p.numel() for n in names for p in sub.get_submodule(n).parameters())


@contextlib.contextmanager
def _without(layers: nn.ModuleList, units: Sequence[tuple[str, int]]) -> Iterator[None]:
    """Run with ``units`` (``("attn" | "mlp", block)``) removed in place, then put every
    module back."""
    saved = []
    for kind, i in units:
        layer = layers[i]
        names = (
            ("self_attn", "input_layernorm")
            if kind == "attn"
            else ("mlp", "post_attention_layernorm")
        )
        saved += [(layer, n, getattr(layer, n)) for n in names]
        if kind == "attn":
            remove_attention(layer, layer.self_attn.head_dim)
        else:
            remove_mlp(layer)
    try:
        yield
    finally:
        for layer, name, module in reversed(saved):
            setattr(layer, name, module)


@torch.no_grad()
def sublayer_removal_order(
    model: nn.Module,
    calibration: Sequence[Tensor],
    level: float,
    shortlist: int = SHORTLIST,
    kinds: tuple[str, ...] = ("attn", "mlp"),
    progress: LayerProgress | None = None,
) -> list[tuple[str, int]]:
    """Sub-layers ``("attn" | "mlp", block)`` in the order a greedy search removes them, until
    their parameters come closest to ``level`` of the blocks' Linear parameters. Each round
    scores a candidate — a sub-layer whose removal brings the level closer — by the rise of the
    mean next-token loss on ``calibration`` when it goes too, divided by its parameters, and
    removes the lowest; the first round tries every sub-layer, later ones the ``shortlist``
    best of the last scores (one forward of the blocks from the candidate's on per try).
    ``kinds``: the sub-layers it may remove (``("attn",)``: attention only); ``progress``:
    called after each removal (:func:`_report`).

    >>> import transformers
    >>> cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
    ...     num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2)
    >>> order = sublayer_removal_order(transformers.LlamaForCausalLM(cfg),
    ...                                [torch.randint(0, 64, (2, 8))], 0.4)
    >>> len(set(order)) == len(order) >= 2, {k for k, _ in order} <= {"attn", "mlp"}
    (True, True)
    """
    layers = decoder_layers(model)
    norm, head = _norm_head(model, calibration)
    if shortlist < 1:
        raise PrunelabError(f"the sub-layer search needs a shortlist >= 1, got {shortlist}")
    if not kinds or set(kinds) - {"attn", "mlp"}:
        raise PrunelabError(f"sub-layer kinds are 'attn' and 'mlp', got {kinds}")
    sizes = {(k, i): _sublayer_params(layer, k) for i, layer in enumerate(layers) for k in kinds}
    target, cum, removed = level * decoder_linear_params(model), 0, []
    last: dict[tuple[str, int], float] = dict.fromkeys(sizes, 0.0)
    was = model.training
    model.eval()
    try:
        calls = record_block_calls(model, layers, calibration)
        while len(removed) < len(sizes) - 1:
            gap = abs(cum - target)
            with _without(layers, removed):
                inputs = _block_inputs(layers, calls, [])  # [block][item] hidden states in
                now = _loss_from(layers, calls, inputs[0], 0, [], norm, head, calibration)
            closer = [u for u in sizes if u not in removed and abs(cum + sizes[u] - target) < gap]
            if not closer:  # nothing left brings the level closer
                break
            left = sorted(closer, key=last.__getitem__)
            tries = left if not removed else left[:shortlist]
            for u in tries:
                with _without(layers, [*removed, u]):
                    loss = _loss_from(
                        layers, calls, inputs[u[1]], u[1], [], norm, head, calibration
                    )
                last[u] = (loss - now) / sizes[u]
            u = min(tries, key=last.__getitem__)
            removed.append(u)
            cum += sizes[u]
            log.info("sublayers-loss: removed %s %d (loss rise %.3g/param)", *u, last[u])
            _report(progress, cum, target, f"{u[0]} {u[1]}")
    finally:
        model.train(was)
    return removed


def _report(progress: LayerProgress | None, cum: float, target: float, name: str) -> None:
    """A loss search's progress: percent of the level's parameters removed so far, of 100
    (the search's rounds are not known in advance), and what went last."""
    if progress is not None:
        progress(min(100, round(100 * cum / target)) if target else 100, 100, name)


def _norm_head(model: nn.Module, calibration: Sequence[Tensor]) -> tuple[nn.Module, nn.Module]:
    """The final norm and output head a loss criterion needs (and a check for calibration)."""
    norm = getattr(getattr(model, "model", model), "norm", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if norm is None or head is None:
        raise PrunelabError("the loss criterion needs model.model.norm and an output head")
    if not calibration:
        raise PrunelabError("the loss criterion needs calibration windows")
    return norm, head


@torch.no_grad()
def loss_removal_order(
    model: nn.Module,
    calibration: Sequence[Tensor],
    level: float,
    progress: LayerProgress | None = None,
) -> list[int]:
    """Blocks in the order a greedy search removes them, until their parameters come closest
    to ``level`` of the blocks' Linear parameters: each round skips every remaining block in
    turn and removes the one with the lowest mean next-token loss on ``calibration`` ((B, T)
    token ids). Needs a Llama-style ``model.model.norm`` and an output head.

    >>> import transformers
    >>> cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
    ...     num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
    >>> order = loss_removal_order(transformers.LlamaForCausalLM(cfg),
    ...                            [torch.randint(0, 64, (2, 8))], 0.5)
    >>> len(order), len(set(order)) == 2 and all(0 <= i < 4 for i in order)
    (2, True)
    """
    layers = decoder_layers(model)
    norm, head = _norm_head(model, calibration)
    sizes = [linear_params(layer) for layer in layers]
    target, cum, removed = level * sum(sizes), 0, []
    was = model.training
    model.eval()
    try:
        calls = record_block_calls(model, layers, calibration)
        while len(removed) < len(layers) - 1:
            inputs = _block_inputs(layers, calls, removed)  # [block][item] hidden states in
            losses = {
                c: _skip_loss(layers, calls, inputs, removed, c, norm, head, calibration)
                for c in range(len(layers))
                if c not in removed
            }
            c = min(losses, key=losses.__getitem__)
            if abs(cum + sizes[c] - target) >= abs(cum - target):
                break
            removed.append(c)
            cum += sizes[c]
            log.info("blocks-loss: removed block %d (loss %.4f)", c, losses[c])
            _report(progress, cum, target, f"block {c}")
    finally:
        model.train(was)
    return removed


def _block_inputs(layers: nn.ModuleList, calls: list, removed: list[int]) -> list[list[Tensor]]:
    """Each block's input hidden states per calibration item, ``removed`` skipped."""
    out: list[list[Tensor]] = [[] for _ in layers]
    for k in range(len(calls[0])):
        h = block_hidden(*calls[0][k])  # the embeddings
        for i, layer in enumerate(layers):
            out[i].append(h)
            if i not in removed:
                h = call_block(layer, h, *calls[i][k])
    return out


def _skip_loss(layers, calls, inputs, removed, skip, norm, head, calibration) -> float:
    """Mean next-token cross-entropy with ``removed`` and ``skip`` skipped."""
    return _loss_from(layers, calls, inputs[skip], skip + 1, removed, norm, head, calibration)


def _loss_from(layers, calls, hidden, start, removed, norm, head, calibration) -> float:
    """Mean next-token cross-entropy of the model run from block ``start`` on, given its
    input ``hidden`` per calibration item, blocks ``removed`` skipped."""
    total, n = 0.0, 0
    for k, ids in enumerate(calibration):
        h = hidden[k]
        for j in range(start, len(layers)):
            if j not in removed:
                h = call_block(layers[j], h, *calls[j][k])
        logits = head(norm(h)).float()[:, :-1]  # (B, T-1, V)
        y = ids[:, 1:]
        total += float(
            nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum")
        )
        n += y.numel()
    return total / n


def _full(layer: nn.Module) -> LayerPlan:
    s = layer_shape(layer)
    return LayerPlan(tuple(range(s["kv_heads"])), tuple(range(s["heads"])), tuple(range(s["ffn"])))


DECODER_STRUCTURES = Registry[Callable[..., DecoderPlan]]("decoder structure")
for _kind in ("heads", "ffn", "heads+ffn"):
    DECODER_STRUCTURES.add(_kind, _width(_kind))
DECODER_STRUCTURES.add("blocks", plan_blocks)


def _by_loss(search: Callable[..., list], to_plan: Callable[..., DecoderPlan]) -> Callable:
    """A planner that removes, up to the level, what ``search`` (a greedy calibration-loss
    search: :func:`loss_removal_order`, :func:`sublayer_removal_order`) orders."""

    def plan(
        model: nn.Module, scores, stats, level, calibration: Sequence[Tensor] = (), progress=None
    ) -> DecoderPlan:
        level = _check_level(level)
        return to_plan(model, search(model, calibration, level, progress=progress), level)

    return plan


DECODER_STRUCTURES.add("blocks-loss", _by_loss(loss_removal_order, _drop_blocks))
DECODER_STRUCTURES.add(
    "sublayers-loss", _by_loss(sublayer_removal_order, lambda m, order, _: sublayer_plan(m, order))
)


def compensation(model: nn.Module, plan: DecoderPlan, stats: DecoderStats) -> dict[int, tuple]:
    """FLAP's bias per kept block: ``(W_o[:, removed] @ mean, W_down[:, removed] @ mean)``."""
    out = {}
    for i, (layer, p) in enumerate(zip(decoder_layers(model), plan.layers)):
        if p is None:
            continue
        s = layer_shape(layer)
        gone_q = torch.ones(s["heads"] * s["head_dim"], dtype=torch.bool)
        gone_q[head_rows(torch.tensor(p.q_heads), s["head_dim"])] = False  # (H*d,)
        gone_f = torch.ones(s["ffn"], dtype=torch.bool)
        gone_f[list(p.ffn)] = False  # (F,)
        wo, wd = layer.self_attn.o_proj.weight.detach(), layer.mlp.down_proj.weight.detach()
        a = wo.double()[:, gone_q] @ stats.attn_mean[i][gone_q]  # (D,)
        f = wd.double()[:, gone_f] @ stats.mlp_mean[i][gone_f]  # (D,)
        out[i] = (a.float() if gone_q.any() else None, f.float() if gone_f.any() else None)
    return out


COMPOSITE = "blocks-loss+ffn"  # two planners in turn (prune_blocks_then_ffn), not a registry entry
DEPTH_SHARE = 0.55  # of a blocks-loss+ffn level, the part whole blocks take
FFN_MULTIPLE = 64  # blocks-loss+ffn: kept FFN widths (of layers with >= 4 multiples)


def _round_width(keep: float, ffn: int, multiple: int) -> int:
    """``keep`` neurons of ``ffn`` rounded to the nearest multiple (layers with fewer than 4
    multiples: to one neuron), at least one multiple and at most ``ffn``.

    >>> _round_width(1010.0, 1536, 64), _round_width(40.4, 64, 64), _round_width(3, 1536, 64)
    (1024, 40, 64)
    """
    step = multiple if ffn >= 4 * multiple else 1
    return int(min(ffn, max(step, step * round(keep / step))))


def prune_blocks_then_ffn(
    model: nn.Module,
    calibration: Sequence[Tensor],
    level: float,
    compensate: bool = True,
    progress: LayerProgress | None = None,
    search_calibration: Sequence[Tensor] | None = None,
    search_precision: str = "fp32",
) -> DecoderPruneResult:
    """Structure ``blocks-loss+ffn`` in place: :data:`DEPTH_SHARE` of ``level`` as whole blocks
    (greedy calibration loss, on ``search_calibration`` — default ``calibration`` — under
    ``search_precision``), then one FFN width for every kept block (FLAP's scores from a
    calibration pass over the cut model, its bias compensation) that brings the removed Linear
    parameters closest to ``level``, rounded to :data:`FFN_MULTIPLE`. The plan and shifts
    returned index the dense blocks (``apply_plan`` on the dense model gives the same model).

    >>> import transformers
    >>> cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
    ...     num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
    >>> m = transformers.LlamaForCausalLM(cfg)
    >>> r = prune_blocks_then_ffn(m, [torch.randint(0, 64, (2, 8))], 0.5)
    >>> len(r.plan.kept_blocks), m.config.intermediate_size, round(r.level, 3)
    (3, 32, 0.492)
    """
    level = _check_level(level)
    before = decoder_linear_params(model)
    search = list(search_calibration) if search_calibration is not None else calibration
    with mixed_precision(search_precision, torch.device("cpu")):
        order = loss_removal_order(model, search, DEPTH_SHARE * level, progress=progress)
    depth = _drop_blocks(model, order, DEPTH_SHARE * level)
    apply_plan(model, depth, {})
    layers = decoder_layers(model)
    stats = calibrate(model, calibration)  # the kept blocks' inputs have changed
    scores = fluctuation_scores(model, stats)
    rest = level * before - (before - decoder_linear_params(model))
    u, ffn = _unit_params(layers[0])["ffn"], layer_shape(layers[0])["ffn"]
    keep = _round_width(ffn - rest / (len(layers) * u), ffn, FFN_MULTIPLE)
    drop = (ffn - keep) * u  # every head stays (attention target 0), the FFN loses the rest
    plan = DecoderPlan(tuple(_layer_plan(lay, s, 0.0, drop) for lay, s in zip(layers, scores)))
    shifts = compensation(model, plan, stats) if compensate else {}
    apply_plan(model, plan, shifts)
    kept = depth.kept_blocks
    dense_plan = [None] * len(depth.layers)
    for j, i in enumerate(kept):
        dense_plan[i] = plan.layers[j]
    after = decoder_linear_params(model)
    log.info("decoder blocks-loss+ffn at %s: %d blocks, FFN %d", level, len(kept), keep)
    return DecoderPruneResult(
        DecoderPlan(tuple(dense_plan)),
        1.0 - after / before,
        before,
        after,
        {kept[j]: sh for j, sh in shifts.items()},
    )


@dataclass(frozen=True)
class DecoderPruneResult:
    """What :func:`prune_decoder` removed."""

    plan: DecoderPlan
    level: float  # achieved fraction of the decoder blocks' Linear parameters removed
    params_before: int
    params_after: int
    shifts: dict = field(default_factory=dict)  # {block: (attn_shift, mlp_shift)} applied


def achieved_level(params_before: int, model: nn.Module) -> float:
    """``1 − after / before`` over the decoder blocks' Linear parameters."""
    return 1.0 - decoder_linear_params(model) / params_before


def prune_decoder(
    model: nn.Module,
    calibration: Sequence[Tensor],
    structure: str,
    level: float | Sequence[float],
    compensate: bool = True,
    stats: DecoderStats | None = None,
    progress: LayerProgress | None = None,
) -> DecoderPruneResult:
    """Remove ``level`` of the decoder blocks' Linear parameters as ``structure``, in place.

    ``calibration``: (B, T) token-id tensors (documents disjoint from the evaluation text);
    ``level``: one fraction, or one per block (width structures only: non-uniform layers);
    ``compensate``: FLAP's bias compensation (width structures); ``stats``: reuse a
    :func:`calibrate` result of this same model (one pass serves every structure and level);
    ``progress``: the loss searches report after each removal (percent of the level reached).

    >>> import transformers
    >>> cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
    ...     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    >>> m = transformers.LlamaForCausalLM(cfg)
    >>> r = prune_decoder(m, [torch.randint(0, 64, (2, 8))], "heads+ffn", 0.5)
    >>> round(r.level, 3), m.config.num_attention_heads, m.config.intermediate_size
    (0.483, 2, 32)
    """
    if structure == COMPOSITE:
        return prune_blocks_then_ffn(model, calibration, level, compensate, progress)
    planner = DECODER_STRUCTURES.get(structure)
    by_loss = structure.endswith("-loss")  # the search runs the model itself: no statistics
    if stats is None and not by_loss:
        stats = calibrate(model, calibration)
    before = decoder_linear_params(model)
    scores = None if by_loss else fluctuation_scores(model, stats)
    plan = planner(model, scores, stats, level, calibration, progress)
    whole = structure.startswith(("blocks", "sublayers"))  # whole parts go: nothing to shift
    shifts = compensation(model, plan, stats) if compensate and not whole else {}
    apply_plan(model, plan, shifts)
    after = decoder_linear_params(model)
    log.info("decoder %s at %s: kept %d of %d Linear params", structure, level, after, before)
    return DecoderPruneResult(plan, 1.0 - after / before, before, after, shifts)
