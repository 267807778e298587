"""Data for the book's experiments: seeded synthetic tasks."""
from .synthetic import IGNORE_INDEX, partner_labels, partner_positions, partner_task, reversal_task
from .translation import (
    SentencePair,
    TranslationBatch,
    TranslationTask,
    Vocab,
    alignment_error_rate,
    corpus_alignment_error_rate,
    links_from_attention,
)

__all__ = [
    "IGNORE_INDEX", "SentencePair", "TranslationBatch", "TranslationTask", "Vocab",
    "alignment_error_rate", "corpus_alignment_error_rate", "links_from_attention",
    "partner_labels", "partner_positions", "partner_task", "reversal_task",
]
