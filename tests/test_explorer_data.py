"""The explorer's data writer (attnbook.viz.explorer): format, rounding, checks and size."""
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbook.viz import explorer_json, explorer_size_kb
from attnbook.viz.explorer import FORMAT_VERSION


def softmax_weights(rng, layers=2, heads=3, seq=4, causal=False):
    scores = rng.normal(size=(layers, heads, seq, seq))
    if causal:
        scores = np.where(np.tril(np.ones((seq, seq), bool)), scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    return scores, weights / weights.sum(-1, keepdims=True)


def test_version_1_fields_keep_their_meaning():
    _, w = softmax_weights(np.random.default_rng(0))
    data = explorer_json("tiny", [{"text": "a b c d", "tokens": list("abcd"), "attention": w}],
                         head_roles=[["x"] * 3, ["y"] * 3])
    assert data["version"] == FORMAT_VERSION and data["causal"] is False
    assert (data["model"], data["num_layers"], data["num_heads"]) == ("tiny", 2, 3)
    s = data["sentences"][0]
    assert s["text"] == "a b c d" and s["tokens"] == list("abcd")
    # rounded to 3 decimals, exactly the numbers np.round gives
    assert s["attention"] == np.round(w, 3).tolist()
    assert data["head_roles"][1][2] == "y"
    assert json.loads(json.dumps(data)) == data


def test_torch_tensors_and_default_text():
    w = torch.full((1, 1, 2, 2), 0.5)
    data = explorer_json("t", [{"tokens": ["x", "y"], "attention": w}])
    assert data["sentences"][0]["text"] == "x y"
    assert data["sentences"][0]["attention"] == [[[[0.5, 0.5], [0.5, 0.5]]]]


def test_masked_scores_become_null_and_softmax_of_scores_gives_the_weights():
    scores, w = softmax_weights(np.random.default_rng(1), causal=True)
    data = explorer_json("c", [{"tokens": list("abcd"), "attention": w, "scores": scores}], causal=True,
                         scale=1 / math.sqrt(8))
    stored = data["sentences"][0]["scores"]
    assert stored[0][0][0][1] is None and stored[0][0][0][0] is not None
    assert data["causal"] is True and data["scale"] == pytest.approx(1 / math.sqrt(8))
    # what the widget does: softmax over the stored (rounded) scores, null = masked
    row = np.array([-np.inf if v is None else v for v in stored[1][2][3]])
    recomputed = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
    # scores are rounded to 1e-3, so each weight moves by at most about 1e-3 (relative): 3e-3 absolute is safe
    np.testing.assert_allclose(recomputed, w[1, 2, 3], atol=3e-3)


def test_scores_for_a_few_heads_only():
    scores, w = softmax_weights(np.random.default_rng(2))
    data = explorer_json("m", [{"tokens": list("abcd"), "attention": w, "scores": {(1, 2): scores[1, 2]}}])
    grid = data["sentences"][0]["scores"]
    assert grid[0] == [None, None, None] and grid[1][:2] == [None, None]
    assert grid[1][2] == np.round(scores[1, 2], 3).tolist()
    with pytest.raises(ValueError, match="outside"):
        explorer_json("m", [{"tokens": list("abcd"), "attention": w, "scores": {(2, 0): scores[1, 2]}}])


def test_next_token_keeps_the_top_k_of_full_logits_in_order():
    _, w = softmax_weights(np.random.default_rng(3), causal=True)
    logits = np.random.default_rng(4).normal(size=(4, 30))
    data = explorer_json("g", [{"tokens": list("abcd"), "attention": w,
                                "next_token": {"logits": logits, "decode": lambda i: f"<{i}>"}}],
                         causal=True, top_k=5)
    nt = data["sentences"][0]["next_token"]
    best = np.argsort(-logits, axis=1)[:, :5]
    assert nt["ids"] == best.tolist()
    assert nt["tokens"][2] == [f"<{i}>" for i in best[2]]
    assert nt["logits"] == np.round(np.take_along_axis(logits, best, 1), 3).tolist()
    assert all(row == sorted(row, reverse=True) for row in nt["logits"])


def test_next_token_given_as_kept_lists_is_sorted():
    _, w = softmax_weights(np.random.default_rng(5), seq=2)
    data = explorer_json("g", [{"tokens": ["a", "b"], "attention": w,
                                "next_token": {"logits": [[1.0, 3.0], [2.0, 0.5]], "tokens": [["x", "y"], ["z", "w"]]}}])
    nt = data["sentences"][0]["next_token"]
    assert nt["tokens"] == [["y", "x"], ["z", "w"]] and nt["logits"] == [[3.0, 1.0], [2.0, 0.5]]
    assert "ids" not in nt


def test_image_is_embedded_as_a_png_data_url():
    _, w = softmax_weights(np.random.default_rng(6), seq=5)
    pixels = np.random.default_rng(7).uniform(size=(8, 8, 3))
    data = explorer_json("vit", [{"tokens": ["[CLS]"] + [f"p{i}" for i in range(4)], "attention": w,
                                  "image": {"pixels": pixels, "patch_grid": [2, 2], "first_patch": 1}}])
    image = data["sentences"][0]["image"]
    assert image["src"].startswith("data:image/png;base64,") and image["patch_grid"] == [2, 2]
    assert image["first_patch"] == 1
    with pytest.raises(ValueError, match="patch grid"):
        explorer_json("vit", [{"tokens": list("abcde"), "attention": w,
                               "image": {"pixels": pixels, "patch_grid": [3, 2], "first_patch": 1}}])


@pytest.mark.parametrize("bad, message", [
    ({"tokens": list("abc")}, "3 tokens"),
    ({"attention": np.ones((2, 3, 4, 5))}, "expected \\(layers, heads, T, T\\)"),
    ({"attention": np.full((2, 3, 4, 4), 1.5)}, "in \\[0, 1\\]"),
    ({"next_token": {"logits": np.zeros((3, 5)), "decode": str}}, "expected \\(4, vocab\\)"),
    ({"next_token": {"logits": np.zeros((4, 5))}}, "'tokens' \\(kept top-k\\) or 'decode'"),
    ({"scores": np.zeros((2, 3, 4, 3))}, "scores have shape"),
])
def test_bad_input_is_named(bad, message):
    _, w = softmax_weights(np.random.default_rng(8))
    example = {"tokens": list("abcd"), "attention": w, **bad}
    with pytest.raises(ValueError, match=message):
        explorer_json("m", [example])


def test_examples_must_agree_and_names_must_fit():
    _, w = softmax_weights(np.random.default_rng(9))
    _, other = softmax_weights(np.random.default_rng(9), layers=3)
    with pytest.raises(ValueError, match="example 1: attention has 3 layers"):
        explorer_json("m", [{"tokens": list("abcd"), "attention": w}, {"tokens": list("abcd"), "attention": other}])
    with pytest.raises(ValueError, match="layer_names has 1"):
        explorer_json("m", [{"tokens": list("abcd"), "attention": w}], layer_names=["only"])
    with pytest.raises(ValueError, match="top_k=0"):
        explorer_json("m", [{"tokens": list("abcd"), "attention": w}], top_k=0)
    with pytest.raises(ValueError, match="at least one"):
        explorer_json("m", [])


def test_size_limit_names_the_cure():
    _, w = softmax_weights(np.random.default_rng(10), layers=4, heads=4, seq=20)
    with pytest.raises(ValueError, match="over max_kb=10"):
        explorer_json("m", [{"tokens": [str(i) for i in range(20)], "attention": w}], max_kb=10)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 6), st.integers(0, 2 ** 31 - 1))
def test_size_is_what_ch_json_writes(layers, heads, seq, seed):
    _, w = softmax_weights(np.random.default_rng(seed), layers, heads, seq)
    data = explorer_json("m", [{"tokens": [f"t{i}" for i in range(seq)], "attention": w}])
    written = json.dumps(data, separators=(",", ":"), sort_keys=True)
    assert explorer_size_kb(data) == pytest.approx(len(written.encode()) / 1024)
    # every stored weight is within half a unit of the third decimal of the true one
    stored = np.array(data["sentences"][0]["attention"])
    assert np.abs(stored - w).max() <= 0.0005 + 1e-12
