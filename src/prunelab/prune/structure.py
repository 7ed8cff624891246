"""Granularity of pruning, as typed values (never strings like "2:4" past the CLI boundary)."""

from __future__ import annotations

from dataclasses import dataclass

from prunelab.errors import PrunelabError


@dataclass(frozen=True)
class Unstructured:
    """Any individual weight may be removed."""

    def __str__(self) -> str:
        return "unstructured"


@dataclass(frozen=True)
class NM:
    """Semi-structured N:M: keep ``n`` of every ``m`` consecutive weights along the input dim."""

    n: int
    m: int

    def __post_init__(self) -> None:
        if not 0 < self.n < self.m:
            raise PrunelabError(f"N:M needs 0 < N < M, got {self.n}:{self.m}")

    @property
    def sparsity(self) -> float:
        return 1 - self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


@dataclass(frozen=True)
class Channels:
    """Whole output channels / neurons (rows of a weight), removable physically."""

    def __str__(self) -> str:
        return "channels"


@dataclass(frozen=True)
class Heads:
    """Whole attention heads of transformer blocks, removed physically; with ``ffn``, also
    whole FFN neurons ("heads+ffn"), and the level is the fraction of the blocks' Linear
    parameters removed (see :func:`prunelab.nlp.heads.prune_heads_ffn`).

    >>> str(Heads()), str(Heads(ffn=True))
    ('heads', 'heads+ffn')
    """

    ffn: bool = False

    def __str__(self) -> str:
        return "heads+ffn" if self.ffn else "heads"


Structure = Unstructured | NM | Channels | Heads


def parse_structure(text: str) -> Structure:
    """Parse the CLI/TOML spelling of a structure.

    >>> parse_structure("2:4"), parse_structure("unstructured")
    (NM(n=2, m=4), Unstructured())
    """
    t = text.strip().lower()
    if t == "unstructured":
        return Unstructured()
    if t in ("channels", "filters", "neurons"):
        return Channels()
    if t == "heads":
        return Heads()
    if t in ("heads+ffn", "heads+neurons"):
        return Heads(ffn=True)
    if ":" in t:
        n, _, m = t.partition(":")
        if n.isdigit() and m.isdigit():
            return NM(int(n), int(m))
    raise PrunelabError(
        f"unknown structure '{text}'; valid: unstructured, N:M (e.g. 2:4), channels, heads, "
        "heads+ffn"
    )
