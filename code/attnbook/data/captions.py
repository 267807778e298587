"""Images of digit strings to caption, and the small vocabulary both chapter-20 tasks share.

A "caption" here is the string of digits an image shows, read left to right: several
scikit-learn digits (8 x 8 pixels, ``attnbook.data.digits``) pasted side by side on a
wider canvas with random gaps between them. The decoder that writes the
caption must find each digit in turn: a toy, but one where the right answer and the
place each word comes from are both known.

Layout: images (batch, height, width) float32 in [0, 1]; token ids (batch, seq) long.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .digits import IMAGE_SIZE

Tensor = torch.Tensor
IGNORE_INDEX = -100

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


# --8<-- [start:vocab]
class DigitVocab:
    """Ids for ``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2 and the characters of ``alphabet`` 3, 4, ..."""

    pad_id, bos_id, eos_id = 0, 1, 2

    def __init__(self, alphabet: str = "0123456789"):
        if len(set(alphabet)) != len(alphabet) or not alphabet:
            raise ValueError(f"alphabet must be non-empty without repeats, got {alphabet!r}")
        self.alphabet = alphabet

    def __len__(self) -> int:
        return 3 + len(self.alphabet)

    def encode(self, text: str) -> list[int]:
        bad = [c for c in text if c not in self.alphabet]
        if bad:
            raise ValueError(f"characters {bad!r} are not in the alphabet {self.alphabet!r}")
        return [3 + self.alphabet.index(c) for c in text]

    def decode(self, ids, *, strict: bool = False) -> str:
        """Characters up to the first ``<eos>``; ``<bos>`` and ``<pad>`` are skipped.

        With ``strict=True`` they are not skipped but written as ``"?"``, so that an output
        like ``<bos> 2 <pad> 3 <eos>`` decodes to ``"?2?3"``, never to a correct ``"23"``
        (for scoring a model's output; pass it without the leading ``<bos>``).
        """
        out = []
        for i in (int(i) for i in ids):
            if i == self.eos_id:
                break
            if i >= 3:
                out.append(self.alphabet[i - 3])
            elif strict:
                out.append("?")
        return "".join(out)

    def teacher_forcing(self, texts: list[str], max_len: int) -> tuple[Tensor, Tensor]:
        """(tgt_in, tgt_out), both (batch, 1 + max_len): ``<bos> c_1 .. c_L <pad>..`` and
        ``c_1 .. c_L <eos> -100..`` (-100: no loss)."""
        tgt_in = torch.full((len(texts), 1 + max_len), self.pad_id, dtype=torch.long)
        tgt_out = torch.full((len(texts), 1 + max_len), IGNORE_INDEX, dtype=torch.long)
        for row, text in enumerate(texts):
            if len(text) > max_len:
                raise ValueError(f"text {text!r} is longer than max_len={max_len}")
            ids = self.encode(text)
            tgt_in[row, :1 + len(ids)] = torch.tensor([self.bos_id] + ids)
            tgt_out[row, :1 + len(ids)] = torch.tensor(ids + [self.eos_id])
        return tgt_in, tgt_out
# --8<-- [end:vocab]


@dataclass
class CaptionBatch:
    images: Tensor                         # (batch, height, width)
    tgt_in: Tensor                         # (batch, 1 + max_digits)
    tgt_out: Tensor                        # (batch, 1 + max_digits)
    captions: list[str]                    # e.g. "4071"
    boxes: list[list[tuple[int, int]]]     # each digit's [left, right) columns


# --8<-- [start:strings]
def digit_string_images(images: Tensor, labels: Tensor, count: int, *, generator: torch.Generator,
                        lengths: tuple[int, int] = (3, 5), width: int = 48, height: int = 8,
                        max_gap: int = 2, jitter: bool = False) -> tuple[Tensor, list[str], list[list[tuple[int, int]]]]:
    """``count`` canvases (count, height, width), each with 3-5 random digits pasted left to right.

    ``images`` (N, 8, 8) and ``labels`` (N,) are the digits to draw from (a training or a
    test part: strings built from the test part contain only test digits). Digits are
    separated by random gaps of 0 .. ``max_gap`` pixels; the string starts at the left
    edge and at the top, or, with ``jitter=True``, at a random column with each digit at
    its own random height (a harder task: see the chapter's exercises). Returns the
    canvases, the captions (strings of digits) and each digit's [left, right) columns.
    """
    if images.dim() != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"images must be (N, {IMAGE_SIZE}, {IMAGE_SIZE}), got {tuple(images.shape)}")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"labels must be ({images.shape[0]},), got {tuple(labels.shape)}")
    if not 1 <= lengths[0] <= lengths[1]:
        raise ValueError(f"lengths must be (low, high) with 1 <= low <= high, got {lengths}")
    needed = lengths[1] * IMAGE_SIZE + (lengths[1] - 1) * max_gap
    if width < needed or height < IMAGE_SIZE:
        raise ValueError(f"a canvas of {height} x {width} cannot hold {lengths[1]} digits with gaps "
                         f"of up to {max_gap} (needs height >= {IMAGE_SIZE}, width >= {needed})")
    canvases = torch.zeros(count, height, width)
    captions, boxes = [], []
    for row in range(count):
        length = int(torch.randint(lengths[0], lengths[1] + 1, (), generator=generator))
        picks = torch.randint(len(images), (length,), generator=generator)
        gaps = torch.randint(max_gap + 1, (length,), generator=generator)
        gaps[0] = 0
        span = length * IMAGE_SIZE + int(gaps.sum())
        left = int(torch.randint(width - span + 1, (), generator=generator)) if jitter else 0
        spots = []
        for pick, gap in zip(picks.tolist(), gaps.tolist()):
            left += gap
            top = int(torch.randint(height - IMAGE_SIZE + 1, (), generator=generator)) if jitter else 0
            canvases[row, top:top + IMAGE_SIZE, left:left + IMAGE_SIZE] = images[pick]
            spots.append((left, left + IMAGE_SIZE))
            left += IMAGE_SIZE
        captions.append("".join(str(int(labels[p])) for p in picks.tolist()))
        boxes.append(spots)
    return canvases, captions, boxes
# --8<-- [end:strings]


# --8<-- [start:shift]
def shift_right(canvases: Tensor, boxes: list[list[tuple[int, int]]], *,
                generator: torch.Generator) -> tuple[Tensor, list[list[tuple[int, int]]]]:
    """Move each string right by a uniform random 0 .. (free columns at its right) pixels.

    ``canvases`` (count, height, width) and ``boxes`` as ``digit_string_images`` returns
    them. The columns right of the last digit are empty, so rolling the canvas moves the
    string without cutting it. Returns new canvases and boxes.
    """
    if canvases.dim() != 3 or len(boxes) != canvases.shape[0]:
        raise ValueError(f"canvases must be (count, height, width) with one box list per canvas, "
                         f"got shape {tuple(canvases.shape)} and {len(boxes)} box lists")
    width = canvases.shape[-1]
    moved, moved_boxes = canvases.clone(), []
    for row, spots in enumerate(boxes):
        if spots[-1][1] > width:
            raise ValueError(f"box {spots[-1]} runs past the canvas width {width}")
        shift = int(torch.randint(width - spots[-1][1] + 1, (), generator=generator))
        moved[row] = torch.roll(canvases[row], shift, dims=-1)
        moved_boxes.append([(left + shift, right + shift) for left, right in spots])
    return moved, moved_boxes
# --8<-- [end:shift]


def caption_batch(images: Tensor, labels: Tensor, count: int, *, generator: torch.Generator,
                  vocab: DigitVocab, lengths: tuple[int, int] = (3, 5), displace: bool = False,
                  **canvas_options) -> CaptionBatch:
    """``digit_string_images`` plus the decoder's teacher-forcing inputs and targets.

    With ``displace=True`` the strings are then moved right by ``shift_right``; the shifts
    are drawn after all the strings, so the same seed gives the same strings, only moved.
    """
    canvases, captions, boxes = digit_string_images(images, labels, count, generator=generator,
                                                    lengths=lengths, **canvas_options)
    if displace:
        canvases, boxes = shift_right(canvases, boxes, generator=generator)
    tgt_in, tgt_out = vocab.teacher_forcing(captions, lengths[1])
    return CaptionBatch(canvases, tgt_in, tgt_out, captions, boxes)
