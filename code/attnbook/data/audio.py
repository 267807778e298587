"""Synthesised touch-tone (DTMF) audio whose content is known, and its spectrogram.

A telephone keypad sends each key as the sum of two sine waves, one from a group of
four "row" frequencies and one from a group of "column" frequencies (dual-tone
multi-frequency signalling; the frequencies are ITU-T Recommendation Q.23). This module
synthesises strings of digits with timing jitter and noise, remembers exactly where
each tone starts and ends, and computes the log-power spectrogram a model reads.

Layout: waveforms are ``(samples,)`` or ``(batch, samples)`` float32; spectrograms are
``(..., frames, bins)`` — time first, like a sequence of tokens, so that frame t is the
t-th "source token" of an encoder.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

Tensor = torch.Tensor

# --8<-- [start:dtmf]
#: Row (low-group) and column (high-group) frequencies in Hz, ITU-T Q.23.
ROW_HZ = (697.0, 770.0, 852.0, 941.0)
COLUMN_HZ = (1209.0, 1336.0, 1477.0)
#: The keypad: KEYPAD[r][c] is the key sounded by ROW_HZ[r] + COLUMN_HZ[c].
KEYPAD = ("123", "456", "789", "*0#")
KEYS = "".join(KEYPAD)


def dtmf_frequencies(key: str) -> tuple[float, float]:
    """(row Hz, column Hz) of a keypad key, e.g. ``"5" -> (770.0, 1336.0)``."""
    for r, row in enumerate(KEYPAD):
        if isinstance(key, str) and len(key) == 1 and key in row:
            return ROW_HZ[r], COLUMN_HZ[row.index(key)]
    raise ValueError(f"key must be one of {KEYS!r}, got {key!r}")


def dtmf_tone(key: str, num_samples: int, *, sample_rate: int = 8000, amplitude: float = 0.5,
              phases: tuple[float, float] = (0.0, 0.0)) -> Tensor:
    """``amplitude · (sin(2π f_row t + φ_1) + sin(2π f_col t + φ_2))`` at t = n / sample_rate.

    Returns float32 (num_samples,). Both frequencies must lie below the Nyquist
    frequency sample_rate / 2.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples}")
    f_row, f_col = dtmf_frequencies(key)
    if sample_rate <= 2 * f_col:
        raise ValueError(f"sample_rate={sample_rate} Hz cannot represent {f_col} Hz "
                         f"(it must exceed {2 * f_col:g} Hz)")
    t = torch.arange(num_samples, dtype=torch.float64) / sample_rate
    wave = (torch.sin(2 * math.pi * f_row * t + phases[0])
            + torch.sin(2 * math.pi * f_col * t + phases[1]))
    return (amplitude * wave).float()
# --8<-- [end:dtmf]


@dataclass
class DtmfUtterance:
    """One synthesised string: the waveform, its keys, and each tone's [start, end) sample."""

    wave: Tensor                          # (samples,) float32
    keys: str                             # e.g. "3071"
    segments: list[tuple[int, int]]       # one (start, end) sample range per key


# --8<-- [start:utterance]
def dtmf_utterance(keys: str, *, generator: torch.Generator, sample_rate: int = 8000,
                   total_samples: int = 5600, tone_ms: tuple[float, float] = (40.0, 70.0),
                   gap_ms: tuple[float, float] = (25.0, 60.0), snr_db: float = 10.0) -> DtmfUtterance:
    """Keys sounded one after another with random timing, loudness, phase and noise.

    Each tone lasts a uniform random duration in ``tone_ms``, each silence before a tone
    one in ``gap_ms``; the first tone starts after a random lead-in of up to one gap.
    Each tone gets a random amplitude in [0.3, 0.7] and random phases. White Gaussian
    noise is added at ``snr_db`` decibels below the mean power of an amplitude-0.5 tone.
    The string must fit in ``total_samples`` (ValueError otherwise).
    """
    if not keys:
        raise ValueError("keys must hold at least one key")

    def uniform(low, high):
        return low + (high - low) * torch.rand((), generator=generator, dtype=torch.float64).item()

    wave = torch.zeros(total_samples, dtype=torch.float32)
    segments, position = [], int(uniform(0.0, gap_ms[1]) * sample_rate / 1000)
    for i, key in enumerate(keys):
        if i > 0:
            position += int(uniform(*gap_ms) * sample_rate / 1000)
        length = int(uniform(*tone_ms) * sample_rate / 1000)
        if position + length > total_samples:
            raise ValueError(f"{len(keys)} keys do not fit in total_samples={total_samples}; "
                             f"raise total_samples or shorten tone_ms / gap_ms")
        phases = (uniform(0, 2 * math.pi), uniform(0, 2 * math.pi))
        wave[position:position + length] = dtmf_tone(key, length, sample_rate=sample_rate,
                                                     amplitude=uniform(0.3, 0.7), phases=phases)
        segments.append((position, position + length))
        position += length
    # a tone of amplitude a has mean power a²/2 per sine, a² in all: 0.25 at a = 0.5
    noise_std = math.sqrt(0.25 / 10 ** (snr_db / 10))
    wave += noise_std * torch.randn(total_samples, generator=generator)
    return DtmfUtterance(wave, keys, segments)
# --8<-- [end:utterance]


# --8<-- [start:spectrogram]
def power_spectrogram(wave: Tensor, *, n_fft: int = 256, hop: int = 80) -> Tensor:
    """|STFT|² of ``wave`` (..., samples) with a periodic Hann window: (..., frames, n_fft//2 + 1).

    Frame t covers samples [t·hop, t·hop + n_fft) (no padding, so frames = 1 + (samples -
    n_fft) // hop); bin k is the frequency k · sample_rate / n_fft:

        P[t, k] = |Σ_n w[n] x[t·hop + n] e^{-2πi k n / n_fft}|².
    """
    if not isinstance(wave, torch.Tensor) or not wave.is_floating_point():
        raise TypeError(f"wave must be a floating-point torch.Tensor, got {type(wave).__name__}")
    if n_fft < 2 or hop < 1:
        raise ValueError(f"n_fft must be >= 2 and hop >= 1, got n_fft={n_fft}, hop={hop}")
    if wave.shape[-1] < n_fft:
        raise ValueError(f"wave has {wave.shape[-1]} samples, fewer than n_fft={n_fft}")
    batch_shape = wave.shape[:-1]
    flat = wave.reshape(-1, wave.shape[-1])                       # (batch, samples)
    window = torch.hann_window(n_fft, periodic=True, dtype=wave.dtype, device=wave.device)
    spectrum = torch.stft(flat, n_fft, hop_length=hop, window=window, center=False,
                          return_complex=True)                    # (batch, bins, frames)
    power = spectrum.abs().pow(2).transpose(1, 2)                 # (batch, frames, bins)
    return power.reshape(*batch_shape, *power.shape[1:])


def log_spectrogram(wave: Tensor, *, n_fft: int = 256, hop: int = 80, max_bin: int | None = None,
                    floor: float = 1e-4) -> Tensor:
    """log(P + floor) of ``power_spectrogram``, bins ``0 .. max_bin - 1`` kept: (..., frames, bins).

    The floor keeps silence finite (log 0 = -∞) and sets how much faint noise matters.
    """
    power = power_spectrogram(wave, n_fft=n_fft, hop=hop)
    if max_bin is not None:
        if not 1 <= max_bin <= power.shape[-1]:
            raise ValueError(f"max_bin must lie in 1 .. {power.shape[-1]}, got {max_bin}")
        power = power[..., :max_bin]
    return torch.log(power + floor)
# --8<-- [end:spectrogram]


def bin_frequencies(n_fft: int, *, sample_rate: int = 8000) -> Tensor:
    """The frequency in Hz of each bin of ``power_spectrogram``: k · sample_rate / n_fft, k = 0 .. n_fft/2.

    Returns float64 (n_fft // 2 + 1,). Bin k is *not* k Hz unless n_fft == sample_rate.
    """
    if n_fft < 2 or sample_rate < 1:
        raise ValueError(f"n_fft must be >= 2 and sample_rate >= 1, got n_fft={n_fft}, "
                         f"sample_rate={sample_rate}")
    return torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft


def frame_span(segment: tuple[int, int], *, n_fft: int, hop: int, touching: bool = False) -> tuple[int, int]:
    """The frames [first, last] of a tone lasting ``segment`` = [start, end) samples.

    By default the frames whose window centre t·hop + n_fft/2 lies inside the segment;
    with ``touching=True`` every frame whose window [t·hop, t·hop + n_fft) overlaps it.
    """
    start, end = segment
    if not 0 <= start < end:
        raise ValueError(f"segment must be (start, end) with 0 <= start < end, got {segment}")
    if touching:
        first = max(0, -((n_fft - 1 - start) // hop))       # ceil((start - n_fft + 1) / hop)
        return first, max(first, (end - 1) // hop)
    first = max(0, math.ceil((start - n_fft / 2) / hop))
    last = math.floor((end - 1 - n_fft / 2) / hop)
    return first, max(first, last)


# --8<-- [start:delay]
def delay_utterance(utterance: DtmfUtterance, samples: int) -> DtmfUtterance:
    """The same string started ``samples`` later: the wave rolled right, every segment shifted.

    The noise that rolls off the end comes back at the start; it is white noise of constant
    power, so the result is noise like any other. The tones must stay inside the wave
    (ValueError otherwise), so at most ``len(wave) - end of the last tone`` samples.
    """
    slack = utterance.wave.shape[-1] - utterance.segments[-1][1]
    if not 0 <= samples <= slack:
        raise ValueError(f"samples must lie in 0 .. {slack} (the silence after the last tone), "
                         f"got {samples}")
    return DtmfUtterance(torch.roll(utterance.wave, samples, dims=-1), utterance.keys,
                         [(start + samples, end + samples) for start, end in utterance.segments])
# --8<-- [end:delay]


@dataclass
class DtmfBatch:
    """A batch of utterances: spectrogram features and decoder targets."""

    features: Tensor                      # (batch, frames, bins)
    tgt_in: Tensor                        # (batch, 1 + max_keys): <bos> k_1 .. k_L <pad>..
    tgt_out: Tensor                       # (batch, 1 + max_keys): k_1 .. k_L <eos> -100..
    keys: list[str]
    segments: list[list[tuple[int, int]]]  # tone sample ranges per utterance


def dtmf_batch(batch_size: int, *, generator: torch.Generator, vocab, lengths=(3, 5),
               alphabet: str = "0123456789", n_fft: int = 256, hop: int = 80,
               max_bin: int = 64, displace: bool = False, **utterance_options) -> DtmfBatch:
    """``batch_size`` random strings of ``lengths[0] .. lengths[1]`` keys from ``alphabet``.

    ``vocab`` maps keys to ids (``vocab.encode``) and has ``bos_id``, ``eos_id``, ``pad_id``
    (e.g. ``attnbook.data.captions.DigitVocab``). Targets use -100 where nothing is predicted.
    With ``displace=True`` each string is then delayed by a uniform random number of
    samples, up to all the silence after its last tone (``delay_utterance``); the delays
    are drawn after all the strings, so the same generator seed gives the same strings,
    only moved later in time.
    """
    if lengths[0] < 1 or lengths[1] < lengths[0]:
        raise ValueError(f"lengths must be (low, high) with 1 <= low <= high, got {lengths}")
    utterances = []
    for _ in range(batch_size):
        length = int(torch.randint(lengths[0], lengths[1] + 1, (), generator=generator))
        picks = torch.randint(len(alphabet), (length,), generator=generator)
        keys = "".join(alphabet[i] for i in picks.tolist())
        utterances.append(dtmf_utterance(keys, generator=generator, **utterance_options))
    if displace:
        utterances = [delay_utterance(u, int(torch.randint(u.wave.shape[-1] - u.segments[-1][1] + 1, (),
                                                           generator=generator)))
                      for u in utterances]
    waves = torch.stack([u.wave for u in utterances])
    features = log_spectrogram(waves, n_fft=n_fft, hop=hop, max_bin=max_bin)
    tgt_in, tgt_out = vocab.teacher_forcing([u.keys for u in utterances], lengths[1])
    return DtmfBatch(features, tgt_in, tgt_out, [u.keys for u in utterances],
                     [u.segments for u in utterances])
