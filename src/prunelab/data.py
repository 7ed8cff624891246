"""The data every stage passes along: a split of (inputs, labels) and a train/val/test bundle.

On the ground floor, so no stage imports another for a type.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from prunelab.errors import PrunelabError


@dataclass(frozen=True)
class Split:
    """Inputs ``x`` (N, ...) and integer labels ``y`` (N,), with their original row ids."""

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise PrunelabError(
                f"data shape mismatch: {self.x.shape[0]} inputs but {self.y.shape[0]} labels"
            )
        if self.x.shape[0] == 0:
            raise PrunelabError("empty data split: no examples")
        if not torch.isfinite(self.x).all():
            raise PrunelabError("data contains NaN or Inf inputs")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, n: int | None) -> Split:
        """The first ``n`` examples (all when ``n`` is None)."""
        return self if n is None or n >= len(self) else Split(self.x[:n], self.y[:n])

    def take(self, idx: Tensor) -> Split:
        """The rows ``idx`` (in that order)."""
        return Split(self.x[idx], self.y[idx])

    def batches(
        self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            yield self.x[idx], self.y[idx]


@dataclass(frozen=True)
class DataBundle:
    """A dataset ready for pruning experiments: train, validation and test splits.

    ``pad_id``: for token-id inputs, the id that pads rows to one length (None otherwise).
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    pad_id: int | None = None

    def __post_init__(self) -> None:
        for split_name in ("train", "val", "test"):
            y = getattr(self, split_name).y
            if int(y.min()) < 0 or int(y.max()) >= self.num_classes:
                raise PrunelabError(
                    f"{split_name} label out of range [0, {self.num_classes}): "
                    f"found {int(y.min())}..{int(y.max())}"
                )

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def fingerprint(self) -> str:
        """A short hash of all splits, recorded with every run for reproducibility."""
        h = hashlib.sha256()
        for s in (self.train, self.val, self.test):
            h.update(s.x.cpu().contiguous().numpy().tobytes())
            h.update(s.y.cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def split_train_val(x: Tensor, y: Tensor, val_size: int, seed: int) -> tuple[Split, Split]:
    """Carve a seeded validation split of ``val_size`` rows out of the training rows."""
    if not 0 < val_size < x.shape[0]:
        raise PrunelabError(f"val_size must be in (0, {x.shape[0]}), got {val_size}")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(x.shape[0], generator=g)
    val_idx, train_idx = order[:val_size], order[val_size:]
    return Split(x[train_idx], y[train_idx]), Split(x[val_idx], y[val_idx])


def kfold_bundle(
    bundle: DataBundle, k: int, fold: int, seed: int, pooled: bool = True
) -> DataBundle:
    """Fold ``fold`` of ``k``: one seeded fold held out as validation, the test split untouched.

    ``pooled`` (a dense model prunelab trains per fold): train and validation rows are pooled,
    the fold validates and the rest trains. Not pooled (a pretrained dense model, which may have
    seen every training row): the folds cut the validation rows only and every fold trains on
    the training rows. Folds partition the rows they cut (sizes differ by at most one).

    >>> from prunelab.sources.data import load_dataset
    >>> d = load_dataset("digits")
    >>> folds = [kfold_bundle(d, 3, f, seed=0) for f in range(3)]
    >>> sum(len(f.val) for f in folds) == len(d.train) + len(d.val)
    True
    >>> held = [kfold_bundle(d, 3, f, seed=0, pooled=False) for f in range(3)]
    >>> sum(len(f.val) for f in held) == len(d.val), held[0].train is d.train
    (True, True)
    """
    if not 0 <= fold < k:
        raise PrunelabError(f"fold must be in [0, {k}), got {fold}")
    if pooled:
        x = torch.cat([bundle.train.x, bundle.val.x])  # (N_train + N_val, ...)
        y = torch.cat([bundle.train.y, bundle.val.y])
    else:
        x, y = bundle.val.x, bundle.val.y
    if x.shape[0] < k:
        raise PrunelabError(f"{k} folds need at least {k} rows to cut, got {x.shape[0]}")
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    held = torch.zeros(x.shape[0], dtype=torch.bool)
    held[order[fold::k]] = True
    train = Split(x[~held], y[~held]) if pooled else bundle.train
    return DataBundle(
        f"{bundle.name} fold {fold}/{k}", train, Split(x[held], y[held]), bundle.test,
        bundle.num_classes,
        bundle.pad_id,
    )  # fmt: skip
