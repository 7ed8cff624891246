"""Physical removal of attention heads and FFN neurons from BERT-style blocks.

transformers 5.x dropped ``PreTrainedModel.prune_heads``; this module slices the Linear layers
itself. A head h of a block owns rows ``h*d:(h+1)*d`` of query/key/value and the same columns of
the attention output projection; FFN neuron j owns row j of ``intermediate.dense`` and column j
of ``output.dense``. Removing them gives exactly the model in which those columns of the output
projections are zero (tested), with fewer parameters and MACs.

Each removal remembers what stayed, as indices into the block as it was first built (plain
attributes :data:`KEPT_HEADS` on the self-attention module and :data:`KEPT_NEURONS` on the FFN's
``intermediate``, outside the state dict): :func:`kept_indices` reads them, so a run can store a
pruned model's plan and rebuild it from the dense model (``prunelab.sweep.snapshot``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from prunelab.errors import PrunelabError


def _slice_linear(lin: nn.Linear, keep: Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping indices ``keep`` of the output (dim=0) or input (dim=1) features."""
    keep = keep.to(lin.weight.device)
    w = lin.weight.detach().index_select(dim, keep).clone()  # (out', in) or (out, in')
    new = nn.Linear(
        w.shape[1], w.shape[0], bias=lin.bias is not None, dtype=w.dtype, device=w.device
    )
    with torch.no_grad():
        new.weight.copy_(w)
        if lin.bias is not None:
            b = lin.bias.detach()
            new.bias.copy_(b.index_select(0, keep) if dim == 0 else b)
    return new


KEPT_HEADS = "prunelab_kept_heads"
KEPT_NEURONS = "prunelab_kept_neurons"


def _remember(module: nn.Module, attr: str, keep: Tensor, before: int) -> None:
    """Record ``keep`` (indices into the module's current ``before`` units) as indices into the
    units it was first built with."""
    original = getattr(module, attr, tuple(range(before)))
    setattr(module, attr, tuple(original[i] for i in keep.tolist()))


def kept_indices(layer: nn.Module) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(heads, FFN neurons) one block keeps, as indices into the block as first built.

    >>> from prunelab.sources.models.encoder import tiny_bert
    >>> layer = tiny_bert(heads=4).bert.encoder.layer[0]
    >>> remove_heads(layer, torch.tensor([0, 2, 3])); remove_heads(layer, torch.tensor([1, 2]))
    >>> kept_indices(layer)[0]
    (2, 3)
    """
    attn, inter = layer.attention.self, layer.intermediate
    heads = getattr(attn, KEPT_HEADS, tuple(range(attn.num_attention_heads)))
    return heads, getattr(inter, KEPT_NEURONS, tuple(range(inter.dense.out_features)))


def _check_plain(*mods: nn.Module) -> None:

    for m in mods:
        if parametrize.is_parametrized(m):
            raise PrunelabError("remove masks first (make_permanent) before physical surgery")


def head_rows(heads: Tensor, head_size: int) -> Tensor:
    """Feature indices owned by ``heads``: (H',) -> (H' * head_size,).

    >>> head_rows(torch.tensor([0, 2]), 2).tolist()
    [0, 1, 4, 5]
    """
    within = torch.arange(head_size, device=heads.device)  # (d,)
    return (heads.view(-1, 1) * head_size + within).reshape(-1)  # (H', d) -> (H'd,)


def remove_heads(layer: nn.Module, keep_heads: Tensor) -> None:
    """Keep only heads ``keep_heads`` (sorted indices) of one ``BertLayer``, in place."""
    attn = layer.attention.self
    out = layer.attention.output.dense
    keep_heads = torch.as_tensor(keep_heads, dtype=torch.long).sort().values
    if keep_heads.numel() == 0:
        raise PrunelabError("cannot remove every attention head of a block (keep at least one)")
    if keep_heads.max() >= attn.num_attention_heads or keep_heads.min() < 0:
        raise PrunelabError(f"head index out of range 0..{attn.num_attention_heads - 1}")
    _check_plain(attn.query, attn.key, attn.value, out)
    _remember(attn, KEPT_HEADS, keep_heads, attn.num_attention_heads)
    rows = head_rows(keep_heads, attn.attention_head_size)
    attn.query = _slice_linear(attn.query, rows, 0)
    attn.key = _slice_linear(attn.key, rows, 0)
    attn.value = _slice_linear(attn.value, rows, 0)
    layer.attention.output.dense = _slice_linear(out, rows, 1)
    attn.num_attention_heads = int(keep_heads.numel())
    attn.all_head_size = attn.num_attention_heads * attn.attention_head_size


def remove_neurons(layer: nn.Module, keep: Tensor) -> None:
    """Keep only FFN intermediate neurons ``keep`` (sorted indices) of one ``BertLayer``."""
    inter, out = layer.intermediate.dense, layer.output.dense
    keep = torch.as_tensor(keep, dtype=torch.long).sort().values
    if keep.numel() == 0:
        raise PrunelabError("cannot remove every FFN neuron of a block (keep at least one)")
    if keep.max() >= inter.out_features or keep.min() < 0:
        raise PrunelabError(f"neuron index out of range 0..{inter.out_features - 1}")
    _check_plain(inter, out)
    _remember(layer.intermediate, KEPT_NEURONS, keep, inter.out_features)
    layer.intermediate.dense = _slice_linear(inter, keep, 0)
    layer.output.dense = _slice_linear(out, keep, 1)


def zero_heads(layer: nn.Module, drop_heads: Tensor) -> None:
    """The masked reference: zero the output-projection columns of ``drop_heads`` (in place)."""
    attn = layer.attention.self
    cols = head_rows(torch.as_tensor(drop_heads, dtype=torch.long), attn.attention_head_size)
    with torch.no_grad():
        layer.attention.output.dense.weight[:, cols] = 0


def zero_neurons(layer: nn.Module, drop: Tensor) -> None:
    """The masked reference: zero the FFN output columns of neurons ``drop`` (in place)."""
    with torch.no_grad():
        layer.output.dense.weight[:, torch.as_tensor(drop, dtype=torch.long)] = 0


def block_shape(layer: nn.Module) -> dict[str, int]:
    """Current number of heads and FFN neurons of one block."""
    return {
        "heads": int(layer.attention.self.num_attention_heads),
        "ffn": int(layer.intermediate.dense.out_features),
    }


def encoder_macs(bert: nn.Module, seq_len: int) -> int:
    """Multiply-accumulates of the transformer blocks for one sequence of ``seq_len`` tokens.

    Counts every Linear in the blocks (T·in·out) plus attention scores and weighted values
    (2·T²·all_head_size); embeddings, LayerNorm, softmax and pooling are not counted.
    """
    total = 0
    for layer in bert.encoder.layer:
        for m in layer.modules():
            if isinstance(m, nn.Linear):
                total += seq_len * m.in_features * m.out_features
        total += 2 * seq_len * seq_len * layer.attention.self.all_head_size
    return total
