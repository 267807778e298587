"""Public-domain texts shipped with the book, as character-level training data.

The texts live in ``attnbook/data/texts/`` (see the README there for each one's source and
licence). A ``CharVocab`` maps characters to integer ids; ``text_windows`` draws seeded
batches of (input, next-character target) windows for a language model.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..attention._checks import check_positive_int

Tensor = torch.Tensor
TEXTS = Path(__file__).resolve().parent / "texts"
ALICE = "alice-chapters-1-3.txt"


def load_text(name: str = ALICE) -> str:
    """The text of ``texts/<name>`` (UTF-8)."""
    path = TEXTS / name
    if not path.is_file():
        available = sorted(p.name for p in TEXTS.glob("*.txt"))
        raise ValueError(f"no text named {name!r}; available: {available}")
    return path.read_text(encoding="utf-8")


class CharVocab:
    """Characters <-> ids, ids in sorted character order (so the same text gives the same ids)."""

    def __init__(self, text: str):
        if not text:
            raise ValueError("CharVocab needs a non-empty text")
        self.chars = sorted(set(text))
        self.index = {c: i for i, c in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> Tensor:
        unknown = sorted(set(text) - set(self.index))
        if unknown:
            raise ValueError(f"characters not in the vocabulary: {unknown}")
        return torch.tensor([self.index[c] for c in text], dtype=torch.long)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


# --8<-- [start:windows]
def text_windows(ids: Tensor, batch: int, length: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """A batch of random windows: inputs ``ids[s : s+length]``, targets ``ids[s+1 : s+length+1]``.

    Both are ``(batch, length)``; target t is the character that *follows* input t, so a
    model that sees input t+1 when predicting target t is reading the answer.
    """
    check_positive_int("batch", batch)
    check_positive_int("length", length)
    if ids.dim() != 1 or ids.numel() < length + 1:
        raise ValueError(f"ids must be 1-D with at least length+1={length + 1} entries, got {tuple(ids.shape)}")
    starts = torch.randint(0, ids.numel() - length, (batch,), generator=generator)
    offsets = torch.arange(length)
    inputs = ids[starts[:, None] + offsets]        # (batch, length)
    targets = ids[starts[:, None] + offsets + 1]   # (batch, length): the next character
    return inputs, targets
# --8<-- [end:windows]
