"""Beam search with length normalisation, for any model that scores the next token.

The search only needs a *step function*: given a batch of prefixes (each starting with
``<bos>``) and, for each prefix, the index of the sentence it belongs to, return the
next-token logits. ``encoder_decoder_step`` builds one for the book's ``EncoderDecoder``
(the source is encoded once; each step reruns the decoder over the prefixes, no cache).

Scores are sums of log-probabilities. Finished hypotheses are compared after dividing by a
length penalty ``lp(L)`` (L = generated tokens, ``<eos>`` included):

    "wu":      lp(L) = ((5 + L) / 6) ** alpha          (Wu et al., 2016, §7)
    "length":  lp(L) = L ** alpha                        (alpha = 1: mean log-probability)

alpha = 0 switches normalisation off. The stopping rule is the usual one of fairseq-style
decoders: a sentence is done once ``beam_width`` hypotheses have ended with ``<eos>`` (an
``<eos>`` only counts when it ranks among the best ``beam_width`` candidates of its step),
or at step ``max_len``, when the best ``beam_width`` candidates of that step are finished
whether or not they end with ``<eos>`` (a hypothesis cut by the cap has ``max_len`` tokens
and no ``<eos>``), or when a step keeps no live candidate. With ``beam_width=1`` this is
greedy decoding, exactly. Once scores are normalised the first rule is a heuristic (a live
hypothesis may still end with a better normalised score); ``stop_early=False`` drops it and
runs every sentence to the cap.
"""
from __future__ import annotations

from typing import Callable

import torch

from .attention._checks import check_positive_int, check_rank, check_tensor

Tensor = torch.Tensor
StepFn = Callable[[Tensor, Tensor], Tensor]
PENALTIES = ("wu", "length")


# --8<-- [start:penalty]
def length_penalty(length: int | Tensor, *, alpha: float = 0.6, kind: str = "wu"):
    """The divisor of a finished hypothesis's log-probability: ``lp(L)``.

    kind="wu": ((5 + L) / 6) ** alpha, Wu et al. (2016), §7; kind="length": L ** alpha.
    alpha = 0 gives 1 (no normalisation) for either kind.
    """
    if kind not in PENALTIES:
        raise ValueError(f"kind must be one of {PENALTIES}, got {kind!r}")
    if not alpha >= 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if kind == "wu":
        return ((5 + length) / 6) ** alpha
    return length ** alpha
# --8<-- [end:penalty]


def _check_options(batch_size, beam_width, max_len, alpha, kind):
    check_positive_int("batch_size", batch_size)
    check_positive_int("beam_width", beam_width)
    check_positive_int("max_len", max_len)
    length_penalty(1, alpha=alpha, kind=kind)   # raises the named errors for alpha and kind


# --8<-- [start:beam]
@torch.no_grad()
def beam_search(step: StepFn, batch_size: int, *, beam_width: int, max_len: int, bos_id: int,
                eos_id: int, pad_id: int = 0, alpha: float = 0.6, kind: str = "wu",
                device: torch.device | str | None = None, stop_early: bool = True,
                return_scores: bool = False):
    """Beam search for ``batch_size`` sentences at once.

    step(prefixes (rows, t) long, sentence (rows,) long) -> logits (rows, vocab): the
    next-token scores of each prefix; ``sentence[r]`` says which of the ``batch_size``
    sentences row r belongs to (a step function picks that sentence's encoder output).
    ``device`` is where the search keeps its tensors: the step function's device.
    ``stop_early=True``: a sentence is done once ``beam_width`` hypotheses have finished;
    ``False``: only at ``max_len`` (or when no live candidate is left), which can only raise
    the returned score, since the finished hypotheses are then a superset.
    Returns tokens (batch, 1 + steps) starting with ``bos_id``, each row the best finished
    hypothesis (by log-probability / length_penalty) padded with ``pad_id`` after its
    ``<eos>``, where steps is the longest chosen hypothesis; with ``return_scores=True``,
    also its normalised scores (batch,).
    """
    _check_options(batch_size, beam_width, max_len, alpha, kind)
    k = beam_width
    # the live hypotheses, sentence-major: slot (s, j); an empty slot has score -inf
    # float64 scores: sums of log-probabilities keep the order the model's logits give
    scores = torch.full((batch_size, k), float("-inf"), dtype=torch.float64, device=device)
    scores[:, 0] = 0.0                                       # one live hypothesis: <bos>
    prefixes = torch.full((batch_size, k, 1), bos_id, dtype=torch.long, device=device)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch_size)]
    active = torch.ones(batch_size, dtype=torch.bool, device=device)
    sentence_of = torch.arange(batch_size, device=device)[:, None].expand(batch_size, k)
    for t in range(1, max_len + 1):
        live = active[:, None] & torch.isfinite(scores)      # (batch, k)
        logits = step(prefixes[live], sentence_of[live])       # (rows, vocab)
        check_rank("step output", logits, 2, "(rows, vocab)")
        if logits.shape[0] != int(live.sum()):
            raise ValueError(f"step returned {logits.shape[0]} rows for {int(live.sum())} prefixes")
        vocab = logits.shape[1]
        # every expansion of every live hypothesis: its total log-probability
        total = torch.full((batch_size, k, vocab), float("-inf"), dtype=torch.float64, device=scores.device)
        total[live] = scores[live][:, None] + torch.log_softmax(logits.double(), dim=-1)
        top_scores, top_index = total.view(batch_size, k * vocab).topk(min(2 * k, k * vocab), dim=-1)
        parents, tokens = top_index // vocab, top_index % vocab              # (batch, 2k)
        new_scores = torch.full_like(scores, float("-inf"))
        keep_parent = torch.zeros(batch_size, k, dtype=torch.long, device=scores.device)
        keep_token = torch.full((batch_size, k), pad_id, dtype=torch.long, device=scores.device)
        rows = zip(top_scores.tolist(), parents.tolist(), tokens.tolist(), active.tolist())
        for s, (values, parent_list, token_list, is_active) in enumerate(rows):
            if not is_active:
                continue
            kept = 0
            for rank, (value, parent, token) in enumerate(zip(values, parent_list, token_list)):
                if value == float("-inf") or kept == k:
                    break
                if token == eos_id or t == max_len:
                    # an <eos> counts only among the best k; at max_len every hypothesis ends
                    if rank < k:
                        ended = prefixes[s, parent, 1:].tolist() + [token]
                        finished[s].append((value / length_penalty(t, alpha=alpha, kind=kind), ended))
                    continue
                new_scores[s, kept], keep_parent[s, kept], keep_token[s, kept] = value, parent, token
                kept += 1
            if (stop_early and len(finished[s]) >= k) or kept == 0 or t == max_len:
                active[s] = False
        if not active.any():
            break
        prefixes = torch.cat([prefixes.gather(1, keep_parent[:, :, None].expand(-1, -1, t)),
                              keep_token[:, :, None]], dim=2)               # (batch, k, t + 1)
        scores = new_scores
    best = [max(hypotheses, key=lambda h: h[0]) for hypotheses in finished]  # first of equals
    width = 1 + max(len(tokens) for _, tokens in best)
    out = torch.full((batch_size, width), pad_id, dtype=torch.long, device=device)
    out[:, 0] = bos_id
    for s, (_, tokens) in enumerate(best):
        out[s, 1:1 + len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    if return_scores:
        return out, torch.tensor([score for score, _ in best], dtype=torch.float64)
    return out
# --8<-- [end:beam]


# --8<-- [start:step]
def encoder_decoder_step(model, src: Tensor, src_key_padding_mask: Tensor | None = None) -> StepFn:
    """A step function for ``beam_search`` from an ``EncoderDecoder`` and its source batch.

    src (batch, src_len); src_key_padding_mask (batch, src_len), True = real token. The
    source is encoded once; a step reruns the decoder over whole prefixes (no cache) with
    the memory rows of each prefix's sentence, and returns the last position's logits.
    """
    check_rank("src", check_tensor("src", src), 2, "(batch, src_len)")
    memory = model.encode(src, src_key_padding_mask)           # (batch, src_len, d_model)

    def step(prefixes: Tensor, sentence: Tensor) -> Tensor:
        mask = None if src_key_padding_mask is None else src_key_padding_mask[sentence]
        return model.decode(prefixes, memory[sentence], src_key_padding_mask=mask)[:, -1]
    return step
# --8<-- [end:step]
