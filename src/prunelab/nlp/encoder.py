"""A sentence encoder as a plain ``nn.Module``: BERT → mean pooling → L2 normalisation.

``TextEncoder(input_ids) -> embeddings`` takes padded token ids (pad = the tokenizer's pad id)
and derives the attention mask from them, so the core toolkit (``calibration.collect``,
``finetune.train``) can drive it with ordinary ``(x, y)`` tensor batches. transformers and
sentence-transformers are imported lazily (the ``hf`` extra).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from prunelab.errors import PrunelabError
from prunelab.prune.targets import select_targets
from prunelab.sources.minilm import minilm_package, minilm_tokenizer
from prunelab.sources.minilm import transformers_module as _transformers

ENCODER_PATTERNS = ("*encoder.layer.*",)  # attention projections and FFN; no embeddings/norms
ATTENTION_PATTERNS = (
    "*attention.self.query",
    "*attention.self.key",
    "*attention.self.value",
    "*attention.output.dense",
)
FFN_PATTERNS = ("*intermediate.dense", "*layer.*.output.dense")


class TextEncoder(nn.Module):
    """Mean-pooled, normalised sentence embeddings from a Hugging Face BERT-style model."""

    def __init__(
        self, bert: nn.Module, tokenizer, max_length: int = 256, normalize: bool = True
    ) -> None:
        super().__init__()
        self.bert = bert
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.normalize = normalize
        self.pad_id = int(tokenizer.pad_token_id)

    def forward(self, input_ids: Tensor) -> Tensor:
        """(B, T) padded token ids -> (B, D) sentence embeddings."""
        used = (input_ids != self.pad_id).any(0).nonzero()
        ids = input_ids[:, : int(used.max()) + 1] if used.numel() else input_ids  # trim padding
        mask = (ids != self.pad_id).long()  # (B, T)
        hidden = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, D)
        m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (B, D)
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled

    def tokenize(self, sentences: Sequence[str]) -> Tensor:
        """(N, T) token ids, padded with the pad id to the longest sentence (≤ max_length)."""
        if isinstance(sentences, str) or not len(sentences):
            raise PrunelabError("tokenize needs a non-empty list of sentences")
        enc = self.tokenizer(
            list(sentences),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return enc["input_ids"]

    @torch.no_grad()
    def encode(self, sentences: Sequence[str], batch_size: int = 64) -> Tensor:
        """(N, D) embeddings in input order; batches are formed by length to limit padding."""
        was = self.training
        self.eval()
        try:
            ids = self.tokenize(sentences)
            order = torch.argsort((ids != self.pad_id).sum(1), stable=True)
            out = torch.empty(len(sentences), self.embedding_dim)
            for i in range(0, len(order), batch_size):
                idx = order[i : i + batch_size]
                out[idx] = self(ids[idx]).float()
        finally:
            self.train(was)
        return out

    @property
    def embedding_dim(self) -> int:
        return int(self.bert.config.hidden_size)


def load_minilm() -> TextEncoder:
    """The real all-MiniLM-L6-v2 (22.7 M params), offline, via sentence-transformers.

    Sets ``HF_HUB_OFFLINE=1`` in the environment if unset: the model ships in the package.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _transformers()
    st = minilm_package().load_model(device="cpu")
    bert, tok = st[0].auto_model, st[0].tokenizer
    enc = TextEncoder(bert, tok, max_length=int(st.max_seq_length), normalize=True)
    return enc.eval()


def tiny_bert(
    seed: int = 0,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    intermediate: int = 64,
    init_std: float = 0.2,
) -> TextEncoder:
    """A randomly initialised tiny BERT with the MiniLM tokenizer, for fast tests.

    ``init_std`` is larger than BERT's 0.02 so that the blocks, not the embeddings and the
    residual stream, dominate the output (pruning a block then visibly moves embeddings).
    Initialisation uses a forked RNG seeded with ``seed`` (the global RNG is left untouched).
    """
    tr = _transformers()
    tok = minilm_tokenizer()
    cfg = tr.BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=128,
        initializer_range=init_std,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        bert = tr.BertModel(cfg, add_pooling_layer=False)
    return TextEncoder(bert.eval(), tok, max_length=128).eval()


def encoder_layers(encoder: TextEncoder) -> list[nn.Module]:
    """The transformer blocks (``BertLayer``) of the encoder, in order."""
    try:
        return list(encoder.bert.encoder.layer)
    except AttributeError as e:
        raise PrunelabError("expected a BERT-style model with .encoder.layer blocks") from e


def encoder_targets(
    encoder: TextEncoder, attention: bool = True, ffn: bool = True
) -> dict[str, nn.Module]:
    """Linear layers of the transformer blocks: q/k/v/o projections and/or FFN in/out.

    Embeddings, LayerNorms and any pooler are never included.
    """

    found = select_targets(encoder, include=ENCODER_PATTERNS)
    out = {}
    for name, module in found.items():
        is_attn = ".attention." in name
        if (is_attn and attention) or (not is_attn and ffn):
            out[name] = module
    if not out:
        raise PrunelabError("no encoder targets selected (attention=False and ffn=False?)")
    return out
