"""The six-method position model of chapter 6: shapes, causality, and each method's promise."""
from __future__ import annotations

import pytest
import torch

from attnbook.models.position_lm import METHODS, PositionLM


def make(method: str, train_len: int = 8, num_layers: int = 2) -> PositionLM:
    torch.manual_seed(0)
    return PositionLM(11, method, train_len=train_len, d_model=16, num_heads=2, num_layers=num_layers,
                      t5_buckets=4).eval()


def ids(batch: int, seq: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 11, (batch, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_logits_per_position(method):
    assert make(method)(ids(3, 8)).shape == (3, 8, 11)


@pytest.mark.parametrize("method", METHODS)
@torch.no_grad()
def test_every_method_is_causal(method):
    x = ids(1, 8)
    changed = x.clone()
    changed[0, 5:] = (changed[0, 5:] + 1) % 11          # change the future only
    model = make(method)
    torch.testing.assert_close(model(changed)[:, :5], model(x)[:, :5], rtol=0, atol=0)


@pytest.mark.parametrize("method", ["sinusoidal", "rope", "t5", "alibi", "none"])
@torch.no_grad()
def test_methods_without_a_table_run_beyond_the_training_length(method):
    x = ids(2, 24)
    model = make(method)
    # The first 8 positions see the same inputs at the same positions: the same logits
    # (float32 sums of a few terms in a different order: 1e-5 is generous).
    torch.testing.assert_close(model(x)[:, :8], model(x[:, :8]), rtol=0, atol=1e-5)


@torch.no_grad()
def test_learned_positions_raise_beyond_the_table_unless_clamped():
    model = make("learned")
    with pytest.raises(ValueError, match="max_len=8"):
        model(ids(1, 9))
    clamped = model(ids(1, 12), clamp_positions=True)
    assert clamped.shape == (1, 12, 11)


@torch.no_grad()
def test_without_positions_only_the_causal_mask_tells_positions_apart():
    # NoPE, one layer: the last token attends to the *set* of tokens before it, so permuting
    # them leaves its prediction unchanged (up to float32 summation order). With two layers
    # the earlier tokens' own prefixes differ, and order leaks in through the causal mask.
    x = ids(1, 8)
    permuted = torch.cat([x[:, :7].flip(1), x[:, 7:]], dim=1)
    nope, rope = make("none", num_layers=1), make("rope", num_layers=1)
    torch.testing.assert_close(nope(permuted)[:, -1], nope(x)[:, -1], rtol=0, atol=1e-5)
    assert not torch.allclose(rope(permuted)[:, -1], rope(x)[:, -1], atol=1e-3)


@torch.no_grad()
def test_rope_scale_one_is_plain_rope_and_other_methods_refuse_it():
    model, x = make("rope"), ids(1, 8)
    torch.testing.assert_close(model(x, rope_scale=1.0), model(x), rtol=0, atol=0)
    assert not torch.allclose(model(x, rope_scale=0.5), model(x))
    with pytest.raises(ValueError, match="only applies to method='rope'"):
        make("alibi")(x, rope_scale=0.5)


def test_unknown_method_is_named():
    with pytest.raises(ValueError, match="method must be one of"):
        PositionLM(11, "xpos", train_len=8)
