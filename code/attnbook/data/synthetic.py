"""Seeded toy tasks: small, fully specified problems whose solutions we know.

Every generator takes an explicit ``torch.Generator`` (so a seed reproduces the data
exactly) and returns CPU ``long`` tensors; the training loop moves them to the device.
Targets use ``IGNORE_INDEX`` (-100, the default ``ignore_index`` of ``F.cross_entropy``)
where a position has no answer.
"""
from __future__ import annotations

import string

import torch

from ..attention._checks import check_positive_int

Tensor = torch.Tensor

IGNORE_INDEX = -100


def _check_generator(generator: object) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    return generator


# --8<-- [start:partner]
def partner_task(batch: int, num_letters: int, num_digits: int, *,
                 generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Sequences in which each position must report two digits found in two different ways.

    A sequence has ``2 * num_letters`` tokens. Token i is a pair (symbol s_i, digit d_i):
    symbols ``0 .. L-1`` are the upper-case letters A, B, ..., symbols ``L .. 2L-1`` the
    lower-case ones, and every one of the 2L symbols occurs exactly once, in random order,
    so each letter has a *partner*: the same letter in the other case ('A' <-> 'a').
    Digits are uniform in ``0 .. num_digits-1``.

    Returns ``inputs`` of shape (batch, 2L, 2), where ``[..., 0]`` is the symbol and
    ``[..., 1]`` the digit, and ``targets`` of shape (batch, 2L, 2):

    * ``targets[:, i, 0]`` = d_{i-1}, the digit one step back (a job for position);
      ``IGNORE_INDEX`` at i = 0, which has no previous token;
    * ``targets[:, i, 1]`` = the digit of token i's partner (a job for content).
    """
    check_positive_int("batch", batch)
    check_positive_int("num_letters", num_letters)
    check_positive_int("num_digits", num_digits)
    _check_generator(generator)
    seq_len = 2 * num_letters
    # An independent random order of the 2L symbols for every sequence.
    symbols = torch.rand(batch, seq_len, generator=generator).argsort(dim=-1)   # (batch, seq)
    digits = torch.randint(num_digits, (batch, seq_len), generator=generator)  # (batch, seq)
    previous = torch.full_like(digits, IGNORE_INDEX)
    previous[:, 1:] = digits[:, :-1]
    partner_digit = digits.gather(1, partner_positions(symbols, num_letters))
    inputs = torch.stack([symbols, digits], dim=-1)            # (batch, seq, 2)
    targets = torch.stack([previous, partner_digit], dim=-1)   # (batch, seq, 2)
    return inputs, targets
# --8<-- [end:partner]


def partner_positions(symbols: Tensor, num_letters: int) -> Tensor:
    """For each position, the position of its partner symbol; (batch, 2L) -> (batch, 2L).

    ``symbols`` must hold each of the 2L symbols exactly once per row (as ``partner_task``
    makes them); the partner of symbol s is ``(s + L) mod 2L``.
    """
    seq_len = 2 * num_letters
    if symbols.dim() != 2 or symbols.shape[-1] != seq_len:
        raise ValueError(f"symbols must have shape (batch, 2 * num_letters = {seq_len}), "
                         f"got {tuple(symbols.shape)}")
    position_of = symbols.argsort(dim=-1)          # position_of[b, s] = where symbol s sits
    partner_symbol = (symbols + num_letters) % seq_len
    return position_of.gather(1, partner_symbol)


def partner_labels(inputs: Tensor, num_letters: int) -> list[str]:
    """Readable tokens of one sequence: inputs (2L, 2) -> ['C7', 'a2', ...]."""
    if inputs.dim() != 2 or inputs.shape[-1] != 2:
        raise ValueError(f"inputs must have shape (seq, 2) for one sequence, "
                         f"got {tuple(inputs.shape)}")
    if num_letters > 26:
        raise ValueError(f"num_letters must be <= 26 to be written as letters, got {num_letters}")
    labels = []
    for symbol, digit in inputs.tolist():
        letter = string.ascii_uppercase[symbol] if symbol < num_letters else \
            string.ascii_lowercase[symbol - num_letters]
        labels.append(f"{letter}{digit}")
    return labels


# --8<-- [start:reversal]
def reversal_task(batch: int, length: int, vocab_size: int, *,
                  generator: torch.Generator) -> tuple[tuple[Tensor, Tensor], Tensor]:
    """Reverse a sequence: the toy translation task of an encoder-decoder.

    ``source`` is (batch, length) with tokens uniform in ``0 .. vocab_size-1``;
    ``target`` = ``source`` reversed. The decoder is trained with teacher forcing: its input
    is the target shifted right behind a begin-of-sequence token ``BOS = vocab_size``.
    Returns ``((source, decoder_input), target)``, all (batch, length).
    """
    check_positive_int("batch", batch)
    check_positive_int("length", length)
    check_positive_int("vocab_size", vocab_size)
    _check_generator(generator)
    source = torch.randint(vocab_size, (batch, length), generator=generator)
    target = source.flip(-1)
    bos = torch.full((batch, 1), vocab_size, dtype=target.dtype)
    decoder_input = torch.cat([bos, target[:, :-1]], dim=1)   # (batch, length)
    return (source, decoder_input), target
# --8<-- [end:reversal]
