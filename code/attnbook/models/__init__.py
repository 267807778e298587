"""Models: real pretrained models loaded offline, and the book's own small models."""
from .pretrained import (
    MINILM_REQUIREMENT,
    PUNCTUATION,
    ROLES,
    bert_layer_via_attnbook,
    classify_heads,
    head_statistics,
    layer_attention_probs,
    load_minilm,
    minilm_attention_via_attnbook,
    minilm_attentions,
    minilm_forward_via_attnbook,
    minilm_path,
    packed_attention_weights,
)
from .seq2seq import ATTENTIONS, Seq2Seq

__all__ = [
    "ATTENTIONS", "Seq2Seq",
    "MINILM_REQUIREMENT", "PUNCTUATION", "ROLES", "bert_layer_via_attnbook", "classify_heads",
    "head_statistics", "layer_attention_probs", "load_minilm", "minilm_attention_via_attnbook",
    "minilm_attentions", "minilm_forward_via_attnbook", "minilm_path", "packed_attention_weights",
]
