"""Channel dependencies of a model, found by tracing it with ``torch.fx``.

Every feature along dim 1 of every intermediate tensor is labelled with a *key*
``(producer, index)``: the Conv/Linear output channel it comes from. Ops that keep channels
(BatchNorm, activations, pooling) pass labels through; ``flatten`` repeats each channel's
label ``H*W`` times (the Linear after it sees ``C*H*W`` features); ``cat`` on dim 1
concatenates labels; an elementwise ``add``/``mul`` of two tensors *unions* the labels at
each position (a residual add couples channel ``i`` of both branches). A union-find over keys
yields the coupled groups. Keys that reach the model's output (or a call that returns no
tensor, such as a detector's decoding), come from its input, feed an op this module does not
understand, or belong to a non-target layer are *fixed* (never removed), so an unknown op makes
pruning more conservative, never wrong.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from prunelab.errors import PrunelabError

Key = tuple[str, int]  # (producer name, output channel index)
Labels = list[Key]  # one key per feature along dim 1

PRODUCERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
KEEP_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.Tanh, nn.Sigmoid,
    nn.Hardswish, nn.Hardsigmoid, nn.Identity, nn.PReLU, nn.Dropout, nn.Dropout2d,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Upsample,
)  # fmt: skip
F = nn.functional
KEEP_FUNCTIONS = {
    F.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, F.elu, F.hardswish, F.dropout,
    F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool2d,
    torch.relu, torch.sigmoid, torch.tanh, F.sigmoid, F.tanh, F.interpolate,
}  # fmt: skip
KEEP_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone", "relu_", "float"}
ELEMENTWISE = {
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    operator.iadd,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
    "add",
    "sub",
    "mul",
    "div",
    "add_",
}
FLATTENS = {torch.flatten, "flatten", "view", "reshape"}
REDUCES = {torch.mean, torch.sum, torch.amax, "mean", "sum", "amax"}
SHAPE_QUERIES = {"size", "dim", "numel", getattr}  # read shapes only: no channel dependency


@dataclass
class ChannelGraph:
    """Result of :func:`trace_channels`: labels per node and the coupling between keys."""

    producers: dict[str, int]  # prunable producer -> number of output channels
    module_in: dict[str, Labels] = field(default_factory=dict)  # module -> input labels
    module_out: dict[str, Labels] = field(default_factory=dict)  # module -> output labels
    parent: dict[Key, Key] = field(default_factory=dict)
    fixed_roots: set[Key] = field(default_factory=set)
    blockers: dict[str, str] = field(default_factory=dict)  # producer -> unsupported op it feeds

    def find(self, k: Key) -> Key:
        root = self.parent.setdefault(k, k)
        while root != self.parent[root]:
            root = self.parent[root]
        while k != root:  # path compression
            self.parent[k], k = root, self.parent[k]
        return root

    def union(self, a: Key, b: Key) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[ra] = rb
            if ra in self.fixed_roots:
                self.fixed_roots.discard(ra)
                self.fixed_roots.add(rb)

    def fix(self, labels: Labels | None) -> None:
        for k in labels or ():
            self.fixed_roots.add(self.find(k))

    def is_fixed(self, k: Key) -> bool:
        return self.find(k) in self.fixed_roots

    def groups(self) -> list[list[Key]]:
        """Coupled sets of prunable producer channels (each removed all together or not at all)."""
        out: dict[Key, list[Key]] = {}
        for name, n in self.producers.items():
            for i in range(n):
                if not self.is_fixed((name, i)):
                    out.setdefault(self.find((name, i)), []).append((name, i))
        return list(out.values())


def _meta_shape(node: fx.Node) -> tuple[int, ...] | None:
    tm = node.meta.get("tensor_meta")
    return tuple(tm.shape) if tm is not None and hasattr(tm, "shape") else None


class _Tracer:
    """Walks the traced graph once, labelling features and recording couplings."""

    def __init__(self, gm: fx.GraphModule, eligible: set[str]) -> None:
        self.modules = dict(gm.named_modules())
        self.eligible = eligible
        self.labels: dict[str, Labels | None] = {}
        self.cg = ChannelGraph(producers={})
        self.counter = 0

    def fresh(self, n: int, fixed: bool, prefix: str | None = None) -> Labels:
        if prefix is None:
            self.counter += 1
            prefix = f"<fixed{self.counter}>"
        labels = [(prefix, i) for i in range(n)]
        if fixed:
            self.cg.fix(labels)
        return labels

    def tensor_args(self, node: fx.Node) -> list[fx.Node]:
        found: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), lambda a: found.append(a))
        return [a for a in found if _meta_shape(a) is not None]

    def opaque(self, node: fx.Node) -> Labels | None:
        """An op we do not understand: nothing flowing in or out of it may change. A call
        that returns no tensor (a detector's decoding into boxes, wrapped with
        ``torch.fx.wrap``) is an output: what feeds it is kept, as the model's output is."""
        what = (
            f"{type(self.modules[node.target]).__name__} '{node.target}'"
            if node.op == "call_module"
            else f"{getattr(node.target, '__name__', node.target)} ('{node.name}')"
        )
        sink = node.op == "call_function" and _meta_shape(node) is None
        for a in self.tensor_args(node):
            labels = self.labels.get(a.name) or []
            for layer in {k[0] for k in labels if k[0] in self.cg.producers and not sink}:
                self.cg.blockers.setdefault(layer, what)
            self.cg.fix(self.labels.get(a.name))
        shape = _meta_shape(node)
        return self.fresh(shape[1], fixed=True) if shape and len(shape) >= 2 else None

    def same(self, node: fx.Node, src: fx.Node) -> Labels | None:
        """Output channels are the input channels (shape on dim 1 must agree)."""
        out, inp = _meta_shape(node), _meta_shape(src)
        if out is None or inp is None or len(out) < 2 or len(inp) < 2 or out[1] != inp[1]:
            return self.opaque(node)
        return self.labels.get(src.name)

    def visit(self, node: fx.Node) -> Labels | None:
        shape = _meta_shape(node)
        if node.op in ("placeholder", "get_attr"):
            return self.fresh(shape[1], fixed=True) if shape and len(shape) >= 2 else None
        if node.op == "output":
            for a in self.tensor_args(node):
                self.cg.fix(self.labels.get(a.name))
            return None
        if node.op == "call_module":
            return self.visit_module(node, self.modules[node.target])
        return self.visit_function(node)

    def record_input(self, name: str, labels: Labels) -> None:
        """A module called twice must see the same channels both times: couple them."""
        if name in self.cg.module_in:
            for a, b in zip(self.cg.module_in[name], labels, strict=True):
                self.cg.union(a, b)
        else:
            self.cg.module_in[name] = labels

    def visit_module(self, node: fx.Node, m: nn.Module) -> Labels | None:
        name, src = str(node.target), node.args[0] if node.args else None
        src_labels = self.labels.get(src.name) if isinstance(src, fx.Node) else None
        if isinstance(m, (*PRODUCERS, *NORMS)) and src_labels is None:
            return self.opaque(node)
        if isinstance(m, nn.Linear) and len(_meta_shape(src)) != 2:
            return self.opaque(node)  # only (B, F) inputs: features on dim 1
        if isinstance(m, PRODUCERS) and getattr(m, "groups", 1) != 1:
            if m.groups == m.in_channels == m.out_channels:  # depthwise: channel i -> i
                self.record_input(name, src_labels)
                self.cg.module_out[name] = src_labels
                return src_labels
            return self.opaque(node)
        if isinstance(m, PRODUCERS):
            self.record_input(name, src_labels)
            if name in self.cg.module_out:  # shared module: same output channels every call
                return self.cg.module_out[name]
            n_out = m.out_features if isinstance(m, nn.Linear) else m.out_channels
            prunable = name in self.eligible and name not in self.cg.producers
            out = self.fresh(n_out, fixed=not prunable, prefix=name if prunable else None)
            if prunable:
                self.cg.producers[name] = n_out
            self.cg.module_out[name] = out
            return out
        per_channel = isinstance(m, nn.PReLU) and m.weight.numel() > 1 and src_labels
        if isinstance(m, NORMS) or per_channel:
            self.record_input(name, src_labels)  # per-channel parameters: shrink with them
            return self.same(node, src)
        if isinstance(m, KEEP_MODULES) and isinstance(src, fx.Node):
            return self.same(node, src)
        if isinstance(m, nn.Flatten) and isinstance(src, fx.Node) and m.start_dim == 1:
            return self.flatten(node, src)
        return self.opaque(node)

    def visit_function(self, node: fx.Node) -> Labels | None:
        target, args = node.target, node.args
        src = args[0] if args and isinstance(args[0], fx.Node) else None
        if _meta_shape(node) is None and (target in SHAPE_QUERIES or not self.tensor_args(node)):
            return None  # shape arithmetic (x.size(0)) and other non-tensor values
        if target in ELEMENTWISE:
            return self.elementwise(node)
        if src is not None and (target in KEEP_FUNCTIONS or target in KEEP_METHODS):
            return self.same(node, src)
        if src is not None and target in FLATTENS:
            literal = [a for a in args[1:] if not isinstance(a, fx.Node) and a not in (1, -1)]
            return self.opaque(node) if literal else self.flatten(node, src)
        if target in (torch.cat, torch.concat):
            return self.cat(node)
        if src is not None and target in REDUCES:
            dims = args[1] if len(args) > 1 else node.kwargs.get("dim")
            n = len(_meta_shape(src))
            dims = [dims] if isinstance(dims, int) else list(dims or [])
            if dims and all(d % n >= 2 for d in dims):
                return self.same(node, src)
        return self.opaque(node)

    def flatten(self, node: fx.Node, src: fx.Node) -> Labels | None:
        """(B, C, *S) -> (B, C*prod(S)): channel c owns features c*prod(S) ... (c+1)*prod(S)-1."""
        inp, out = _meta_shape(src), _meta_shape(node)
        labels = self.labels.get(src.name)
        ok = inp and out and len(inp) >= 2 and len(out) == 2 and out[0] == inp[0]
        if not ok or labels is None or out[1] != math.prod(inp[1:]):
            return self.opaque(node)
        per = math.prod(inp[2:])
        return [k for k in labels for _ in range(per)]

    def elementwise(self, node: fx.Node) -> Labels | None:
        """Broadcasting binary op: tensors with a full channel dim are coupled position-wise."""
        out = _meta_shape(node)
        if out is None or len(out) < 2:
            return self.opaque(node)
        result: Labels | None = None
        for a in self.tensor_args(node):
            shape = _meta_shape(a)
            aligned = 1 - (len(out) - len(shape))  # the dim of ``a`` that broadcasts to dim 1
            if aligned < 0 or shape[aligned] == 1:
                continue  # constant across channels: unaffected by removal
            labels = self.labels.get(a.name)
            if aligned != 1 or labels is None:
                return self.opaque(node)
            if result is None:
                result = labels
            else:
                for x, y in zip(result, labels, strict=True):
                    self.cg.union(x, y)
        return result if result is not None else self.opaque(node)

    def cat(self, node: fx.Node) -> Labels | None:
        tensors = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        out = _meta_shape(node)
        parts = [self.labels.get(t.name) for t in tensors] if isinstance(tensors, list) else []
        if not parts or any(p is None for p in parts) or dim % len(out) != 1:
            return self.opaque(node)
        return [k for p in parts for k in p]


def trace_channels(
    model: nn.Module, example_input: torch.Tensor, eligible: set[str]
) -> ChannelGraph:
    """Trace ``model`` on ``example_input`` and return its channel dependency graph.

    ``eligible`` names the Conv/Linear modules whose output channels may be removed.
    The model is traced and run once in eval mode (a forward that branches on
    ``self.training`` is traced as it predicts) without gradients; its state is not changed.
    """
    was_training = model.training
    model.eval()
    try:
        try:
            gm = fx.symbolic_trace(model)
        except Exception as e:  # noqa: BLE001  (fx raises many kinds)
            raise PrunelabError(
                f"channel pruning needs a model torch.fx can trace, and {type(model).__name__}'s "
                f"forward is not traceable ({str(e).splitlines()[0]}); use unstructured or N:M "
                "structures, or mark data-dependent post-processing with torch.fx.wrap"
            ) from None
        with torch.no_grad():
            ShapeProp(gm).propagate(example_input)
    except PrunelabError:
        raise
    except Exception as e:  # noqa: BLE001
        raise PrunelabError(
            f"model cannot run on example input of shape {tuple(example_input.shape)}: "
            f"{str(e).splitlines()[0]}"
        ) from None
    finally:
        model.train(was_training)
    tracer = _Tracer(gm, eligible)
    for node in gm.graph.nodes:
        tracer.labels[node.name] = tracer.visit(node)
    return tracer.cg
