"""The toy translation task: a seeded grammar with reordering and a known alignment."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbook.data import IGNORE_INDEX
from attnbook.data.translation import (
    TranslationTask,
    Vocab,
    alignment_error_rate,
    corpus_alignment_error_rate,
    links_from_attention,
)


@pytest.fixture(scope="module")
def task():
    return TranslationTask(seed=0)


def test_same_seed_gives_the_same_words_and_sentences(task):
    again = TranslationTask(seed=0)
    assert again.source_vocab.itos == task.source_vocab.itos
    assert again.target_vocab.itos == task.target_vocab.itos
    assert again.sample(20, 5) == task.sample(20, 5)


def test_another_seed_gives_other_words():
    assert TranslationTask(seed=1).source_vocab.itos != TranslationTask(seed=0).source_vocab.itos


def test_a_torch_generator_is_accepted_and_seeded(task):
    first = task.sample(5, torch.Generator().manual_seed(3))
    assert first == task.sample(5, torch.Generator().manual_seed(3))


def test_the_vocabulary_has_a_few_hundred_words(task):
    assert 100 <= len(task.source_vocab) <= 600
    assert 60 <= len(task.target_vocab) <= 600


@given(st.integers(3, 40), st.integers(0, 12), st.integers(0, 10_000))
@settings(max_examples=25, deadline=None)
def test_source_lengths_stay_in_range(min_len, extra, seed):
    max_len = min(40, min_len + extra)
    pairs = TranslationTask(seed=0).sample(4, seed, min_len=min_len, max_len=max_len)
    assert all(min_len <= len(p.source) <= max_len for p in pairs)


def test_every_target_token_has_exactly_one_valid_link(task):
    for pair in task.sample(200, 1):
        targets = sorted(j for _, j in pair.alignment)
        assert targets == list(range(len(pair.target)))
        assert all(0 <= i < len(pair.source) for i, _ in pair.alignment)


def test_every_source_word_is_translated(task):
    for pair in task.sample(200, 2):
        assert {i for i, _ in pair.alignment} == set(range(len(pair.source)))


def test_the_verb_moves_to_the_end_of_a_simple_clause(task):
    verbs = {w for w, _ in task.verbs} | {w + "ed" for w, _ in task.verbs}
    pairs = [p for p in task.sample(300, 3, max_len=12) if not {"that", "and", "but", "while"} & set(p.source)]
    without_pp = [p for p in pairs if not set(p.source) & {w for w, _ in task.prepositions}]
    assert without_pp, "the sample should hold simple clauses"
    for pair in without_pp:
        verb_position = next(i for i, w in enumerate(pair.source) if w in verbs)
        links_of_verb = [j for i, j in pair.alignment if i == verb_position]
        # the verb (and its tense particle) closes the target sentence
        assert max(links_of_verb) == len(pair.target) - 1
        assert verb_position < len(pair.source) - 1   # ... but not the source sentence


def test_the_alignment_is_not_monotone(task):
    crossing = 0
    for pair in task.sample(100, 4):
        ordered = [i for i, _ in sorted(pair.alignment, key=lambda link: link[1])]
        crossing += any(b < a for a, b in zip(ordered, ordered[1:]))
    assert crossing > 90


def test_a_plural_noun_becomes_two_target_tokens(task):
    plurals = {w + "s": t for w, t in task.nouns}
    seen = 0
    for pair in task.sample(100, 6):
        for i, word in enumerate(pair.source):
            if word in plurals:
                targets = sorted(j for src, j in pair.alignment if src == i)
                assert [pair.target[j] for j in targets] == [plurals[word], "ra"]
                seen += 1
    assert seen > 0


def test_vocab_round_trip_and_specials():
    vocab = Vocab(["b", "a", "b"])
    assert (vocab.pad_id, vocab.bos_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2, 3)
    ids = vocab.encode(["a", "b", "zzz"], bos=True, eos=True)
    assert ids == [1, 5, 4, 3, 2]   # first-seen order: "b" is 4, "a" is 5
    assert vocab.decode(ids + [4, 0]) == ["a", "b", "<unk>"]   # stops at <eos>


def test_batch_pads_and_shifts_the_target(task):
    pairs = task.sample(3, 7)
    b = task.batch(pairs)
    assert b.src_lengths.tolist() == [len(p.source) for p in pairs]
    assert b.src.shape == (3, max(len(p.source) for p in pairs))
    for row, pair in enumerate(pairs):
        n = len(pair.target)
        assert b.tgt_in[row, 0] == task.target_vocab.bos_id
        assert torch.equal(b.tgt_in[row, 1:n + 1], b.tgt_out[row, :n])   # teacher forcing shift
        assert b.tgt_out[row, n] == task.target_vocab.eos_id
        assert (b.tgt_out[row, n + 1:] == IGNORE_INDEX).all()
        assert (b.src[row, len(pair.source):] == task.source_vocab.pad_id).all()


def test_aer_of_the_true_alignment_is_zero_and_of_a_disjoint_one_is_one(task):
    pair = task.sample(1, 8)[0]
    assert alignment_error_rate(pair.alignment, pair.alignment) == 0.0
    shifted = [(i + len(pair.source), j) for i, j in pair.alignment]
    assert alignment_error_rate(shifted, pair.alignment) == 1.0


def test_aer_is_one_minus_f1():
    true = [(0, 0), (1, 1), (2, 2), (2, 3)]
    predicted = [(0, 0), (1, 1), (1, 2)]      # 2 right of 3 predicted, 2 of 4 true found
    precision, recall = 2 / 3, 2 / 4
    f1 = 2 * precision * recall / (precision + recall)
    assert alignment_error_rate(predicted, true) == pytest.approx(1 - f1, abs=1e-15)


def test_corpus_aer_sums_counts_before_dividing():
    true = [[(0, 0)], [(0, 0), (1, 1), (2, 2)]]
    predicted = [[(1, 0)], [(0, 0), (1, 1), (2, 2)]]
    assert corpus_alignment_error_rate(predicted, true) == pytest.approx(1 - 2 * 3 / 8)


def test_links_from_attention_take_the_argmax_of_each_row():
    weights = torch.tensor([[0.1, 0.7, 0.2, 0.0], [0.6, 0.2, 0.2, 0.0], [0.3, 0.3, 0.4, 0.0]])
    assert links_from_attention(weights) == [(1, 0), (0, 1), (2, 2)]
    assert links_from_attention(weights, tgt_len=2, src_len=3) == [(1, 0), (0, 1)]


def test_bad_arguments_raise_named_errors(task):
    with pytest.raises(ValueError, match="max_len=3 is smaller than min_len=5"):
        task.sample(2, 0, min_len=5, max_len=3)
    with pytest.raises(ValueError, match="min_len must be at least 3"):
        task.sample(2, 0, min_len=2)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        task.sample(0, 0)
    with pytest.raises(TypeError, match="generator must be"):
        task.sample(2, "seed")
    with pytest.raises(ValueError, match="num_nouns must be a positive integer"):
        TranslationTask(num_nouns=0)
    with pytest.raises(ValueError, match="both alignments are empty"):
        alignment_error_rate([], [])
    with pytest.raises(ValueError, match="predicted_links must hold"):
        alignment_error_rate([(0, -1)], [(0, 0)])
    with pytest.raises(ValueError, match="weights must be"):
        links_from_attention(torch.ones(3))
    with pytest.raises(ValueError, match="pairs is empty"):
        task.batch([])


def test_the_benchmark_split_is_fixed_and_respects_its_bins():
    from attnbook.data.translation import (TEST_BINS, TRAIN_MAX_LEN, benchmark_data, benchmark_task,
                                           bucketed_batches)

    task = benchmark_task()
    train, test = benchmark_data(task, 50, 3)
    again = benchmark_data(benchmark_task(), 50, 3)
    assert (train, test) == again                       # chapters 3 and 7 see the same data
    assert all(3 <= len(p.source) <= TRAIN_MAX_LEN for p in train)
    assert list(test) == list(TEST_BINS)
    assert all(lo <= len(p.source) <= hi for (lo, hi), pairs in test.items() for p in pairs)
    batches = bucketed_batches(task, train, 16)
    assert [b.src.shape[0] for b in batches] == [16, 16, 16, 2]
    widths = [b.src.shape[1] for b in batches]
    assert widths == sorted(widths)                      # shortest sentences first
    with pytest.raises(ValueError, match="batch_size"):
        bucketed_batches(task, train, 0)
