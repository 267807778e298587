"""The decoder-only GPT (attnbook.models.gpt): cache, filters, sampling, a tiny overfit."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbook.models.gpt import GPT, GPTConfig, generate, sample_next, top_k_filter, top_p_filter
from attnbook.train import TrainConfig, train

VOCAB = 13


def _model(positions="learned", seed=0, dtype=torch.float64, **options):
    torch.manual_seed(seed)
    config = GPTConfig(VOCAB, max_len=24, d_model=16, num_heads=4, num_layers=2,
                       positions=positions, **options)
    return GPT(config, dtype=dtype).eval()


def _tokens(batch=2, seq=10, seed=1):
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


# --- KV cache ---------------------------------------------------------------------------

@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_cached_logits_equal_recomputed_logits_at_every_step(positions):
    model, tokens = _model(positions), _tokens()
    full = model(tokens)
    cache = model.new_cache()
    first = model(tokens[:, :3], cache)  # a 3-token prompt, then one token at a time
    steps = [first] + [model(tokens[:, t:t + 1], cache) for t in range(3, tokens.shape[1])]
    # float64: the cached path sums the same products over fewer, differently blocked
    # matmuls; rounding differences are ~1e-16 relative, 1e-12 leaves a wide margin.
    for t in range(3, tokens.shape[1]):
        torch.testing.assert_close(model(tokens[:, :t + 1])[:, -1], steps[t - 2][:, -1],
                                   atol=1e-12, rtol=0.0)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-12, rtol=0.0)
    assert len(cache) == tokens.shape[1]


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_generate_with_and_without_cache_agree(positions):
    model = _model(positions)
    prompt = _tokens(seq=4)
    with_cache = generate(model, prompt, 8, temperature=0.0)
    without = generate(model, prompt, 8, temperature=0.0, use_cache=False)
    assert torch.equal(with_cache, without)
    assert with_cache.shape == (2, 12) and torch.equal(with_cache[:, :4], prompt)


def test_rope_model_has_no_position_table_and_sees_order():
    model = _model("rope")
    assert model.position_embedding is None
    tokens = torch.tensor([[1, 2, 3, 4]])
    swapped = torch.tensor([[2, 1, 3, 4]])
    assert not torch.allclose(model(tokens)[:, -1], model(swapped)[:, -1])


def test_weight_tying():
    tied, untied = _model(), _model(tie_weights=False)
    assert tied.lm_head.weight is tied.token_embedding.weight
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(untied) - count(tied) == VOCAB * 16


def test_causal_future_tokens_do_not_change_earlier_logits():
    model, tokens = _model("rope"), _tokens()
    changed = tokens.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % VOCAB
    assert torch.equal(model(tokens)[:, :6], model(changed)[:, :6])


# --- filters and sampling ----------------------------------------------------------------

def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0], [0.0, -1.0, 2.0, 1.0, -2.0]])
    kept = torch.isfinite(top_k_filter(logits, 2))
    assert kept.tolist() == [[False, True, False, True, False], [False, False, True, True, False]]
    assert torch.isfinite(top_k_filter(logits, 10)).all()          # k > vocab keeps everything
    assert torch.equal(top_k_filter(logits, 2)[kept], logits[kept])  # kept logits untouched


def test_top_p_keeps_the_smallest_nucleus():
    # probabilities 0.5, 0.25, 0.125, 0.0625, 0.0625: exact in binary floating point
    probs = torch.tensor([0.0625, 0.5, 0.125, 0.25, 0.0625], dtype=torch.float64)
    logits = probs.log()[None]
    kept = lambda p: torch.isfinite(top_p_filter(logits, p))[0].tolist()  # noqa: E731
    assert kept(0.5) == [False, True, False, False, False]    # 0.5 alone reaches 0.5
    assert kept(0.6) == [False, True, False, True, False]     # 0.5 + 0.25
    assert kept(0.75) == [False, True, False, True, False]    # exactly 0.75 is enough
    assert kept(0.8) == [False, True, True, True, False]      # 0.5 + 0.25 + 0.125
    assert kept(0.01) == [False, True, False, False, False]   # the top token is always kept
    assert all(kept(1.0))
    # float32: the cumulative sum reaches exactly 1.0 after the first token (e^-30 is below
    # float32 resolution next to 1), yet p = 1 must keep every token of non-zero probability
    assert torch.isfinite(top_p_filter(torch.tensor([[30., 0, 0, 0]]), 1.0)).all()
    assert torch.isfinite(top_p_filter(torch.randn(5, 66, generator=torch.Generator().manual_seed(0)) * 5,
                                       1.0)).all()


logit_rows = st.lists(st.floats(-6.0, 6.0), min_size=2, max_size=12)


@settings(max_examples=60, deadline=None)
@given(logit_rows, st.floats(0.01, 1.0))
def test_top_p_keeps_a_minimal_set_of_the_likeliest_tokens(values, p):
    logits = torch.tensor(values, dtype=torch.float64)
    probs = torch.softmax(logits, dim=-1)
    kept = torch.isfinite(top_p_filter(logits, p))
    # float64 sums of <= 12 probabilities: rounding ~1e-15; 1e-12 only absorbs that
    assert probs[kept].sum() >= p - 1e-12                             # enough mass
    assert probs[kept].sum() - probs[kept].min() < p + 1e-12          # nothing superfluous
    if (~kept).any():
        assert probs[kept].min() >= probs[~kept].max()                # the likeliest ones


@settings(max_examples=60, deadline=None)
@given(logit_rows, st.integers(1, 12))
def test_top_k_keeps_everything_at_least_the_kth_largest(values, k):
    logits = torch.tensor(values, dtype=torch.float64)
    kept = torch.isfinite(top_k_filter(logits, k))
    kth = sorted(values, reverse=True)[min(k, len(values)) - 1]
    assert kept.tolist() == [v >= kth for v in values]
    assert kept.sum() >= min(k, len(values))


def test_temperature_zero_is_greedy_and_tiny_temperature_samples_the_argmax():
    model, prompt = _model(), _tokens(seq=3)
    greedy = generate(model, prompt, 10, temperature=0.0)
    logits = torch.randn(4, VOCAB, dtype=torch.float64)
    assert torch.equal(sample_next(logits, temperature=0.0), logits.argmax(-1))
    cold = generate(model, prompt, 10, temperature=1e-6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(cold, greedy)


def test_sampling_respects_the_filters():
    logits = torch.tensor([[0.0, 3.0, 2.0, 1.0]]).repeat(200, 1)
    tokens = sample_next(logits, top_k=2, generator=torch.Generator().manual_seed(0))
    assert set(tokens.tolist()) <= {1, 2} and len(set(tokens.tolist())) == 2


def test_generation_is_deterministic_under_a_seeded_generator():
    model, prompt = _model(dtype=torch.float32), _tokens(seq=3)
    runs = [generate(model, prompt, 12, temperature=1.0, top_k=5, top_p=0.9,
                     generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    other = generate(model, prompt, 12, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(runs[0], other)


# --- training -----------------------------------------------------------------------------

@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_tiny_gpt_overfits_a_short_string(positions):
    text = "attention is all you need"
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) for c in text])[None]
    torch.manual_seed(0)
    model = GPT(GPTConfig(len(chars), max_len=32, d_model=32, num_heads=2, num_layers=2,
                          positions=positions))
    history = train(model, lambda g: (ids[:, :-1], ids[:, 1:]),
                    TrainConfig(steps=60, lr=1e-2, warmup_steps=5, weight_decay=0.0), device="cpu")
    assert history.loss[0] > math.log(len(chars)) - 0.5 and history.loss[-1] < 0.1
    out = generate(model.eval(), ids[:, :1], len(text) - 1, temperature=0.0)
    assert "".join(chars[i] for i in out[0]) == text


# --- named errors --------------------------------------------------------------------------

def test_bad_arguments_raise_named_errors():
    with pytest.raises(ValueError, match="d_model=10 is not divisible by num_heads=4"):
        GPTConfig(VOCAB, d_model=10, num_heads=4)
    with pytest.raises(ValueError, match="positions must be one of"):
        GPTConfig(VOCAB, positions="alibi")
    with pytest.raises(ValueError, match="head_dim=3 must be even"):
        GPTConfig(VOCAB, d_model=12, num_heads=4, positions="rope")
    with pytest.raises(ValueError, match="positions up to 24 requested, but max_len=24"):
        _model()(torch.zeros(1, 25, dtype=torch.long))
    with pytest.raises(ValueError, match="exceeds max_len=24"):
        generate(_model(), _tokens(seq=20), 5)
    with pytest.raises(ValueError, match="top_p must be in"):
        top_p_filter(torch.zeros(1, 3), 0.0)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        top_k_filter(torch.zeros(1, 3), 0)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        sample_next(torch.zeros(1, 3), temperature=-1.0)


def test_save_and_load_gpt_round_trip(tmp_path):
    """A saved GPT loads with the same config, vocabulary and logits; a wider max_len keeps
    the trained position rows, so logits inside the old context are unchanged."""
    from attnbook.data.text import CharVocab
    from attnbook.models.gpt import load_gpt, save_gpt

    torch.manual_seed(0)
    vocab = CharVocab("hello world")
    model = GPT(GPTConfig(len(vocab), max_len=8, d_model=16, num_heads=2, num_layers=1)).eval()
    save_gpt(tmp_path / "m.pt", model, vocab, {"steps": 3})
    tokens = vocab.encode("hello w")[None]
    loaded, vocab2, meta = load_gpt(tmp_path / "m.pt")
    assert vocab2.chars == vocab.chars and meta == {"steps": 3} and loaded.config == model.config
    assert torch.equal(loaded(tokens), model(tokens))
    wide, _, _ = load_gpt(tmp_path / "m.pt", max_len=32)
    assert wide.config.max_len == 32
    torch.testing.assert_close(wide(tokens), model(tokens), rtol=0, atol=0)
    with pytest.raises(TypeError):
        load_gpt(tmp_path / "m.pt", no_such_field=1)
