"""The dense model every cell starts from, when prunelab trains it: trained once, then cached.

A trained dense model is kept as safetensors under a key of everything it depends on (the model's
name or code hash, the data fingerprint, the training config, the seed), so a second run loads
it instead of retraining, and a changed input never reuses a stale model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab.data import DataBundle
from prunelab.recover.finetune import train
from prunelab.sources.hashing import content_key
from prunelab.sources.models.cache import default_cache_dir, load_weights, save_weights
from prunelab.sources.models.zoo import build_model
from prunelab.training import Objective, StepCallback, TrainConfig

log = logging.getLogger(__name__)


def trained(
    model: nn.Module,
    name: str,
    key: Mapping[str, Any],
    data: Any,
    cfg: TrainConfig,
    cache_dir: Path | None = None,
    seed: int = 0,
    task: Objective | None = None,
    on_step: StepCallback | None = None,
) -> nn.Module:
    """``model`` trained on ``data.train`` with ``cfg`` (on ``task``'s loss; cross-entropy on
    ``(x, y)`` batches without one), or loaded from the cache file named by ``name`` and
    :func:`~prunelab.sources.hashing.content_key` of ``key``. ``on_step(step, total)`` runs after
    each optimizer step (a progress bar)."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache_dir / f"dense-{name}-{content_key(key)}.safetensors"
    if path.exists():
        log.info("loading cached dense model %s", path)
        return load_weights(model, path)
    log.info("training dense %s for %g epochs", name, cfg.epochs)
    if cfg.epochs > 0:
        train(model, data.train, cfg, torch.Generator().manual_seed(seed), on_step, task=task)
    save_weights(model, path)
    return model


def load_or_train(
    model_name: str,
    data: DataBundle,
    cfg: TrainConfig,
    cache_dir: Path | None = None,
    seed: int = 0,
    task: Objective | None = None,
    on_step: StepCallback | None = None,
) -> nn.Module:
    """The registered model ``model_name`` trained on ``data`` (cached; see :func:`trained`).

    >>> from prunelab.sources.data import load_dataset
    >>> import tempfile
    >>> m = load_or_train("mlp-tiny", load_dataset("digits"), TrainConfig(epochs=1),
    ...                   Path(tempfile.mkdtemp()))
    """
    model = build_model(model_name, data.input_shape, data.num_classes, seed=seed)
    key = {"model": model_name, "data": data.fingerprint(), "cfg": cfg.identity(), "seed": seed}
    return trained(model, model_name, key, data, cfg, cache_dir, seed, task, on_step)
