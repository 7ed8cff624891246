"""Model weights as safetensors: safe reading, atomic writing, and the cache directory."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from prunelab.errors import PrunelabError

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$PRUNELAB_CACHE`` or ``~/.cache/prunelab``: where dense checkpoints are kept."""
    return Path(os.environ.get("PRUNELAB_CACHE", Path.home() / ".cache" / "prunelab"))


def save_weights(model: nn.Module, path: Path) -> None:
    """Write the model's state dict as safetensors, atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(path)


def load_weights(model: nn.Module, path: Path) -> nn.Module:
    """Load safetensors weights into ``model``; refuse corrupt files and non-finite values."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise PrunelabError(f"corrupt or unreadable checkpoint {path}: {e}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise PrunelabError(
            f"checkpoint {path} does not fit the model: {first[-1].strip()}"
        ) from None
    check_finite(model)
    return model


def check_finite(model: nn.Module) -> None:
    for name, p in model.state_dict().items():
        if p.is_floating_point() and not torch.isfinite(p).all():
            raise PrunelabError(f"model parameter '{name}' contains NaN or Inf values")
