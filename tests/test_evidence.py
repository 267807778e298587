"""The evidence task (attnbook.data.evidence) and its classifier (attnbook.models.classifier)."""
import pytest
import torch

from attnbook.data.evidence import (CLS, FIRST_FILLER, FIRST_NEGATIVE, FIRST_POSITIVE, NOT, VOCAB,
                                    evidence_task, negation_task)
from attnbook.models.classifier import EvidenceClassifier


def test_labels_are_the_majority_of_the_polarity_words_marked_as_evidence():
    tokens, labels, evidence = evidence_task(500, seq_len=10, generator=torch.Generator().manual_seed(0))
    assert tokens.shape == evidence.shape == (500, 11) and (tokens[:, 0] == CLS).all()
    positive = (tokens >= FIRST_POSITIVE) & (tokens < FIRST_NEGATIVE)
    negative = (tokens >= FIRST_NEGATIVE) & (tokens < FIRST_FILLER)
    assert torch.equal(evidence, positive | negative)
    assert torch.equal(labels, (positive.sum(1) > negative.sum(1)).long())
    assert (positive.sum(1) != negative.sum(1)).all()  # never a tie
    assert evidence.sum(1).min() >= 1 and evidence.sum(1).max() <= 4


def test_the_task_is_seeded():
    a = evidence_task(4, generator=torch.Generator().manual_seed(3))
    b = evidence_task(4, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_classifier_weights_are_distributions_and_uniform_layer_is_uniform():
    tokens, _, _ = evidence_task(3, seq_len=6, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = EvidenceClassifier(len(VOCAB), 2, max_len=7, uniform_last=True).eval()
    logits, weights = model(tokens, return_weights=True)
    assert logits.shape == (3, 2) and len(weights) == 2
    for w in weights:
        torch.testing.assert_close(w.sum(-1), torch.ones(3, 2, 7))
    assert torch.equal(weights[-1], torch.full_like(weights[-1], 1 / 7))


def test_embeddings_path_equals_tokens_path_and_cls_override_is_used():
    tokens, _, _ = evidence_task(2, seq_len=6, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    model = EvidenceClassifier(len(VOCAB), 2, max_len=7).eval()
    logits, weights = model(tokens, return_weights=True)
    torch.testing.assert_close(model(embeddings=model.embed(tokens)), logits)
    # overriding the [CLS] row with itself changes nothing; with something else it does
    torch.testing.assert_close(model(tokens, cls_attention=weights[-1][:, :, 0]), logits)
    one_hot = torch.zeros(2, 2, 7)
    one_hot[..., 3] = 1.0
    assert not torch.allclose(model(tokens, cls_attention=one_hot), logits)


def test_classifier_rejects_bad_input():
    model = EvidenceClassifier(len(VOCAB), 2, max_len=5)
    with pytest.raises(ValueError, match="exactly one"):
        model()
    with pytest.raises(ValueError, match="max_len=5"):
        model(torch.ones(1, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible"):
        EvidenceClassifier(len(VOCAB), 2, max_len=5, d_model=10, num_heads=3)


def test_negation_task_labels_follow_the_effective_polarity():
    tokens, labels, evidence = negation_task(500, seq_len=10, generator=torch.Generator().manual_seed(0))
    positive = (tokens >= FIRST_POSITIVE) & (tokens < FIRST_NEGATIVE)
    negative = (tokens >= FIRST_NEGATIVE) & (tokens < FIRST_FILLER)
    polarity = positive | negative
    before = torch.zeros_like(polarity)
    before[:, 1:] = tokens[:, :-1] == NOT                 # the word is preceded by "not"
    effective_positive = (positive & ~before) | (negative & before)
    effective_negative = polarity & ~effective_positive
    assert torch.equal(labels, (effective_positive.sum(1) > effective_negative.sum(1)).long())
    assert (effective_positive.sum(1) != effective_negative.sum(1)).all()
    # evidence: the polarity words and exactly the "not"s that precede one
    negators = torch.zeros_like(polarity)
    negators[:, :-1] = (tokens[:, :-1] == NOT) & polarity[:, 1:]
    assert torch.equal(evidence, polarity | negators)
    assert negators.any() and ((tokens == NOT) & ~negators).any()   # both kinds of "not" occur
    # with no negation and no distractors it is the plain task
    plain = negation_task(50, negation_rate=0.0, distractor_rate=0.0, generator=torch.Generator().manual_seed(4))
    reference = evidence_task(50, generator=torch.Generator().manual_seed(4))
    assert all(torch.equal(x, y) for x, y in zip(plain, reference))
    with pytest.raises(ValueError, match="negation_rate"):
        negation_task(2, negation_rate=1.5, generator=torch.Generator())
