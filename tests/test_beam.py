"""Beam search with length normalisation (attnbook.decoding)."""
import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from attnbook.decoding import beam_search, encoder_decoder_step, length_penalty
from attnbook.models.transformer import EncoderDecoder, greedy_decode

BOS, EOS, PAD = 0, 1, 2


def table_model(vocab: int, max_len: int, seed: int, batch: int = 1):
    """A toy model whose logits depend on (sentence, position, last token): a random table.

    float64, so that sums of log-probabilities computed in different orders agree to ~1e-15
    and comparisons between hypotheses are decided by the model, not by rounding."""
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(batch, max_len + 1, vocab, vocab, generator=gen, dtype=torch.float64) * 2

    def step(prefixes, sentence):
        return table[sentence, prefixes.shape[1] - 1, prefixes[:, -1]]
    return step, table


def log_prob(table, sentence, tokens):
    """log p(tokens) under ``table_model``, tokens without <bos>."""
    total, prefix = 0.0, [BOS]
    for token in tokens:
        logits = table[sentence, len(prefix) - 1, prefix[-1]]
        total += torch.log_softmax(logits, dim=-1)[token].item()
        prefix.append(token)
    return total


def greedy(step, batch, max_len):
    """Greedy decoding written as plainly as possible: the reference for beam width 1."""
    tokens = torch.full((batch, 1), BOS, dtype=torch.long)
    done = torch.zeros(batch, dtype=torch.bool)
    for _ in range(max_len):
        nxt = step(tokens, torch.arange(batch))[:, :].argmax(-1).masked_fill(done, PAD)
        tokens = torch.cat([tokens, nxt[:, None]], 1)
        done |= nxt == EOS
        if done.all():
            break
    return tokens


@given(seed=st.integers(0, 10_000), vocab=st.integers(3, 6), max_len=st.integers(1, 6),
       batch=st.integers(1, 4), alpha=st.sampled_from([0.0, 0.6, 1.0]), kind=st.sampled_from(["wu", "length"]))
def test_beam_width_one_is_greedy(seed, vocab, max_len, batch, alpha, kind):
    step, _ = table_model(vocab, max_len, seed, batch)
    beam = beam_search(step, batch, beam_width=1, max_len=max_len, bos_id=BOS, eos_id=EOS,
                       pad_id=PAD, alpha=alpha, kind=kind)
    assert torch.equal(beam, greedy(step, batch, max_len))


def test_beam_width_one_is_the_transformers_greedy_decode():
    torch.manual_seed(0)
    model = EncoderDecoder(9, 8, d_model=8, num_heads=2, num_layers=1, d_ff=16, dropout=0.0,
                           dtype=torch.float64).eval()
    src = torch.randint(3, 9, (5, 6), generator=torch.Generator().manual_seed(1))
    src[1, 4:] = PAD                                     # one padded source
    mask = src != PAD
    expected = greedy_decode(model, src, 7, bos_id=BOS, eos_id=EOS, pad_id=PAD, src_key_padding_mask=mask)
    got = beam_search(encoder_decoder_step(model, src, mask), 5, beam_width=1, max_len=7,
                      bos_id=BOS, eos_id=EOS, pad_id=PAD)
    assert torch.equal(got, expected)


def all_hypotheses(vocab, max_len):
    """Every output beam search can return: non-<eos> words then <eos>, or max_len words."""
    words = [w for w in range(vocab) if w != EOS]
    for length in range(max_len):
        for body in itertools.product(words, repeat=length):
            yield list(body) + [EOS]
    yield from (list(body) for body in itertools.product(words, repeat=max_len))


@pytest.mark.parametrize("alpha,kind", [(0.0, "wu"), (0.6, "wu"), (1.0, "length"), (2.0, "wu")])
@pytest.mark.parametrize("seed", range(4))
def test_a_wide_beam_finds_the_exhaustive_optimum(seed, alpha, kind):
    vocab, max_len, batch = 4, 3, 2
    step, table = table_model(vocab, max_len, seed, batch)
    # 4 ** 3 = 64 expansions at most per step: a beam of 64 never prunes, so it is exhaustive
    tokens, scores = beam_search(step, batch, beam_width=64, max_len=max_len, bos_id=BOS, eos_id=EOS,
                                 pad_id=PAD, alpha=alpha, kind=kind, return_scores=True)
    for s in range(batch):
        best = max(all_hypotheses(vocab, max_len),
                   key=lambda h: log_prob(table, s, h) / length_penalty(len(h), alpha=alpha, kind=kind))
        want = log_prob(table, s, best) / length_penalty(len(best), alpha=alpha, kind=kind)
        # float64 sums of at most 3 log-probabilities: 1e-12 is far above rounding
        assert scores[s].item() == pytest.approx(want, abs=1e-12)
        assert tokens[s, 1:1 + len(best)].tolist() == best


def test_a_beam_of_two_beats_greedy_where_the_first_word_misleads():
    # first word: 3 (p=0.6) or 4 (p=0.4); after 3 every continuation is unlikely, after 4 <eos> is sure
    first = torch.log(torch.tensor([1e-9, 1e-9, 1e-9, 0.6, 0.4]))
    after3 = torch.log(torch.tensor([0.25, 0.25, 0.0, 0.25, 0.25]).clamp_min(1e-12))
    after4 = torch.log(torch.tensor([1e-9, 1.0, 1e-9, 1e-9, 1e-9]))

    def step(prefixes, sentence):
        if prefixes.shape[1] == 1:
            return first.expand(len(prefixes), -1)
        return torch.stack([after4 if p[1] == 4 else after3 for p in prefixes])
    greedy_out = beam_search(step, 1, beam_width=1, max_len=2, bos_id=BOS, eos_id=EOS, pad_id=PAD, alpha=0.0)
    beam_out = beam_search(step, 1, beam_width=2, max_len=2, bos_id=BOS, eos_id=EOS, pad_id=PAD, alpha=0.0)
    assert greedy_out[0].tolist()[:2] == [BOS, 3]
    assert beam_out[0].tolist() == [BOS, 4, EOS]


def test_length_penalty_values():
    assert length_penalty(1, alpha=0.6) == pytest.approx(1.0)            # (5 + 1) / 6 = 1
    assert length_penalty(7, alpha=1.0) == pytest.approx(2.0)            # (5 + 7) / 6
    assert length_penalty(9, alpha=0.5, kind="length") == pytest.approx(3.0)
    assert length_penalty(13, alpha=0.0, kind="length") == 1.0
    assert math.isclose(length_penalty(torch.tensor(7.0), alpha=1.0).item(), 2.0)


@pytest.mark.parametrize("kwargs,message", [
    ({"beam_width": 0}, "beam_width"),
    ({"max_len": 0}, "max_len"),
    ({"alpha": -0.5}, "alpha must be >= 0"),
    ({"kind": "average"}, "kind must be one of"),
])
def test_bad_options_are_named(kwargs, message):
    step, _ = table_model(4, 3, 0)
    options = {"beam_width": 2, "max_len": 3, "bos_id": BOS, "eos_id": EOS} | kwargs
    with pytest.raises(ValueError, match=message):
        beam_search(step, 1, **options)


def test_a_step_that_returns_the_wrong_rows_is_named():
    with pytest.raises(ValueError, match="step returned 3 rows for 1 prefixes"):
        beam_search(lambda p, s: torch.zeros(3, 5), 1, beam_width=2, max_len=3, bos_id=BOS, eos_id=EOS)


@given(seed=st.integers(0, 10_000), vocab=st.integers(3, 6), max_len=st.integers(1, 6),
       beam_width=st.integers(1, 4), alpha=st.sampled_from([0.0, 0.6, 2.0]))
def test_running_to_the_cap_never_lowers_the_score(seed, vocab, max_len, beam_width, alpha):
    # the same pruning up to the step where the early rule stops, then more finished hypotheses:
    # the maximum over a superset (exact in float64: the same sums in the same order)
    step, _ = table_model(vocab, max_len, seed, 3)
    options = {"beam_width": beam_width, "max_len": max_len, "bos_id": BOS, "eos_id": EOS, "pad_id": PAD,
               "alpha": alpha, "return_scores": True}
    _, early = beam_search(step, 3, **options)
    _, to_cap = beam_search(step, 3, stop_early=False, **options)
    assert (to_cap >= early).all()


def test_running_to_the_cap_finds_a_longer_hypothesis_the_early_rule_misses():
    # step 1: <eos> (p=0.52) or word 3 (p=0.48); after 3, <eos> is sure. With k = 1 the early rule stops
    # at "<eos>": log 0.52 / lp(1) = -0.65; run on, "3 <eos>" scores log 0.48 / (7/6)^2 = -0.54 (alpha = 2).
    first = torch.log(torch.tensor([1e-12, 0.52, 1e-12, 0.48]))
    after3 = torch.log(torch.tensor([1e-12, 1.0, 1e-12, 1e-12]))

    def step(prefixes, sentence):
        return (first if prefixes.shape[1] == 1 else after3).expand(len(prefixes), -1)
    options = {"beam_width": 1, "max_len": 3, "bos_id": BOS, "eos_id": EOS, "pad_id": PAD, "alpha": 2.0}
    assert beam_search(step, 1, **options)[0].tolist()[:2] == [BOS, EOS]
    assert beam_search(step, 1, stop_early=False, **options)[0].tolist() == [BOS, 3, EOS]
