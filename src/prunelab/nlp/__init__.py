"""Sentence-transformer pruning: encoders, text data, probes, fidelity, head/FFN surgery.

Importing this package is cheap; transformers / sentence-transformers load only when a model
is built (the ``hf`` extra).
"""

from prunelab.nlp.distill import DistillConfig, distill
from prunelab.nlp.encoder import TextEncoder, encoder_targets, load_minilm, tiny_bert
from prunelab.nlp.fetch import fetch_text_data
from prunelab.nlp.fidelity import fidelity, neighbour_overlap
from prunelab.nlp.heads import fraction_for_speedup, prune_heads_ffn, prune_structured
from prunelab.nlp.persist import load_encoder, save_encoder
from prunelab.nlp.prune import prune_encoder, token_batches
from prunelab.nlp.surgery import encoder_macs
from prunelab.nlp.tasks import probe_accuracy, similarity_spearman
from prunelab.nlp.textdata import load_background, load_sentiment, load_similarity

__all__ = [
    "DistillConfig",
    "TextEncoder",
    "distill",
    "encoder_macs",
    "encoder_targets",
    "fetch_text_data",
    "fidelity",
    "fraction_for_speedup",
    "load_background",
    "load_encoder",
    "load_minilm",
    "load_sentiment",
    "load_similarity",
    "neighbour_overlap",
    "probe_accuracy",
    "prune_encoder",
    "prune_heads_ffn",
    "prune_structured",
    "save_encoder",
    "similarity_spearman",
    "tiny_bert",
    "token_batches",
]
