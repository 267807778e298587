"""Chapter 11's library code: the needle task, the pattern model, and the reachability ceiling.

The sparse attention functions themselves are tested in test_sparse.py and test_local.py;
here: the model really uses only the mask's edges (an exact identity), and the task and
ceiling do what the chapter says.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbook.attention.graph import reachability
from attnbook.attention.local import sliding_window_mask
from attnbook.attention.sparse import strided_mask
from attnbook.data.synthetic import IGNORE_INDEX
from attnbook.models.sparse_lm import PatternClassifier, needle_reach, needle_targets, needle_task


def _task(batch=8, seq_len=32, min_distance=20, seed=0):
    return needle_task(batch, seq_len=seq_len, num_symbols=5, num_filler=3, min_distance=min_distance,
                       generator=torch.Generator().manual_seed(seed))


@settings(max_examples=30, deadline=None)
@given(seq_len=st.integers(2, 40), data=st.data())
def test_needle_task_plants_one_needle_far_enough_back(seq_len, data):
    min_distance = data.draw(st.integers(1, seq_len - 1))
    ids, labels, pos = needle_task(6, seq_len=seq_len, num_symbols=5, num_filler=3,
                                   min_distance=min_distance, generator=torch.Generator().manual_seed(1))
    assert ids.shape == (6, seq_len)
    assert (ids[:, -1] == 3 + 5).all()  # the query token
    needles = (ids >= 3) & (ids < 8)
    assert (needles.sum(1) == 1).all()  # exactly one needle per sequence
    assert (ids[torch.arange(6), pos] == 3 + labels).all()
    assert ((seq_len - 1 - pos) >= min_distance).all()


def test_needle_task_is_seeded():
    a, b = _task(seed=4), _task(seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_needle_task_rejects_a_distance_that_leaves_no_room():
    with pytest.raises(ValueError, match="min_distance=32"):
        _task(seq_len=32, min_distance=32)


def test_needle_targets_ignore_positions_before_the_needle():
    labels, pos = torch.tensor([2, 0]), torch.tensor([3, 0])
    targets = needle_targets(labels, pos, 6)
    assert targets[0].tolist() == [IGNORE_INDEX] * 3 + [2] * 3
    assert targets[1].tolist() == [0] * 6


def test_needle_targets_last_only_keeps_just_the_scored_position():
    labels, pos = torch.tensor([2, 0]), torch.tensor([3, 0])
    targets = needle_targets(labels, pos, 6, last_only=True)
    assert targets[:, :-1].eq(IGNORE_INDEX).all()
    assert targets[:, -1].tolist() == [2, 0]
    # the control differs from the default only by dropping targets, never changing one
    full = needle_targets(labels, pos, 6)
    kept = targets != IGNORE_INDEX
    assert torch.equal(targets[kept], full[kept])


def test_needle_targets_rejects_labels_of_the_wrong_rank():
    with pytest.raises(ValueError, match="labels must have 1 dimensions"):
        needle_targets(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, dtype=torch.long), 6)


def _edge_influence(model, ids, query):
    """Which input positions the logits at ``query`` depend on (nonzero gradient)."""
    x = model.embed(ids) + model.position(torch.arange(ids.shape[1]))
    x.retain_grad()
    h = x
    for block in model.blocks:
        h = block(h, model.mask)
    model.head(model.norm(h))[0, query].sum().backward()
    return x.grad[0].abs().sum(-1) > 0


@pytest.mark.parametrize("layers", [1, 2])
def test_model_output_depends_exactly_on_the_reachable_inputs(layers):
    # Exact identity: the gradient of output i w.r.t. input j is nonzero iff j is reachable
    # from i in `layers` hops (with the residual self-loop). Float64 so that no weight
    # underflows to an exact zero by accident.
    torch.manual_seed(0)
    seq = 24
    mask = strided_mask(seq, stride=4)
    model = PatternClassifier(9, 5, mask, d_model=16, num_heads=2, num_layers=layers).double()
    ids = _task(batch=1, seq_len=seq, min_distance=5)[0]
    reach = reachability(*([mask] * layers))
    for query in (seq - 1, 9, 0):
        model.zero_grad()
        assert torch.equal(_edge_influence(model, ids, query), reach[query])


def test_model_rejects_a_non_boolean_mask():
    with pytest.raises(ValueError, match="boolean"):
        PatternClassifier(9, 5, torch.ones(8, 8))


def test_model_rejects_ids_of_the_wrong_length():
    model = PatternClassifier(9, 5, strided_mask(8, stride=2))
    with pytest.raises(ValueError, match="mask is for 8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_model_rejects_heads_that_do_not_divide_the_width():
    with pytest.raises(ValueError, match="d_model=30 is not divisible by num_heads=4"):
        PatternClassifier(9, 5, strided_mask(8, stride=2), d_model=30, num_heads=4)


def test_needle_reach_of_a_short_window_is_zero_and_of_full_attention_one():
    seq, distance = 64, 40
    window = sliding_window_mask(seq, window=8, causal=True)
    assert needle_reach(reachability(window, window), min_distance=distance) == 0.0
    full = torch.ones(seq, seq, dtype=torch.bool).tril()
    assert needle_reach(reachability(full), min_distance=distance) == 1.0


def test_needle_reach_of_a_dilated_window_counts_one_residue_class():
    # Dilation 3 with a reach beyond the needle range: the last position reaches exactly
    # the positions an exact multiple of 3 back.
    seq, distance = 60, 30
    dilated = sliding_window_mask(seq, window=20, causal=True, dilation=3)
    needles = torch.arange(seq - distance)
    expected = ((seq - 1 - needles) % 3 == 0).float().mean().item()
    assert needle_reach(reachability(dilated, dilated), min_distance=distance) == pytest.approx(expected)


def test_needle_reach_rejects_a_non_square_matrix():
    with pytest.raises(ValueError, match="reach must be"):
        needle_reach(torch.ones(3, 4, dtype=torch.bool), min_distance=1)
