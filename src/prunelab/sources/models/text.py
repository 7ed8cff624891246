"""Text classifiers: a BERT-style encoder, mean pooling, dropout and a linear head.

``minilm-sentiment`` is the pretrained all-MiniLM-L6-v2 with a seeded random head (training it
is fine-tuning); ``bert-tiny-sentiment`` a randomly initialised 2-layer BERT (hidden 32) with
the MiniLM vocabulary, for fast tests. Both take (B, T) token ids padded with the MiniLM pad id.
"""

from __future__ import annotations

from torch import Tensor, nn

from prunelab.sources.models.encoder import (
    TextEncoder,
    load_minilm,
    minilm_tokenizer,
    transformers_module,
)
from prunelab.sources.models.zoo import MODELS


class TextClassifier(nn.Module):
    """``logits = head(dropout(mean_pool(encoder(input_ids))))``.

    >>> import torch
    >>> m = bert_tiny_sentiment((64,), 2)
    >>> m(torch.tensor([[101, 2307, 102, 0]])).shape
    torch.Size([1, 2])
    """

    def __init__(self, encoder: TextEncoder, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.embedding_dim, num_classes)

    def forward(self, input_ids: Tensor) -> Tensor:
        """(B, T) token ids -> (B, K) logits."""
        return self.head(self.dropout(self.encoder(input_ids)))  # (B, D) -> (B, K)


@MODELS.register("minilm-sentiment")
def minilm_sentiment(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Pretrained all-MiniLM-L6-v2 (22.7 M params, mean pooling, no normalisation) + a head."""
    encoder = load_minilm()
    encoder.normalize = False
    encoder.max_length = int(input_shape[0]) if input_shape else encoder.max_length
    return TextClassifier(encoder.train(), num_classes)


@MODELS.register("bert-tiny-sentiment")
def bert_tiny_sentiment(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A random 2-layer BERT (hidden 32, 2 heads, FFN 64) on the MiniLM vocabulary + a head."""
    tr = transformers_module()
    tok = minilm_tokenizer()
    cfg = tr.BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max(128, int(input_shape[0]) if input_shape else 0),
    )
    bert = tr.BertModel(cfg, add_pooling_layer=False)
    encoder = TextEncoder(bert, tok, max_length=cfg.max_position_embeddings, normalize=False)
    return TextClassifier(encoder, num_classes)
