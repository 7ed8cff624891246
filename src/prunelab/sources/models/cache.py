"""Dense training with a safetensors checkpoint cache, so a second run does not retrain."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.recover.finetune import Objective, StepCallback, TrainConfig, train
from prunelab.sources.data.base import DataBundle
from prunelab.sources.models.zoo import build_model

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$PRUNELAB_CACHE`` or ``~/.cache/prunelab``: where dense checkpoints are kept."""
    return Path(os.environ.get("PRUNELAB_CACHE", Path.home() / ".cache" / "prunelab"))


def save_weights(model: nn.Module, path: Path) -> None:
    """Write the model's state dict as safetensors, atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
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


def cache_key(model_name: str, data: DataBundle, cfg: TrainConfig, seed: int) -> str:
    blob = json.dumps(
        {"model": model_name, "data": data.fingerprint(), "cfg": cfg.identity(), "seed": seed},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_or_train(
    model_name: str,
    data: DataBundle,
    cfg: TrainConfig,
    cache_dir: Path | None = None,
    seed: int = 0,
    task: Objective | None = None,
    on_step: StepCallback | None = None,
) -> nn.Module:
    """The dense reference model: loaded from ``cache_dir`` when trained before, else trained
    (on ``task``'s loss; cross-entropy on ``(x, y)`` batches without one; ``on_step(step,
    total)`` after each optimizer step, e.g. a progress bar).

    >>> from prunelab.sources.data import load_dataset
    >>> import tempfile
    >>> m = load_or_train("mlp-tiny", load_dataset("digits"), TrainConfig(epochs=1),
    ...                   Path(tempfile.mkdtemp()))
    """
    model = build_model(model_name, data.input_shape, data.num_classes, seed=seed)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache_dir / f"dense-{model_name}-{cache_key(model_name, data, cfg, seed)}.safetensors"
    if path.exists():
        log.info("loading cached dense model %s", path)
        return load_weights(model, path)
    log.info("training dense %s for %d epochs", model_name, cfg.epochs)
    if cfg.epochs > 0:
        train(model, data.train, cfg, torch.Generator().manual_seed(seed), on_step, task=task)
    save_weights(model, path)
    return model
