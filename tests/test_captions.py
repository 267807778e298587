"""Digit-string images and the shared digit vocabulary (attnbook.data.captions), and the patch front end."""
import pytest
import torch

from attnbook.data.captions import DigitVocab, caption_batch, digit_string_images, shift_right
from attnbook.models.frontends import ConvPatchEmbedding


def toy_digits():
    # ten 8 x 8 images, image i filled with the value (i + 1) / 10 and labelled i
    images = torch.stack([torch.full((8, 8), (i + 1) / 10) for i in range(10)])
    return images, torch.arange(10)


def test_canvases_hold_the_captioned_digits_in_their_boxes():
    images, labels = toy_digits()
    canvases, captions, boxes = digit_string_images(images, labels, 20, generator=torch.Generator().manual_seed(0),
                                                    lengths=(3, 5), width=48, height=8)
    assert canvases.shape == (20, 8, 48)
    for canvas, caption, spots in zip(canvases, captions, boxes):
        assert 3 <= len(caption) <= 5 and len(spots) == len(caption)
        for digit, (left, right) in zip(caption, spots):
            assert right - left == 8
            assert torch.all(canvas[:, left:right] == (int(digit) + 1) / 10)
        covered = sum(r - l for l, r in spots)
        assert (canvas > 0).sum() == 8 * covered          # nothing drawn outside the boxes
        assert all(r0 <= l1 <= r0 + 2 for (_, r0), (l1, _) in zip(spots, spots[1:]))   # gaps of 0-2


def test_jittered_canvases_still_keep_digits_in_order():
    images, labels = toy_digits()
    _, captions, boxes = digit_string_images(images, labels, 10, generator=torch.Generator().manual_seed(1),
                                             height=12, jitter=True)
    for spots in boxes:
        assert all(a[1] <= b[0] for a, b in zip(spots, spots[1:]))


def test_teacher_forcing_pairs_shift_by_one():
    vocab = DigitVocab()
    tgt_in, tgt_out = vocab.teacher_forcing(["307", "12345"], 5)
    assert tgt_in.tolist()[0] == [1, 6, 3, 10, 0, 0]
    assert tgt_out.tolist()[0] == [6, 3, 10, 2, -100, -100]
    assert vocab.decode(tgt_out[1]) == "12345" and vocab.decode(tgt_in[1]) == "12345"


def test_strict_decoding_never_hides_a_stray_token():
    vocab = DigitVocab()
    assert vocab.decode([1, 5, 0, 6, 1, 2]) == "23"                     # lenient: <bos>, <pad> skipped
    assert vocab.decode([5, 0, 6, 2, 7], strict=True) == "2?3"          # strict: they count as wrong
    assert vocab.decode([5, 6, 2, 0], strict=True) == "23"              # nothing after <eos> matters


def test_shifted_strings_are_the_same_pixels_moved_right():
    images, labels = toy_digits()
    canvases, _, boxes = digit_string_images(images, labels, 12, generator=torch.Generator().manual_seed(6))
    moved, moved_boxes = shift_right(canvases, boxes, generator=torch.Generator().manual_seed(7))
    shifts = [m[0][0] - b[0][0] for m, b in zip(moved_boxes, boxes)]
    assert any(s > 0 for s in shifts)
    for canvas, new, spots, new_spots, s in zip(canvases, moved, boxes, moved_boxes, shifts):
        assert new_spots == [(l + s, r + s) for l, r in spots] and new_spots[-1][1] <= 48
        assert torch.equal(new[:, s:], canvas[:, :48 - s]) and not new[:, :s].any()


def test_a_displaced_caption_batch_keeps_its_captions():
    images, labels = toy_digits()
    vocab = DigitVocab()
    usual = caption_batch(images, labels, 8, generator=torch.Generator().manual_seed(8), vocab=vocab)
    moved = caption_batch(images, labels, 8, generator=torch.Generator().manual_seed(8), vocab=vocab,
                          displace=True)
    assert moved.captions == usual.captions and torch.equal(moved.tgt_in, usual.tgt_in)
    assert [[r - l for l, r in b] for b in moved.boxes] == [[8] * len(c) for c in moved.captions]


def test_caption_batch_matches_its_captions():
    images, labels = toy_digits()
    vocab = DigitVocab()
    batch = caption_batch(images, labels, 6, generator=torch.Generator().manual_seed(2), vocab=vocab)
    assert batch.images.shape == (6, 8, 48) and batch.tgt_in.shape == (6, 6)
    assert [vocab.decode(row) for row in batch.tgt_out] == batch.captions


def test_same_seed_same_canvases():
    images, labels = toy_digits()
    a = digit_string_images(images, labels, 5, generator=torch.Generator().manual_seed(3))
    b = digit_string_images(images, labels, 5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and a[1] == b[1]


def test_patch_embedding_gives_one_vector_per_patch_in_reading_order():
    torch.manual_seed(0)
    embed = ConvPatchEmbedding((8, 48), 4, 16)
    images = torch.zeros(2, 8, 48)
    assert embed(images).shape == (2, 24, 16)
    # a change in the top-right corner moves only patches in the last column (index 11 or 23)
    changed = images.clone()
    changed[:, 0, 47] = 1.0
    moved = (embed(changed) - embed(images)).abs().sum(-1)[0] > 0
    assert set(torch.nonzero(moved).flatten().tolist()) <= {11, 23}


@pytest.mark.parametrize("bad, message", [
    (lambda: digit_string_images(torch.zeros(4, 8, 7), torch.zeros(4), 1, generator=torch.Generator()), "images must be"),
    (lambda: digit_string_images(torch.zeros(4, 8, 8), torch.zeros(3), 1, generator=torch.Generator()), "labels must be"),
    (lambda: digit_string_images(torch.zeros(4, 8, 8), torch.zeros(4), 1, generator=torch.Generator(), width=30), "cannot hold"),
    (lambda: digit_string_images(torch.zeros(4, 8, 8), torch.zeros(4), 1, generator=torch.Generator(), lengths=(0, 2)), "lengths"),
    (lambda: DigitVocab().encode("12a"), "not in the alphabet"),
    (lambda: DigitVocab("112"), "without repeats"),
    (lambda: DigitVocab().teacher_forcing(["123456"], 5), "longer than max_len"),
    (lambda: shift_right(torch.zeros(2, 8, 48), [[(0, 8)]], generator=torch.Generator()), "one box list"),
    (lambda: shift_right(torch.zeros(1, 8, 48), [[(44, 52)]], generator=torch.Generator()), "past the canvas"),
    (lambda: ConvPatchEmbedding((8, 46), 4, 16), "not divisible"),
    (lambda: ConvPatchEmbedding((8, 48), 4, 16)(torch.zeros(1, 8, 44)), "images must be 8 x 48"),
])
def test_bad_input_is_named(bad, message):
    with pytest.raises(ValueError, match=message):
        bad()
