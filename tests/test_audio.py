"""Touch-tone synthesis and the spectrogram (attnbook.data.audio), and the frame front end."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbook.data.audio import (
    bin_frequencies,
    delay_utterance,
    dtmf_batch,
    COLUMN_HZ,
    KEYS,
    ROW_HZ,
    dtmf_frequencies,
    dtmf_tone,
    dtmf_utterance,
    frame_span,
    log_spectrogram,
    power_spectrogram,
)
from attnbook.data.captions import DigitVocab
from attnbook.models.frontends import FeatureEncoderDecoder, FrameEmbedding, cross_attention_weights
from attnbook.models.transformer import greedy_decode


def test_the_keypad_follows_the_itu_table():
    assert dtmf_frequencies("1") == (697.0, 1209.0)
    assert dtmf_frequencies("5") == (770.0, 1336.0)
    assert dtmf_frequencies("0") == (941.0, 1336.0)
    assert dtmf_frequencies("#") == (941.0, 1477.0)
    assert {dtmf_frequencies(k) for k in KEYS} == {(r, c) for r in ROW_HZ for c in COLUMN_HZ}


def test_a_tone_is_the_sum_of_its_two_sines():
    n = np.arange(400) / 8000
    expected = 0.5 * (np.sin(2 * np.pi * 852 * n) + np.sin(2 * np.pi * 1477 * n))
    # float32 rounding of values of size <= 1: 1e-6
    np.testing.assert_allclose(dtmf_tone("9", 400).numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("key", list(KEYS))
def test_the_spectrum_peaks_at_the_keys_two_frequencies(key):
    # 16000 samples at 8 kHz with n_fft = 16000: bins are 0.5 Hz apart and every DTMF
    # frequency is a whole number of Hz, so each sine falls exactly on bin 2 f (an analytic
    # check). Bin k is then NOT k Hz: reading the axis as "bin = Hz" fails this test.
    wave = dtmf_tone(key, 16000).double()
    power = power_spectrogram(wave, n_fft=16000, hop=16000)[0]
    top_two = sorted(torch.topk(power, 2).indices.tolist())
    hz = bin_frequencies(16000, sample_rate=8000)
    assert [hz[k].item() for k in top_two] == list(dtmf_frequencies(key))
    assert top_two == [2 * int(f) for f in dtmf_frequencies(key)]


def test_bin_frequencies_are_k_fs_over_n():
    hz = bin_frequencies(256, sample_rate=8000)
    assert hz.shape == (129,) and hz[1].item() == 31.25 and hz[-1].item() == 4000.0   # Nyquist last


def test_spectrogram_matches_a_direct_dft():
    torch.manual_seed(0)
    wave = torch.randn(2, 300, dtype=torch.float64)
    n_fft, hop = 64, 20
    power = power_spectrogram(wave, n_fft=n_fft, hop=hop)
    frames = 1 + (300 - n_fft) // hop
    assert power.shape == (2, frames, n_fft // 2 + 1)
    n = np.arange(n_fft)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)          # periodic Hann
    dft = np.exp(-2j * np.pi * np.outer(np.arange(n_fft // 2 + 1), n) / n_fft)
    for b in range(2):
        for t in range(frames):
            segment = wave[b, t * hop:t * hop + n_fft].numpy() * window
            # float64 throughout; FFT against matrix DFT agree to ~1e-12 relative
            np.testing.assert_allclose(power[b, t].numpy(), np.abs(dft @ segment) ** 2, rtol=1e-9, atol=1e-9)


@settings(max_examples=20, deadline=None)
@given(st.integers(8, 64).map(lambda x: 2 * x), st.integers(0, 10_000))
def test_parseval_holds_frame_by_frame(n_fft, seed):
    # Σ_k |X_k|² over all n_fft bins = n_fft · Σ_n (w x)²; the one-sided spectrum counts the
    # bins 1 .. n_fft/2 - 1 twice. float64: relative error ~1e-12.
    wave = torch.randn(n_fft, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    power = power_spectrogram(wave, n_fft=n_fft, hop=n_fft)[0]
    two_sided = power[0] + power[-1] + 2 * power[1:-1].sum()
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    assert math.isclose(two_sided.item(), n_fft * (window * wave).pow(2).sum().item(), rel_tol=1e-9)


def test_log_spectrogram_keeps_the_asked_bins():
    wave = torch.zeros(3, 1000)
    spec = log_spectrogram(wave, n_fft=128, hop=50, max_bin=20)
    assert spec.shape == (3, 1 + (1000 - 128) // 50, 20)
    assert torch.allclose(spec, torch.full_like(spec, math.log(1e-4)))   # silence sits at the floor


def test_utterance_segments_hold_the_tones_and_do_not_overlap():
    u = dtmf_utterance("31415", generator=torch.Generator().manual_seed(0), snr_db=200.0)
    assert len(u.segments) == 5
    for (s0, e0), (s1, _) in zip(u.segments, u.segments[1:]):
        assert s0 < e0 <= s1
    outside = torch.ones_like(u.wave, dtype=torch.bool)
    for s, e in u.segments:
        outside[s:e] = False
    assert u.wave[outside].abs().max() < 1e-6            # 200 dB SNR: silence between tones


def test_frame_span_lies_inside_the_segment():
    first, last = frame_span((800, 1360), n_fft=256, hop=80)
    assert 800 <= first * 80 + 128 and last * 80 + 128 < 1360                  # centres inside
    assert not 800 <= (first - 1) * 80 + 128 and not (last + 1) * 80 + 128 < 1360


def test_touching_frames_are_exactly_the_windows_that_overlap():
    for segment in [(0, 100), (800, 1360), (803, 1001), (5000, 5600)]:
        first, last = frame_span(segment, n_fft=256, hop=80, touching=True)
        overlaps = [t for t in range(100) if t * 80 < segment[1] and t * 80 + 256 > segment[0]]
        assert (first, last) == (overlaps[0], overlaps[-1])


def test_a_delayed_utterance_is_the_same_string_later():
    u = dtmf_utterance("907", generator=torch.Generator().manual_seed(4), snr_db=200.0)
    slack = len(u.wave) - u.segments[-1][1]
    late = delay_utterance(u, slack)
    assert late.keys == u.keys
    assert late.segments == [(s + slack, e + slack) for s, e in u.segments]
    for (s, e), (s2, e2) in zip(u.segments, late.segments):
        assert torch.equal(late.wave[s2:e2], u.wave[s:e])                  # each tone, moved
    assert torch.equal(delay_utterance(u, 0).wave, u.wave)


def test_a_displaced_batch_holds_the_same_strings_moved_later():
    options = dict(vocab=DigitVocab(), lengths=(3, 5))
    usual = dtmf_batch(6, generator=torch.Generator().manual_seed(5), **options)
    moved = dtmf_batch(6, generator=torch.Generator().manual_seed(5), displace=True, **options)
    assert moved.keys == usual.keys and torch.equal(moved.tgt_out, usual.tgt_out)
    delays = [m[0][0] - u[0][0] for m, u in zip(moved.segments, usual.segments)]
    assert all(d >= 0 for d in delays) and any(d > 0 for d in delays)
    for m, u, d in zip(moved.segments, usual.segments, delays):
        assert m == [(s + d, e + d) for s, e in u] and m[-1][1] <= 5600


@pytest.mark.parametrize("bad, message", [
    (lambda: dtmf_frequencies("A"), "key must be one of"),
    (lambda: bin_frequencies(1), "n_fft must be"),
    (lambda: delay_utterance(dtmf_utterance("1", generator=torch.Generator(), total_samples=600), 300),
     "samples must lie in"),
    (lambda: dtmf_tone("1", 0), "num_samples"),
    (lambda: dtmf_tone("1", 10, sample_rate=2000), "sample_rate=2000"),
    (lambda: dtmf_utterance("1234567890", generator=torch.Generator(), total_samples=2000), "do not fit"),
    (lambda: dtmf_utterance("", generator=torch.Generator()), "at least one key"),
    (lambda: power_spectrogram(torch.zeros(100), n_fft=256), "fewer than n_fft"),
    (lambda: power_spectrogram(torch.zeros(300), n_fft=256, hop=0), "hop"),
    (lambda: log_spectrogram(torch.zeros(300), n_fft=256, max_bin=500), "max_bin"),
    (lambda: frame_span((10, 10), n_fft=256, hop=80), "segment"),
])
def test_bad_input_is_named(bad, message):
    with pytest.raises(ValueError, match=message):
        bad()


def test_integer_waves_are_refused():
    with pytest.raises(TypeError, match="floating-point"):
        power_spectrogram(torch.zeros(300, dtype=torch.long))


def tiny_model():
    torch.manual_seed(0)
    return FeatureEncoderDecoder(FrameEmbedding(12, 16), len(DigitVocab()), d_model=16, num_heads=2,
                                 num_layers=2, d_ff=32, dropout=0.0, norm_first=True)


def test_frame_model_gives_logits_and_decodes():
    model = tiny_model().eval()
    frames, tgt_in = torch.randn(3, 20, 12), torch.ones(3, 4, dtype=torch.long)
    assert model(frames, tgt_in).shape == (3, 4, len(DigitVocab()))
    assert greedy_decode(model, frames, 5, bos_id=1).shape == (3, 6)


def test_cross_attention_weights_are_distributions_over_frames():
    model = tiny_model()
    frames, tgt_in = torch.randn(3, 20, 12), torch.ones(3, 4, dtype=torch.long)
    weights = cross_attention_weights(model, frames, tgt_in)
    assert weights.shape == (3, 2, 2, 4, 20)          # (batch, layers, heads, tgt_len, src_len)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 2, 2, 4))
    # the hooks are gone afterwards: a plain forward returns no weights
    assert model.decoder.layers[0].cross_attn(torch.randn(1, 2, 16), torch.randn(1, 5, 16))[1] is None


def test_frame_embedding_rejects_the_wrong_number_of_bins():
    with pytest.raises(ValueError, match="num_bins=12"):
        FrameEmbedding(12, 16)(torch.randn(1, 5, 10))


def test_dtmf_batch_shapes_and_targets():
    vocab = DigitVocab()
    batch = dtmf_batch(4, generator=torch.Generator().manual_seed(0), vocab=vocab, lengths=(3, 5))
    frames = 1 + (5600 - 256) // 80
    assert batch.features.shape == (4, frames, 64)
    assert batch.tgt_in.shape == batch.tgt_out.shape == (4, 6)
    assert [vocab.decode(row) for row in batch.tgt_out] == batch.keys
    assert all(len(s) == len(k) for s, k in zip(batch.segments, batch.keys))
