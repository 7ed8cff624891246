"""Keras layers rebuilt as plain torch modules, and torch weights written back to Keras.

Each supported Keras layer class has one converter ``(config, weights, layout) -> (modules,
layout)`` and, if it has weights, one writer ``(module) -> {variable name: array}``. Inside the
torch model images are NCHW (torch's layout); :class:`ChannelsFirst` at the input and
:class:`FlattenChannelsLast` at a ``Flatten`` restore Keras's NHWC semantics exactly, so the
Dense weights after a flatten keep Keras's feature order.

Weight layouts: Keras Dense kernel (in, out) -> torch (out, in); Conv2D kernel
(kh, kw, in/groups, out) -> (out, in/groups, kh, kw); DepthwiseConv2D kernel
(kh, kw, in, multiplier) -> (in * multiplier, 1, kh, kw).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunelab.errors import PrunelabError

Weights = dict[str, np.ndarray]
Layout = str  # "image" (NCHW inside torch) or "flat" (N, features)


class ChannelsFirst(nn.Module):
    """(N, H, W, C) Keras images -> (N, C, H, W)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)


class ChannelsLast(nn.Module):
    """(N, C, H, W) -> (N, H, W, C), for image outputs compared with Keras."""

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)


class FlattenChannelsLast(nn.Module):
    """Keras ``Flatten`` of an NHWC image: features in (H, W, C) order."""

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, 2, 3, 1).flatten(1)  # (N, C, H, W) -> (N, H * W * C)


class SamePad2d(nn.Module):
    """TensorFlow/Keras ``padding="same"``: the extra pixel of an odd total goes bottom/right."""

    def __init__(
        self, kernel: tuple[int, int], stride: tuple[int, int], dilation=(1, 1), value=0.0
    ):
        super().__init__()
        self.kernel, self.stride, self.dilation, self.value = kernel, stride, dilation, value

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[2:], self.kernel, self.stride, self.dilation):
            out = -(-size // s)  # ceil(size / s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        return F.pad(x, (left, right, top, bottom), value=self.value)


class GlobalPool2d(nn.Module):
    """Keras GlobalAverage/MaxPooling2D: (N, C, H, W) -> (N, C), or (N, C, 1, 1) with keepdims."""

    def __init__(self, mode: str, keepdims: bool) -> None:
        super().__init__()
        self.mode, self.keepdims = mode, keepdims

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "max":
            return x.amax(dim=(2, 3), keepdim=self.keepdims)
        return x.mean(dim=(2, 3), keepdim=self.keepdims)


class Rescale(nn.Module):
    """Keras ``Rescaling``: ``x * scale + offset``."""

    def __init__(self, scale: float, offset: float) -> None:
        super().__init__()
        self.scale, self.offset = scale, offset

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.offset


def activation(name: object, layout: Layout, where: str) -> nn.Module | None:
    """A Keras activation by name as a torch module (None for "linear")."""
    channel_dim = 1 if layout == "image" else -1
    table: dict[str, Callable[[], nn.Module | None]] = {
        "linear": lambda: None,
        "relu": nn.ReLU,
        "relu6": nn.ReLU6,
        "sigmoid": nn.Sigmoid,
        "hard_sigmoid": nn.Hardsigmoid,
        "tanh": nn.Tanh,
        "elu": nn.ELU,
        "selu": nn.SELU,
        "gelu": nn.GELU,
        "silu": nn.SiLU,
        "swish": nn.SiLU,
        "softplus": nn.Softplus,
        "leaky_relu": lambda: nn.LeakyReLU(0.2),
        "softmax": lambda: nn.Softmax(dim=channel_dim),
        "log_softmax": lambda: nn.LogSoftmax(dim=channel_dim),
    }
    if not isinstance(name, str) or name not in table:
        raise PrunelabError(
            f"Keras activation {name!r} in layer '{where}' is not supported; "
            f"supported: {', '.join(sorted(table))}"
        )
    return table[name]()


@dataclass(frozen=True)
class Converted:
    """What one Keras layer became: named torch modules, and the layout after it."""

    modules: list[tuple[str, nn.Module]]
    layout: Layout


def _pair(v: object) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, list | tuple) else (int(v), int(v))


def _need(layout: Layout, want: Layout, cls: str, name: str) -> None:
    if layout != want:
        shape = "an image (N, H, W, C)" if want == "image" else "a flat (N, features)"
        raise PrunelabError(f"Keras layer '{name}' ({cls}) is supported only on {shape} input")


def _channels_last(cfg: dict, cls: str) -> None:
    if cfg.get("data_format", "channels_last") != "channels_last":
        raise PrunelabError(
            f"Keras layer '{cfg['name']}' ({cls}): only data_format='channels_last' is supported"
        )


def _with_activation(name: str, core: list[tuple[str, nn.Module]], cfg: dict, layout: Layout):
    act = activation(cfg.get("activation", "linear"), layout, name)
    return Converted(core + ([(f"{name}_act", act)] if act is not None else []), layout)


def _conv_padding(name: str, cfg: dict, k, s, d) -> tuple[list[tuple[str, nn.Module]], tuple]:
    """(padding modules before the conv, the conv's own padding) for Keras's ``padding``.

    ``"same"`` at stride 1 with an even total is symmetric: the conv pads itself; otherwise
    (stride > 1, even kernels) the total depends on the input size: a :class:`SamePad2d`.
    """
    if cfg["padding"] == "valid":
        return [], (0, 0)
    if cfg["padding"] != "same":
        raise PrunelabError(f"Keras layer '{name}': padding {cfg['padding']!r} is not supported")
    totals = [(ki - 1) * di for ki, di in zip(k, d)]
    if s == (1, 1) and all(t % 2 == 0 for t in totals):
        return [], (totals[0] // 2, totals[1] // 2)
    return [(f"{name}_pad", SamePad2d(k, s, d))], (0, 0)


def conv2d(cfg: dict, w: Weights, layout: Layout) -> Converted:
    name = cfg["name"]
    _need(layout, "image", "Conv2D", name)
    _channels_last(cfg, "Conv2D")
    kernel = w["kernel"]  # (kh, kw, in / groups, out)
    k, s, d = _pair(cfg["kernel_size"]), _pair(cfg["strides"]), _pair(cfg["dilation_rate"])
    groups = int(cfg.get("groups", 1))
    pad_modules, pad = _conv_padding(name, cfg, k, s, d)
    conv = nn.Conv2d(
        kernel.shape[2] * groups, kernel.shape[3], k, s, pad, d, groups, bias=cfg["use_bias"]
    )
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(kernel).permute(3, 2, 0, 1))  # -> (out, in/g, kh, kw)
        if cfg["use_bias"]:
            conv.bias.copy_(torch.from_numpy(w["bias"]))
    return _with_activation(name, pad_modules + [(name, conv)], cfg, layout)


def depthwise_conv2d(cfg: dict, w: Weights, layout: Layout) -> Converted:
    name = cfg["name"]
    _need(layout, "image", "DepthwiseConv2D", name)
    _channels_last(cfg, "DepthwiseConv2D")
    kernel = w["kernel"]  # (kh, kw, in, multiplier)
    kh, kw, cin, mult = kernel.shape
    k, s, d = _pair(cfg["kernel_size"]), _pair(cfg["strides"]), _pair(cfg["dilation_rate"])
    pad_modules, pad = _conv_padding(name, cfg, k, s, d)
    conv = nn.Conv2d(cin, cin * mult, k, s, pad, d, groups=cin, bias=cfg["use_bias"])
    with torch.no_grad():
        flat = torch.from_numpy(kernel).reshape(kh, kw, cin * mult)  # channel c*mult + m
        conv.weight.copy_(flat.permute(2, 0, 1).unsqueeze(1))  # -> (in * mult, 1, kh, kw)
        if cfg["use_bias"]:
            conv.bias.copy_(torch.from_numpy(w["bias"]))
    return _with_activation(name, pad_modules + [(name, conv)], cfg, layout)


def dense(cfg: dict, w: Weights, layout: Layout) -> Converted:
    name = cfg["name"]
    _need(layout, "flat", "Dense", name)
    kernel = w["kernel"]  # (in, out)
    lin = nn.Linear(kernel.shape[0], kernel.shape[1], bias=cfg["use_bias"])
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(kernel).T)  # (in, out) -> (out, in)
        if cfg["use_bias"]:
            lin.bias.copy_(torch.from_numpy(w["bias"]))
    return _with_activation(name, [(name, lin)], cfg, layout)


def batch_norm(cfg: dict, w: Weights, layout: Layout) -> Converted:
    name = cfg["name"]
    axis = cfg["axis"][0] if isinstance(cfg["axis"], list | tuple) else cfg["axis"]
    if axis not in (-1, 3 if layout == "image" else 1):
        raise PrunelabError(f"Keras layer '{name}' (BatchNormalization): only the last axis")
    n = w["moving_mean"].shape[0]
    bn_cls = nn.BatchNorm2d if layout == "image" else nn.BatchNorm1d
    bn = bn_cls(n, eps=float(cfg["epsilon"]), momentum=1.0 - float(cfg["momentum"]))
    with torch.no_grad():
        bn.running_mean.copy_(torch.from_numpy(w["moving_mean"]))
        bn.running_var.copy_(torch.from_numpy(w["moving_variance"]))
        for torch_name, keras_name, flag in (
            ("weight", "gamma", "scale"),
            ("bias", "beta", "center"),
        ):
            param = getattr(bn, torch_name)
            if cfg[flag]:
                param.copy_(torch.from_numpy(w[keras_name]))
            else:
                param.requires_grad_(False)  # Keras has no such variable: held at 1 / 0
    return Converted([(name, bn)], layout)


def pooling2d(mode: str) -> Callable[[dict, Weights, Layout], Converted]:
    def convert(cfg: dict, w: Weights, layout: Layout) -> Converted:
        name, cls = cfg["name"], f"{mode.title()}Pooling2D"
        _need(layout, "image", cls, name)
        _channels_last(cfg, cls)
        k = _pair(cfg["pool_size"])
        s = _pair(cfg["strides"] or cfg["pool_size"])
        pool = nn.MaxPool2d(k, s) if mode == "max" else nn.AvgPool2d(k, s)
        mods = [(name, pool)]
        if cfg["padding"] == "same":
            if mode != "max":
                raise PrunelabError(f"Keras layer '{name}' ({cls}): padding='same' not supported")
            mods.insert(0, (f"{name}_pad", SamePad2d(k, s, value=float("-inf"))))
        return Converted(mods, layout)

    return convert


def global_pooling2d(mode: str) -> Callable[[dict, Weights, Layout], Converted]:
    def convert(cfg: dict, w: Weights, layout: Layout) -> Converted:
        _need(layout, "image", f"Global{mode.title()}Pooling2D", cfg["name"])
        _channels_last(cfg, "GlobalPooling2D")
        keep = bool(cfg.get("keepdims", False))
        return Converted([(cfg["name"], GlobalPool2d(mode, keep))], "image" if keep else "flat")

    return convert


def flatten(cfg: dict, w: Weights, layout: Layout) -> Converted:
    _channels_last(cfg, "Flatten")
    module = FlattenChannelsLast() if layout == "image" else nn.Flatten()
    return Converted([(cfg["name"], module)], "flat")


def dropout(cfg: dict, w: Weights, layout: Layout) -> Converted:
    return Converted([(cfg["name"], nn.Dropout(float(cfg["rate"])))], layout)


def activation_layer(cfg: dict, w: Weights, layout: Layout) -> Converted:
    act = activation(cfg["activation"], layout, cfg["name"])
    return Converted([(cfg["name"], act if act is not None else nn.Identity())], layout)


def relu_layer(cfg: dict, w: Weights, layout: Layout) -> Converted:
    name, top = cfg["name"], cfg.get("max_value")
    slope, threshold = float(cfg.get("negative_slope", 0.0)), float(cfg.get("threshold", 0.0))
    if threshold != 0.0 or (slope != 0.0 and top is not None):
        raise PrunelabError(f"Keras layer '{name}' (ReLU): threshold/slope with max_value")
    if slope != 0.0:
        return Converted([(name, nn.LeakyReLU(slope))], layout)
    module = nn.ReLU() if top is None else nn.Hardtanh(0.0, float(top))
    return Converted([(name, module)], layout)


def leaky_relu(cfg: dict, w: Weights, layout: Layout) -> Converted:
    slope = float(cfg.get("negative_slope", cfg.get("alpha", 0.3)))
    return Converted([(cfg["name"], nn.LeakyReLU(slope))], layout)


def softmax_layer(cfg: dict, w: Weights, layout: Layout) -> Converted:
    if cfg.get("axis", -1) != -1:
        raise PrunelabError(f"Keras layer '{cfg['name']}' (Softmax): only axis=-1 is supported")
    return Converted([(cfg["name"], nn.Softmax(dim=1 if layout == "image" else -1))], layout)


def zero_padding2d(cfg: dict, w: Weights, layout: Layout) -> Converted:
    _need(layout, "image", "ZeroPadding2D", cfg["name"])
    _channels_last(cfg, "ZeroPadding2D")
    (top, bottom), (left, right) = cfg["padding"]
    return Converted([(cfg["name"], nn.ZeroPad2d((left, right, top, bottom)))], layout)


def rescaling(cfg: dict, w: Weights, layout: Layout) -> Converted:
    scale, offset = cfg["scale"], cfg["offset"]
    if not isinstance(scale, int | float) or not isinstance(offset, int | float):
        raise PrunelabError(f"Keras layer '{cfg['name']}' (Rescaling): only scalar scale/offset")
    return Converted([(cfg["name"], Rescale(float(scale), float(offset)))], layout)


CONVERTERS: dict[str, Callable[[dict, Weights, Layout], Converted]] = {
    "Conv2D": conv2d,
    "DepthwiseConv2D": depthwise_conv2d,
    "Dense": dense,
    "BatchNormalization": batch_norm,
    "MaxPooling2D": pooling2d("max"),
    "AveragePooling2D": pooling2d("average"),
    "GlobalMaxPooling2D": global_pooling2d("max"),
    "GlobalAveragePooling2D": global_pooling2d("average"),
    "Flatten": flatten,
    "Dropout": dropout,
    "Activation": activation_layer,
    "ReLU": relu_layer,
    "LeakyReLU": leaky_relu,
    "Softmax": softmax_layer,
    "ZeroPadding2D": zero_padding2d,
    "Rescaling": rescaling,
}


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy().copy()


def write_conv(module: nn.Module, cls: str) -> Weights:
    """Keras variables of a Conv2D/DepthwiseConv2D from the torch conv."""
    weight = module.weight.detach()  # (out, in/g, kh, kw)
    if cls == "DepthwiseConv2D":
        kernel = weight.squeeze(1).permute(1, 2, 0)  # (in * mult, kh, kw) -> (kh, kw, in * mult)
        kernel = kernel.reshape(*kernel.shape[:2], module.groups, -1)  # (kh, kw, in, mult)
    else:
        kernel = weight.permute(2, 3, 1, 0)  # -> (kh, kw, in/g, out)
    out = {"kernel": _np(kernel)}
    if module.bias is not None:
        out["bias"] = _np(module.bias)
    return out


def write_weights(module: nn.Module, cls: str) -> Weights:
    """The Keras variables (by name) of a layer of class ``cls`` from its torch module."""
    if cls in ("Conv2D", "DepthwiseConv2D"):
        return write_conv(module, cls)
    if cls == "Dense":
        out = {"kernel": _np(module.weight.T)}  # (out, in) -> (in, out)
        if module.bias is not None:
            out["bias"] = _np(module.bias)
        return out
    if cls == "BatchNormalization":
        return {
            "gamma": _np(module.weight),
            "beta": _np(module.bias),
            "moving_mean": _np(module.running_mean),
            "moving_variance": _np(module.running_var),
        }
    return {}
