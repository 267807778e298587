"""A classification task whose evidence is known: a toy "review" labelled by its polarity words.

A sequence is ``[CLS]`` followed by ``seq_len`` words. Most words are neutral filler; a
few are polarity words (``good``, ``great`` positive; ``bad``, ``awful`` negative). The
label is the majority polarity (1 = positive), and the counts never tie, so the polarity
words, and only they, decide the label: they are the *evidence* an attribution should find.
Some filler words are replaced by ``[MASK]``, so that a single masked word (the
perturbation tests of chapter 23) is not new to the model; inputs left with a tie, or with
no polarity word at all, never occur in training.
"""
from __future__ import annotations

import torch

from ..attention._checks import check_positive_int

Tensor = torch.Tensor

PAD, CLS, MASK = 0, 1, 2
POSITIVE = ("good", "great")
NEGATIVE = ("bad", "awful")
FILLER = ("the", "a", "film", "plot", "was", "and", "it", "very", "actor", "scene", "story",
          "but", "so", "of", "is", "this", "one", "too", "with", "time", "music", "end",
          "long", "cast", "set")
VOCAB = ("[PAD]", "[CLS]", "[MASK]") + POSITIVE + NEGATIVE + FILLER
FIRST_POSITIVE, FIRST_NEGATIVE, FIRST_FILLER = 3, 3 + len(POSITIVE), 3 + len(POSITIVE) + len(NEGATIVE)
# (positive, negative) counts: 1 to 4 polarity words, never a tie
COUNTS = [(p, n) for p in range(5) for n in range(5) if 1 <= p + n <= 4 and p != n]


# --8<-- [start:task]
def evidence_task(batch: int, *, seq_len: int = 16, mask_rate: float = 0.1,
                  generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Draw ``batch`` sequences: ``tokens (batch, 1 + seq_len)``, ``labels (batch,)``, ``evidence``.

    ``evidence`` (batch, 1 + seq_len) is True at the polarity words. Counts (positive,
    negative) are drawn uniformly from ``COUNTS``; positions uniformly without repeats;
    each filler word becomes ``[MASK]`` with probability ``mask_rate``.
    """
    check_positive_int("batch", batch)
    check_positive_int("seq_len", seq_len)
    if seq_len < 4:
        raise ValueError(f"seq_len must be at least 4 (room for 4 polarity words), got {seq_len}")
    if not 0.0 <= mask_rate < 1.0:
        raise ValueError(f"mask_rate must be in [0, 1), got {mask_rate}")
    counts = torch.tensor(COUNTS)[torch.randint(len(COUNTS), (batch,), generator=generator)]
    words = FIRST_FILLER + torch.randint(len(FILLER), (batch, seq_len), generator=generator)
    masked = torch.rand(batch, seq_len, generator=generator) < mask_rate
    words = torch.where(masked, MASK, words)
    places = torch.rand(batch, seq_len, generator=generator).argsort(dim=1)  # random positions
    rank = places.argsort(dim=1)  # rank[b, t]: the order in which position t was drawn
    num_pos, num_neg = counts[:, :1], counts[:, 1:]
    positive = rank < num_pos                                   # (batch, seq_len)
    negative = (rank >= num_pos) & (rank < num_pos + num_neg)
    choice = torch.randint(2, (batch, seq_len), generator=generator)
    words = torch.where(positive, FIRST_POSITIVE + choice, words)
    words = torch.where(negative, FIRST_NEGATIVE + choice, words)
    cls = torch.full((batch, 1), CLS)
    tokens = torch.cat([cls, words], dim=1)
    evidence = torch.cat([torch.zeros(batch, 1, dtype=torch.bool), positive | negative], dim=1)
    labels = (counts[:, 0] > counts[:, 1]).long()
    return tokens, labels, evidence
# --8<-- [end:task]


# --8<-- [start:negation]
NOT = len(VOCAB)                        # the negation task's extra word
NEGATION_VOCAB = VOCAB + ("not",)


def negation_task(batch: int, *, seq_len: int = 16, negation_rate: float = 0.5,
                  distractor_rate: float = 0.05,
                  generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """The evidence task with negation: ``not`` before a polarity word flips it.

    Drawn like ``evidence_task`` (same labels: the majority of the *effective* polarities,
    never a tie); then each polarity word that follows a filler word is negated with
    probability ``negation_rate``: its surface word is flipped ("bad" for a positive word)
    and the filler before it becomes ``not``. ``not`` also replaces a filler word that
    precedes another filler with probability ``distractor_rate``: there it decides
    nothing. ``evidence`` marks the polarity words and the ``not`` that negates one, so
    finding it needs two tokens read together. Ids index ``NEGATION_VOCAB``.
    """
    if not (0.0 <= negation_rate <= 1.0 and 0.0 <= distractor_rate <= 1.0):
        raise ValueError(f"negation_rate and distractor_rate must be in [0, 1], got "
                         f"{negation_rate} and {distractor_rate}")
    tokens, labels, polarity = evidence_task(batch, seq_len=seq_len, generator=generator)
    after_filler = torch.zeros_like(polarity)
    after_filler[:, 2:] = ~polarity[:, 1:-1]              # the word before is a filler, not [CLS]
    negated = polarity & after_filler & (torch.rand(polarity.shape, generator=generator) < negation_rate)
    positive = (tokens >= FIRST_POSITIVE) & (tokens < FIRST_NEGATIVE)
    opposite = torch.where(positive, tokens + len(POSITIVE), tokens - len(POSITIVE))
    tokens = torch.where(negated, opposite, tokens)
    negators = torch.zeros_like(polarity)
    negators[:, 1:-1] = negated[:, 2:]                    # the filler just before a negated word
    before_filler = torch.zeros_like(polarity)
    before_filler[:, 1:-1] = ~polarity[:, 2:]
    distractors = (~polarity & before_filler & ~negators
                   & (torch.rand(polarity.shape, generator=generator) < distractor_rate))
    distractors[:, 0] = False
    tokens = torch.where(negators | distractors, NOT, tokens)
    return tokens, labels, polarity | negators
# --8<-- [end:negation]


def decode(tokens: Tensor) -> list[str]:
    """The words of one sequence of ids (``NEGATION_VOCAB`` covers both tasks)."""
    return [NEGATION_VOCAB[int(t)] for t in tokens]
