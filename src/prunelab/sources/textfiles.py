"""The user's own text: labelled tables (CSV, TSV, JSONL, Parquet) and corpora (.txt, JSONL).

A table holds one example per row, a text column and (for classification) a label column, both
named by options. It is one file (val/test carved out with a seed) or a directory of
``train.*``, ``val.*`` (or ``validation.*``) and ``test.*`` files. Texts are tokenized with the
model's own tokenizer (a model directory's, by default) up to a stated ``max_length`` and padded
on the right with the tokenizer's pad id (its end-of-text id when it has no pad token).

Labels: integers are class ids as they are; strings are mapped by ``labels`` (names in class-id
order) when given, else by the model's ``id2label`` when every string is one of its names
(case-insensitive), else in sorted order.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from prunelab.errors import PrunelabError
from prunelab.sources.hf import load_tokenizer, pad_id_of, smollm2_gguf
from prunelab.sources.models.encoder import minilm_tokenizer

log = logging.getLogger(__name__)

SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "dev": "val", "test": "test"}
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet")


@lru_cache(maxsize=4)
def tokenizer_for(name: str):
    """A tokenizer by short name (``smollm2``, ``minilm``) or local model path (dir / .gguf)."""
    if name == "smollm2":
        return load_tokenizer(smollm2_gguf())
    if name == "minilm":
        return minilm_tokenizer()
    if not Path(name).exists():
        raise PrunelabError(f"tokenizer '{name}' is neither smollm2, minilm nor a local path")
    return load_tokenizer(name)


def read_table(path: Path) -> pd.DataFrame:
    """One table file as a DataFrame (by suffix); one line when it cannot be read."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
        if suffix == ".jsonl":
            return pd.read_json(path, lines=True)
        if suffix == ".parquet":
            return pd.read_parquet(path)
    except ImportError:
        raise PrunelabError(
            f"reading {path.name} needs pyarrow: pip install 'prunelab[hf]' (or pyarrow)"
        ) from None
    except (OSError, ValueError) as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PrunelabError(f"cannot read {path}: {why}") from None
    raise PrunelabError(f"{path}: unsupported table file; valid: {', '.join(TABLE_SUFFIXES)}")


def table_files(path: str | Path) -> dict[str, Path]:
    """``{"train": file}`` for one file; ``{split: file}`` for a directory of split files."""
    p = Path(path).expanduser()
    if p.is_file():
        return {"train": p}
    if not p.is_dir():
        raise PrunelabError(f"text data {p} not found")
    found: dict[str, Path] = {}
    for f in sorted(p.iterdir()):
        split = SPLIT_NAMES.get(f.stem.lower())
        if split and f.suffix.lower() in TABLE_SUFFIXES:
            if split in found:
                raise PrunelabError(f"{p}: two {split} files ({found[split].name}, {f.name})")
            found[split] = f
    if "train" not in found:
        raise PrunelabError(
            f"{p} has no train file: give one table file, or train/val/test files "
            f"({', '.join(TABLE_SUFFIXES)})"
        )
    return found


def _column(frame: pd.DataFrame, name: str, path: Path, option: str) -> pd.Series:
    if name not in frame.columns:
        raise PrunelabError(
            f"{path.name} has no {option} column '{name}'; columns: {list(frame.columns)} "
            f"(set [data.options] {option} = '<column>')"
        )
    col = frame[name]
    if col.isna().any():
        raise PrunelabError(f"{path.name}: column '{name}' has missing values")
    return col


def class_names(values: list[np.ndarray], labels: tuple[str, ...], tokenizer: str) -> list[str]:
    """The class names of string labels, in class-id order (see the module docstring); names
    match case-insensitively."""
    seen = {str(v).lower() for a in values for v in a}
    if labels:
        missing = sorted(seen - {n.lower() for n in labels})
        if missing:
            raise PrunelabError(f"labels {missing} are not among the given labels {list(labels)}")
        return list(labels)
    config = Path(tokenizer) / "config.json"
    if config.is_file():
        id2label = json.loads(config.read_text()).get("id2label") or {}
        names = [str(id2label[k]) for k in sorted(id2label, key=int)]
        lower = {n.lower() for n in names}
        if names and seen <= lower and len(lower) == len(names):
            return names
    return sorted({str(v) for a in values for v in a})


def _label_ids(values: np.ndarray, names: list[str] | None, path: Path) -> Tensor:
    if names is None:
        if (values < 0).any():
            raise PrunelabError(f"{path.name}: integer labels must be class ids >= 0")
        return torch.from_numpy(values.astype(np.int64))
    index = {n.lower(): i for i, n in enumerate(names)}
    return torch.tensor([index[str(v).lower()] for v in values], dtype=torch.long)


def tokenize(texts: list[str], tokenizer: str, max_length: int) -> tuple[Tensor, int]:
    """``(ids (N, T), pad id)``: rows truncated to ``max_length`` tokens and right-padded to
    the longest."""
    if max_length < 2:
        raise PrunelabError(f"max_length must be at least 2, got {max_length}")
    tok = tokenizer_for(tokenizer)
    pad = pad_id_of(tok, tokenizer)
    rows = tok(texts, truncation=True, max_length=max_length)["input_ids"]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)  # (N, T)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return ids, pad


def read_text_splits(
    path: str | Path, tokenizer: str, text: str, label: str, max_length: int,
    labels: tuple[str, ...] = (),
) -> tuple[dict[str, tuple[Tensor, Tensor]], int, int]:  # fmt: skip
    """``({split: (ids, labels)}, number of classes, pad id)`` of a table file or directory.

    ``label = ""``: unlabelled text (every label 0, one class), e.g. for sentence embeddings.
    """
    files = table_files(path)
    frames = {s: read_table(f) for s, f in files.items()}
    texts = {s: _column(fr, text, files[s], "text") for s, fr in frames.items()}
    for s, col in texts.items():
        if not all(isinstance(t, str) for t in col):
            raise PrunelabError(f"{files[s].name}: column '{text}' must hold text (strings)")
    if label:
        values = {s: _column(fr, label, files[s], "label").to_numpy() for s, fr in frames.items()}
        ints = all(np.issubdtype(v.dtype, np.integer) for v in values.values())
        names = None if ints else class_names(list(values.values()), labels, tokenizer)
        ys = {s: _label_ids(v, names, files[s]) for s, v in values.items()}
        k = len(names) if names is not None else int(max(int(y.max()) for y in ys.values())) + 1
        if names is not None:
            log.info("classes of %s by id: %s", Path(path).name, names)
    else:
        ys = {s: torch.zeros(len(t), dtype=torch.long) for s, t in texts.items()}
        k = 1
    order = list(files)
    ids, pad = tokenize([t for s in order for t in texts[s]], tokenizer, max_length)
    given, start = {}, 0
    for s in order:
        n = len(texts[s])
        given[s], start = (ids[start : start + n], ys[s]), start + n
    return given, k, pad


def read_corpus_text(path: str | Path, field: str = "text") -> str:
    """A corpus as one string: a UTF-8 ``.txt`` file, or the ``field`` of every JSONL line
    (documents separated by a blank line)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise PrunelabError(f"text file {p} not found")
    if p.suffix.lower() != ".jsonl":
        return p.read_text("utf-8", errors="replace")
    docs = _column(read_table(p), field, p, "field")
    if not all(isinstance(t, str) for t in docs):
        raise PrunelabError(f"{p.name}: field '{field}' must hold text (strings)")
    return "\n\n".join(docs)
