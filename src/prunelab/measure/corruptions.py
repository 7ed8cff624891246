"""Seeded, generated image corruptions (registry): Gaussian noise, blur, contrast, occlusion.

Each corruption is a pure function ``fn(x01, severity, generator) -> x01`` on images in pixel
space [0, 1], shape (N, C, H, W), severity 1..3. :func:`corrupt` handles normalisation:
model inputs are normalised (``(pixel - mean) / std``), so it maps them back to [0, 1] with
the affine map given by ``pixel_range`` (the normalised values of pixel 0 and pixel 1), or,
when that is not given, by the per-channel min and max of the batch (exact when the batch
contains a black and a white pixel, true of Fashion-MNIST and digits); corrupts; clips to
[0, 1]; and maps back. Same seed, same corrupted images.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from prunelab.errors import PrunelabError
from prunelab.registry import Registry

CorruptionFn = Callable[[Tensor, int, torch.Generator], Tensor]
CORRUPTIONS: Registry[CorruptionFn] = Registry("corruption")
SEVERITIES = (1, 2, 3)

NOISE_STD = (0.08, 0.16, 0.28)  # pixel units, in the range of ImageNet-C severities 1..4
BLUR_SIGMA = (0.6, 1.0, 1.6)  # pixels
CONTRAST = (0.4, 0.2, 0.1)  # factor towards each image's mean (ImageNet-C uses .4 .. .05)
OCCLUSION_SIDE = (0.25, 0.4, 0.55)  # side of a random mid-grey square, fraction of the image


@CORRUPTIONS.register("gaussian_noise")
def gaussian_noise(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Add i.i.d. N(0, sigma^2) noise per pixel; sigma = 0.08 / 0.16 / 0.28."""
    sigma = NOISE_STD[severity - 1]
    return x + sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype)


@CORRUPTIONS.register("blur")
def blur(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Gaussian blur, sigma = 0.6 / 1.0 / 1.6 px, reflect padding (no randomness)."""
    sigma = BLUR_SIGMA[severity - 1]
    radius = max(1, math.ceil(2 * sigma))
    r = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-(r**2) / (2 * sigma**2))
    k = k / k.sum()  # (2r+1,) separable kernel
    c = x.shape[1]
    pad = min(radius, x.shape[2] - 1, x.shape[3] - 1)
    if pad < radius:
        k = k[radius - pad : radius + pad + 1] / k[radius - pad : radius + pad + 1].sum()
    y = F.pad(x, (pad, pad, pad, pad), mode="reflect")  # (N, C, H+2p, W+2p)
    y = F.conv2d(y, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)  # rows: (N, C, H+2p, W)
    return F.conv2d(y, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)  # cols: (N, C, H, W)


@CORRUPTIONS.register("contrast")
def contrast(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Pull each image towards its own mean: (x - m) * c + m, c = 0.4 / 0.2 / 0.1."""
    m = x.mean(dim=(1, 2, 3), keepdim=True)  # (N, 1, 1, 1)
    return (x - m) * CONTRAST[severity - 1] + m


@CORRUPTIONS.register("occlusion")
def occlusion(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """A mid-grey (0.5) square of side 25 / 40 / 55 % of the image at a random position."""
    n, _, h, w = x.shape
    side_h = max(1, round(OCCLUSION_SIDE[severity - 1] * h))
    side_w = max(1, round(OCCLUSION_SIDE[severity - 1] * w))
    top = torch.randint(0, h - side_h + 1, (n,), generator=generator)  # (N,)
    left = torch.randint(0, w - side_w + 1, (n,), generator=generator)  # (N,)
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    inside = (
        (rows >= top.view(n, 1, 1))
        & (rows < (top + side_h).view(n, 1, 1))
        & (cols >= left.view(n, 1, 1))
        & (cols < (left + side_w).view(n, 1, 1))
    ).unsqueeze(1)  # (N, 1, H, W)
    return torch.where(inside, torch.full_like(x, 0.5), x)


def pixel_bounds(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel min and max of a batch (1, C, 1, 1): the normalised values of pixel 0 and 1."""
    flat = x.transpose(0, 1).reshape(x.shape[1], -1)  # (C, N*H*W)
    return flat.min(1).values.view(1, -1, 1, 1), flat.max(1).values.view(1, -1, 1, 1)


def corrupt(
    x: Tensor,
    name: str,
    severity: int,
    seed: int = 0,
    pixel_range: tuple[Tensor | float, Tensor | float] | None = None,
) -> Tensor:
    """Corrupt normalised images ``x`` (N, C, H, W); deterministic in ``seed``.

    >>> x = torch.rand(4, 1, 8, 8)
    >>> a = corrupt(x, "gaussian_noise", 2, seed=1)
    >>> torch.equal(a, corrupt(x, "gaussian_noise", 2, seed=1))
    True
    """
    if x.ndim != 4:
        raise PrunelabError(f"corruptions need images (N, C, H, W), got shape {tuple(x.shape)}")
    if severity not in SEVERITIES:
        raise PrunelabError(f"severity must be one of {SEVERITIES}, got {severity}")
    fn = CORRUPTIONS.get(name)
    device, x = x.device, x.cpu()  # the same seeded corruption whatever the device
    lo, hi = pixel_range if pixel_range is not None else pixel_bounds(x)
    lo, hi = torch.as_tensor(lo, dtype=x.dtype).cpu(), torch.as_tensor(hi, dtype=x.dtype).cpu()
    scale = hi - lo
    if bool((scale <= 0).any()):
        raise PrunelabError("cannot map images to pixel space: constant input (max == min)")
    x01 = (x - lo) / scale
    out = fn(x01, severity, torch.Generator().manual_seed(seed)).clamp(0.0, 1.0)
    return (out * scale + lo).to(device)
