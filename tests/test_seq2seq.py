"""The GRU encoder-decoder with each attention: shapes, padding, decoding, a little learning.

Models are tiny (hidden 8) so that each test takes milliseconds. Comparisons between a
padded and an unpadded batch allow 1e-6 in float32: the same maths, with sums over a
different number of exact zeros and different matmul shapes (so a different BLAS path).
"""
import pytest
import torch

from attnbook.data.translation import TranslationTask
from attnbook.models import ATTENTIONS, Seq2Seq
from attnbook.train import cross_entropy

BOS, EOS = 1, 2


def tiny(attention, seed=0, **kwargs):
    torch.manual_seed(seed)
    return Seq2Seq(13, 11, attention=attention, embed_dim=6, hidden_dim=8, half_window=2,
                   **kwargs).eval()


def batch_of(lengths, tgt_len=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(4, 13, (len(lengths), max(lengths)), generator=gen)
    for row, n in enumerate(lengths):
        src[row, n:] = 0
    tgt_in = torch.randint(3, 11, (len(lengths), tgt_len), generator=gen)
    tgt_in[:, 0] = BOS
    return src, torch.tensor(lengths), tgt_in


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_shapes(attention):
    src, lengths, tgt_in = batch_of([4, 6, 2])
    logits, weights = tiny(attention)(src, lengths, tgt_in)
    assert logits.shape == (3, 5, 11)
    if attention == "none":
        assert weights is None
    else:
        assert weights.shape == (3, 5, 6)


@pytest.mark.parametrize("attention", [a for a in ATTENTIONS if a != "none"])
def test_padded_source_positions_get_exactly_zero_weight(attention):
    src, lengths, tgt_in = batch_of([4, 6, 2])
    _, weights = tiny(attention)(src, lengths, tgt_in)
    for row, n in enumerate(lengths.tolist()):
        assert (weights[row, :, n:] == 0).all()


@pytest.mark.parametrize("attention", [a for a in ATTENTIONS if a not in ("none", "local-p")])
def test_global_attention_rows_sum_to_one(attention):
    src, lengths, tgt_in = batch_of([4, 6, 2])
    _, weights = tiny(attention)(src, lengths, tgt_in)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 5), rtol=0, atol=1e-6)


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_padding_the_batch_does_not_change_a_sentence(attention):
    model = tiny(attention)
    src, lengths, tgt_in = batch_of([4, 6, 2])
    alone_logits, alone_weights = model(src[2:, :2], lengths[2:], tgt_in[2:])
    logits, weights = model(src, lengths, tgt_in)
    torch.testing.assert_close(logits[2:], alone_logits, rtol=0, atol=1e-6)
    if weights is not None:
        torch.testing.assert_close(weights[2:, :, :2], alone_weights, rtol=0, atol=1e-6)


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_greedy_decoding_is_teacher_forcing_on_its_own_outputs(attention):
    model = tiny(attention, seed=1)
    src, lengths, _ = batch_of([4, 6, 2])
    tokens, weights = model.greedy_decode(src, lengths, max_len=7, bos_id=BOS, eos_id=EOS)
    assert tokens.shape[0] == 3 and tokens.shape[1] <= 7
    fed = torch.cat([torch.full((3, 1), BOS), tokens[:, :-1]], dim=1)
    logits, forced_weights = model(src, lengths, fed)
    predicted = logits.argmax(-1)
    for row in range(3):
        ended = (tokens[row] == EOS).nonzero()
        n = int(ended[0]) + 1 if len(ended) else tokens.shape[1]
        assert torch.equal(predicted[row, :n], tokens[row, :n])
        assert (tokens[row, n:] == 0).all()     # pad after <eos>
        if weights is not None:
            torch.testing.assert_close(weights[row, :n], forced_weights[row, :n], rtol=0, atol=1e-6)


@pytest.mark.parametrize("attention", ["dot", "general", "concat", "local-p"])
def test_precomputed_luong_step_equals_the_attention_module(attention):
    model = tiny(attention)
    src, lengths, _ = batch_of([4, 6, 2])
    memory = model.encode(src, lengths)
    hidden = torch.randn(3, 8, generator=torch.Generator().manual_seed(2))
    fast, fast_weights = model.luong_attention(hidden, memory)
    reference, reference_weights = model.attn(hidden, memory["states"], memory["mask"],
                                              return_weights=True)
    # float32, the same maths with the source projection hoisted out: rounding only
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-6)
    torch.testing.assert_close(fast_weights, reference_weights, rtol=0, atol=1e-6)


def test_decoding_stops_when_every_sentence_has_ended():
    model = tiny("general")
    with torch.no_grad():                 # make <eos> the only likely word
        model.out.bias.fill_(-10.0)
        model.out.bias[EOS] = 10.0
    src, lengths, _ = batch_of([3, 5])
    tokens, _ = model.greedy_decode(src, lengths, max_len=9, bos_id=BOS, eos_id=EOS)
    assert tokens.tolist() == [[EOS], [EOS]]


def test_bahdanau_uses_a_bidirectional_encoder_and_luong_does_not():
    assert tiny("bahdanau").encoder.rnn.bidirectional
    assert not tiny("general").encoder.rnn.bidirectional


def test_bahdanau_runs_with_a_unidirectional_encoder():
    src, lengths, tgt_in = batch_of([4, 6, 2])
    logits, weights = tiny("bahdanau", bidirectional=False)(src, lengths, tgt_in)
    assert logits.shape == (3, 5, 11) and weights.shape == (3, 5, 6)


@pytest.mark.parametrize("attention", ["general", "concat", "local-p"])
def test_luong_scores_accept_a_bidirectional_encoder(attention):
    model = tiny(attention, bidirectional=True)
    src, lengths, tgt_in = batch_of([4, 6, 2])
    memory = model.encode(src, lengths)
    assert memory["states"].shape == (3, 6, 16)          # [forward; backward], 2 x hidden
    hidden = torch.randn(3, 8, generator=torch.Generator().manual_seed(2))
    fast, _ = model.luong_attention(hidden, memory)
    reference = model.attn(hidden, memory["states"], memory["mask"])
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_a_few_steps_lower_the_loss(attention):
    task = TranslationTask(seed=0, num_nouns=5, num_adjectives=3, num_verbs=4, num_prepositions=2)
    data = task.batch(task.sample(16, 0, max_len=6))
    torch.manual_seed(0)
    model = Seq2Seq(len(task.source_vocab), len(task.target_vocab), attention=attention,
                    embed_dim=16, hidden_dim=16)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    losses = []
    for _ in range(25):
        logits, _ = model(data.src, data.src_lengths, data.tgt_in)
        loss = cross_entropy(logits, data.tgt_out)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


def test_bad_arguments_raise_named_errors():
    with pytest.raises(ValueError, match="attention must be one of"):
        Seq2Seq(10, 10, attention="luong")
    with pytest.raises(ValueError, match="attention='dot' needs"):
        Seq2Seq(10, 10, attention="dot", bidirectional=True)
    with pytest.raises(ValueError, match="hidden_dim must be a positive integer"):
        Seq2Seq(10, 10, hidden_dim=0)
    src, lengths, tgt_in = batch_of([4, 2])
    with pytest.raises(ValueError, match="src_lengths must lie in"):
        tiny("dot")(src, torch.tensor([5, 2]), tgt_in)
    with pytest.raises(ValueError, match="differ in batch size"):
        tiny("dot")(src, lengths, tgt_in[:1])
