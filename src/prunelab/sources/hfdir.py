"""Transformers model directories given by path, each with its tokenizer saved beside it.

* a sequence classifier (``AutoModelForSequenceClassification``) becomes a
  :class:`SequenceClassifier`: ``(B, T)`` token ids -> ``(B, K)`` logits, the attention mask
  derived from the tokenizer's pad id, so calibration, compiled evaluation, MAC counts, latency
  and export drive it as they drive any model;
* a sentence encoder — a sentence-transformers directory (``modules.json``: its pooling and
  normalisation are read) or a plain transformers one (mean pooling) — becomes a
  :class:`~prunelab.sources.models.encoder.TextEncoder`;
* causal LMs load with :func:`prunelab.sources.hf.load_causal_lm` (the task reads ``.logits``).

A directory's files are the dense model: :func:`directory_hash` keys resumes by their content.
Nothing is fetched: every load is ``local_files_only``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import Tensor, nn

from prunelab.errors import PrunelabError
from prunelab.sources.hf import (
    check_model_dir,
    from_pretrained,
    load_tokenizer,
    pad_id_of,
    transformers_module,
)
from prunelab.sources.models.encoder import TextEncoder, trim_padding

ST_POOLING = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}


class SequenceClassifier(nn.Module):
    """A transformers sequence classifier as ``logits = model(input_ids)``.

    Rows are right-padded with ``pad_id``; the mask is ``ids != pad_id`` and trailing all-pad
    columns are trimmed (not while tracing). ``tokenizer`` (when known) ships with exports.
    """

    def __init__(self, model: nn.Module, pad_id: int, tokenizer=None) -> None:
        super().__init__()
        self.model = model
        self.pad_id = int(pad_id)
        self.tokenizer = tokenizer

    def forward(self, input_ids: Tensor) -> Tensor:
        """(B, T) token ids -> (B, K) logits."""
        ids = trim_padding(input_ids, self.pad_id)  # (B, T')
        mask = (ids != self.pad_id).long()  # (B, T')
        return self.model(input_ids=ids, attention_mask=mask).logits


def _check_vocab(tokenizer, model: nn.Module, path: Path) -> None:
    vocab = getattr(model.config, "vocab_size", None)
    if vocab is not None and len(tokenizer) > int(vocab):
        raise PrunelabError(
            f"the tokenizer in {path} has {len(tokenizer)} tokens but the model only {vocab} "
            "embeddings: they do not belong together"
        )


def load_sequence_classifier(directory: str | Path) -> SequenceClassifier:
    """The classifier saved in ``directory`` (config, weights, tokenizer), float32, eval mode."""
    path = check_model_dir(directory)
    tok = load_tokenizer(path)
    auto = transformers_module().AutoModelForSequenceClassification
    model = from_pretrained(auto, path, "a sequence classifier", dtype=torch.float32)
    _check_vocab(tok, model, path)
    return SequenceClassifier(model, pad_id_of(tok, path), tok).eval()


def is_transformers_classifier(module: nn.Module) -> bool:
    """A transformers ``*ForSequenceClassification`` model (it returns a ``ModelOutput``)."""
    return type(module).__name__.endswith("ForSequenceClassification") and hasattr(
        module, "config"
    )


def as_classifier(module: nn.Module) -> nn.Module:
    """A factory's transformers sequence classifier wrapped as :class:`SequenceClassifier` (pad
    id from its config); any other module as it is."""
    if not is_transformers_classifier(module):
        return module
    pad = getattr(module.config, "pad_token_id", None)
    if pad is None:
        raise PrunelabError(
            f"{type(module).__name__} has no config.pad_token_id: set it to the tokenizer's pad "
            "id in the factory, so padding can be masked"
        )
    return SequenceClassifier(module, int(pad)).eval()


def _st_layout(path: Path) -> tuple[Path, str, bool, int | None]:
    """(transformer dir, pooling, normalize, max length) of a sentence-transformers directory."""
    try:
        modules = json.loads((path / "modules.json").read_text())
        kinds = {m["type"].rsplit(".", 1)[-1]: path / m["path"] for m in modules}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise PrunelabError(f"unreadable modules.json in {path}: {e}") from None
    if "Transformer" not in kinds:
        raise PrunelabError(f"{path}/modules.json has no Transformer module")
    pooling = "mean"
    if "Pooling" in kinds:
        cfg = json.loads((kinds["Pooling"] / "config.json").read_text())
        modes = [mode for key, mode in ST_POOLING.items() if cfg.get(key)]
        others = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v]
        if len(modes) != 1 or len(others) != 1:
            raise PrunelabError(
                f"{path}: pooling {others} is not supported; valid: mean tokens or the CLS token"
            )
        pooling = modes[0]
    max_length = None
    st_cfg = kinds["Transformer"] / "sentence_bert_config.json"
    if st_cfg.is_file():
        max_length = json.loads(st_cfg.read_text()).get("max_seq_length")
    return kinds["Transformer"], pooling, "Normalize" in kinds, max_length


def load_sentence_encoder(directory: str | Path) -> TextEncoder:
    """A sentence encoder from a sentence-transformers directory (its pooling and normalisation)
    or a plain transformers directory (mean pooling, not normalised)."""
    path = Path(directory).expanduser()
    if (path / "modules.json").is_file():
        inner, pooling, normalize, max_length = _st_layout(path)
    else:
        inner, pooling, normalize, max_length = path, "mean", False, None
    check_model_dir(inner)
    tok = load_tokenizer(inner)
    bert = from_pretrained(transformers_module().AutoModel, inner, "a sentence encoder",
                           dtype=torch.float32)  # fmt: skip
    _check_vocab(tok, bert, inner)
    positions = getattr(bert.config, "max_position_embeddings", None) or 512
    length = int(max_length or min(int(tok.model_max_length), int(positions)))
    return TextEncoder(bert, tok, length, normalize, pooling).eval()


def directory_hash(directory: str | Path) -> str:
    """SHA-256 of every file under ``directory`` (relative names and bytes, sorted; hidden files
    skipped): a model directory's content key, as a weights file's hash is.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()); _ = (d / "config.json").write_text("{}")
    >>> directory_hash(d) == directory_hash(d), len(directory_hash(d))
    (True, 64)
    """
    root = Path(directory).expanduser()
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file())
    for f in files:
        rel = f.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        h.update(str(rel).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
