"""Attributions: which input tokens a model's output depends on.

Chapter 23 compares these with the raw attention weights. Conventions: attention maps
are ``(batch, heads, T, T)``, rows = queries, and each row sums to one.

* from the weights alone: ``attention_rollout``, ``attention_flow`` (Abnar & Zuidema 2020);
* from gradients: ``gradient_x_input``, ``integrated_gradients`` (Sundararajan et al. 2017);
* from perturbation: ``occlusion`` (leave one out), ``deletion_curve``;
* scoring against known evidence: ``precision_at_k``, ``roc_auc``; comparing attention
  distributions: ``js_divergence`` (Jain & Wallace 2019).
"""
from __future__ import annotations

from typing import Sequence

import torch

from .attention._checks import check_tensor

Tensor = torch.Tensor

__all__ = ["attention_rollout", "attention_flow", "gradient_x_input", "integrated_gradients",
           "occlusion", "deletion_curve", "precision_at_k", "roc_auc", "js_divergence"]


# --8<-- [start:rollout]
def attention_rollout(attentions: Sequence[Tensor], *, residual: float = 0.5) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020): ``(batch, T, T)``.

    Each layer's heads are averaged and the residual connection is modelled as an extra
    identity term, ``A_l = residual * I + (1 - residual) * mean_h(attn_l)``, rows renormalised;
    the layers then compose, ``R = A_L @ ... @ A_1``, so ``R[i, j]`` is how much of input
    token ``j`` reaches position ``i`` at the top. ``attentions`` lists layers bottom first.
    """
    if not 0.0 <= residual <= 1.0:
        raise ValueError(f"residual must be in [0, 1], got {residual}")
    if len(attentions) == 0:
        raise ValueError("attentions is empty: pass one (batch, heads, T, T) tensor per layer")
    rollout = None
    for layer, attn in enumerate(attentions):
        check_tensor(f"attentions[{layer}]", attn)
        if attn.dim() != 4 or attn.shape[-1] != attn.shape[-2]:
            raise ValueError(f"attentions[{layer}] must have shape (batch, heads, T, T), "
                             f"got {tuple(attn.shape)}")
        if rollout is not None and attn.shape[-1] != rollout.shape[-1]:
            raise ValueError(f"attentions[{layer}] has T={attn.shape[-1]}, earlier layers T={rollout.shape[-1]}")
        eye = torch.eye(attn.shape[-1], dtype=attn.dtype, device=attn.device)
        mixed = residual * eye + (1.0 - residual) * attn.mean(dim=1)
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        rollout = mixed if rollout is None else mixed @ rollout
    return rollout
# --8<-- [end:rollout]


# --------------------------------------------------------------------------------------
# Attention flow: the layered attention graph as a flow network (Abnar & Zuidema 2020)
# --------------------------------------------------------------------------------------

def _residual_layers(attentions: Sequence[Tensor], residual: float) -> Tensor:
    """The per-layer matrices that rollout multiplies: ``(layers, batch, T, T)``."""
    if not 0.0 <= residual <= 1.0:
        raise ValueError(f"residual must be in [0, 1], got {residual}")
    if len(attentions) == 0:
        raise ValueError("attentions is empty: pass one (batch, heads, T, T) tensor per layer")
    shape = None
    layers = []
    for layer, attn in enumerate(attentions):
        check_tensor(f"attentions[{layer}]", attn)
        if attn.dim() != 4 or attn.shape[-1] != attn.shape[-2]:
            raise ValueError(f"attentions[{layer}] must have shape (batch, heads, T, T), "
                             f"got {tuple(attn.shape)}")
        if shape is not None and (attn.shape[0], attn.shape[-1]) != shape:
            raise ValueError(f"attentions[{layer}] has (batch, T)={(attn.shape[0], attn.shape[-1])}, "
                             f"earlier layers {shape}")
        shape = (attn.shape[0], attn.shape[-1])
        eye = torch.eye(attn.shape[-1], dtype=attn.dtype, device=attn.device)
        mixed = residual * eye + (1.0 - residual) * attn.mean(dim=1)
        layers.append(mixed / mixed.sum(dim=-1, keepdim=True))
    return torch.stack(layers)


# --8<-- [start:flow]
def attention_flow(attentions: Sequence[Tensor], *, residual: float = 0.5,
                   query: int | None = None, resolution: float = 1e-6) -> Tensor:
    """Attention flow (Abnar & Zuidema 2020): the maximum flow from each input token.

    The graph has a node per (layer boundary l = 0..L, token t). Layer l adds an edge
    from node (l-1, j) to node (l, i) with capacity ``A_l[i, j]``, the head-averaged
    attention mixed with the identity as in ``attention_rollout``. ``flow[i, j]`` is the
    value of a maximum flow from input node (0, j) to top node (L, i). Where rollout
    *multiplies* weights along every path and adds the paths, flow is limited by the
    narrowest cut between the two nodes.

    Returns ``(batch, T, T)`` (rows = top positions i, columns = inputs j), or
    ``(batch, T)`` for one top position ``query``. SciPy's max-flow needs integer
    capacities: each is rounded to a multiple of ``resolution``, so a flow through a cut
    of c edges is off by at most ``c * resolution / 2``.
    """
    import numpy as np
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_flow

    layers = _residual_layers(attentions, residual)  # (L, batch, T, T)
    num_layers, batch, seq = layers.shape[:3]
    if query is not None and not -seq <= query < seq:
        raise ValueError(f"query={query} is out of range for T={seq}")
    if not resolution > 0:
        raise ValueError(f"resolution must be positive, got {resolution}")
    capacities = torch.round(layers.detach().double().cpu() / resolution).numpy().astype(np.int64)
    if capacities.max() >= 2**31:
        raise ValueError(f"resolution={resolution} is too fine: capacities overflow int32")
    nodes = (num_layers + 1) * seq
    tops = range(seq) if query is None else [query % seq]
    flow = torch.zeros(batch, len(tops), seq, dtype=torch.float64)
    l_idx, i_idx, j_idx = np.meshgrid(np.arange(num_layers), np.arange(seq), np.arange(seq),
                                      indexing="ij")
    tails = (l_idx * seq + j_idx).ravel()        # node (l-1, j) for layer l = l_idx + 1
    heads = ((l_idx + 1) * seq + i_idx).ravel()  # node (l, i)
    for b in range(batch):
        graph = csr_matrix((capacities[:, b].ravel().astype(np.int32), (tails, heads)),
                           shape=(nodes, nodes))
        for row, top in enumerate(tops):
            for source in range(seq):
                result = maximum_flow(graph, source, num_layers * seq + top)
                flow[b, row, source] = result.flow_value * resolution
    flow = flow.to(dtype=layers.dtype, device=layers.device)
    return flow[:, 0] if query is not None else flow
# --8<-- [end:flow]


# --------------------------------------------------------------------------------------
# Gradient attributions
# --------------------------------------------------------------------------------------

def _check_embeddings(inputs: Tensor) -> Tensor:
    check_tensor("inputs", inputs)
    if inputs.dim() != 3 or not inputs.is_floating_point():
        raise ValueError(f"inputs must be floating point (batch, T, d), got {inputs.dtype} "
                         f"{tuple(inputs.shape)}")
    return inputs


def _scalar_outputs(f, x: Tensor) -> Tensor:
    out = f(x)
    if out.shape != x.shape[:1]:
        raise ValueError(f"f must return one number per example, shape {tuple(x.shape[:1])}, "
                         f"got {tuple(out.shape)}")
    return out


# --8<-- [start:gradients]
def gradient_x_input(f, inputs: Tensor) -> Tensor:
    """Gradient x input: ``sum_d x[t, d] * df/dx[t, d]`` for every token t, ``(batch, T)``.

    ``f`` maps embeddings ``(batch, T, d)`` to one number per example ``(batch,)``, e.g.
    the logit of the predicted class. It is the first-order Taylor term of
    f(x) - f(0) split over tokens: exact only if f is linear.
    """
    x = _check_embeddings(inputs).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(_scalar_outputs(f, x).sum(), x)
    return (grad * x).sum(dim=-1).detach()


def integrated_gradients(f, inputs: Tensor, baseline: Tensor | None = None, *,
                         steps: int = 32, chunk: int | None = None) -> Tensor:
    """Integrated gradients (Sundararajan et al. 2017), summed over the embedding axis.

    IG_t = sum_d (x - x')[t, d] * integral_0^1 df/dx[t, d] at x' + a (x - x') da,
    with the integral taken by the midpoint rule over ``steps`` points a_k = (k + 1/2)/steps.
    Completeness: sum_t IG_t = f(x) - f(x') up to the rule's error, O(1/steps^2) for a
    smooth f. ``baseline`` x' defaults to zeros; ``chunk`` path points per call of ``f``
    (default: all ``steps`` at once, stacked along the batch axis). Returns ``(batch, T)``.
    """
    x = _check_embeddings(inputs).detach()
    base = torch.zeros_like(x) if baseline is None else baseline.detach().expand_as(x)
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    chunk = steps if chunk is None else chunk
    alphas = (torch.arange(steps, dtype=x.dtype, device=x.device) + 0.5) / steps
    total = torch.zeros_like(x)
    for start in range(0, steps, chunk):
        a = alphas[start:start + chunk].view(-1, 1, 1, 1)             # (k, 1, 1, 1)
        path = (base + a * (x - base)).flatten(0, 1).requires_grad_(True)  # (k * batch, T, d)
        (grad,) = torch.autograd.grad(_scalar_outputs(f, path).sum(), path)
        total += grad.view(a.shape[0], *x.shape).sum(dim=0)
    return ((x - base) * total / steps).sum(dim=-1)
# --8<-- [end:gradients]


# --------------------------------------------------------------------------------------
# Perturbation: take tokens away and watch the output
# --------------------------------------------------------------------------------------

def _check_tokens(tokens: Tensor) -> Tensor:
    check_tensor("tokens", tokens)
    if tokens.dim() != 2 or tokens.is_floating_point():
        raise ValueError(f"tokens must be integer ids (batch, T), got {tokens.dtype} {tuple(tokens.shape)}")
    return tokens


# --8<-- [start:perturb]
@torch.no_grad()
def occlusion(f, tokens: Tensor, *, replace_with: int, positions: Tensor | None = None) -> Tensor:
    """Leave-one-out: ``f(tokens) - f(tokens with token t replaced)`` per token, ``(batch, T)``.

    ``f`` maps token ids ``(batch, T)`` to ``(batch,)``. ``positions`` (batch, T) boolean
    selects the tokens to occlude (True = occlude); the others score 0.
    """
    tokens = _check_tokens(tokens)
    positions = torch.ones_like(tokens, dtype=torch.bool) if positions is None else positions
    full = f(tokens)
    scores = torch.zeros(tokens.shape, dtype=full.dtype, device=tokens.device)
    for t in range(tokens.shape[1]):
        if positions[:, t].any():
            occluded = tokens.clone()
            occluded[:, t] = replace_with
            scores[:, t] = torch.where(positions[:, t], full - f(occluded), 0.0)
    return scores


@torch.no_grad()
def deletion_curve(f, tokens: Tensor, scores: Tensor, *, replace_with: int, max_k: int,
                   candidates: Tensor | None = None) -> Tensor:
    """``f`` after replacing the k highest-scoring tokens, k = 0..max_k: ``(batch, max_k + 1)``.

    Column 0 is ``f(tokens)``. Only ``candidates`` (batch, T) boolean, True = may be
    removed, are ranked (default: all); ties are broken by position. A good attribution
    makes the curve fall fast (Samek et al. 2017's "region perturbation" for pixels).
    """
    tokens = _check_tokens(tokens)
    if scores.shape != tokens.shape:
        raise ValueError(f"scores must have the shape of tokens {tuple(tokens.shape)}, got {tuple(scores.shape)}")
    ranked = scores.double().clone()
    if candidates is not None:
        ranked[~candidates] = -torch.inf
    order = torch.sort(ranked, dim=1, descending=True, stable=True).indices  # (batch, T)
    current = tokens.clone()
    values = [f(current)]
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    for k in range(max_k):
        take = order[:, k]
        allowed = torch.isfinite(ranked[rows, take])  # fewer candidates than k: keep the token
        current[rows[allowed], take[allowed]] = replace_with
        values.append(f(current))
    return torch.stack(values, dim=1)
# --8<-- [end:perturb]


# --------------------------------------------------------------------------------------
# Scoring an attribution against known evidence, and comparing distributions
# --------------------------------------------------------------------------------------

# --8<-- [start:metrics]
def precision_at_k(scores: Tensor, evidence: Tensor, k: int | None = None,
                   candidates: Tensor | None = None) -> Tensor:
    """Share of the top-k tokens that are evidence, per example: ``(batch,)``.

    ``evidence`` (batch, T) boolean marks the tokens that truly decide the label. With
    ``k=None`` each example uses k = its number of evidence tokens (R-precision: 1.0
    means the evidence is exactly the top of the ranking). Ties broken by position.
    """
    if scores.shape != evidence.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and evidence {tuple(evidence.shape)} differ")
    ranked = scores.double().clone()
    if candidates is not None:
        ranked[~candidates] = -torch.inf
    order = torch.sort(ranked, dim=1, descending=True, stable=True).indices
    hits = evidence.gather(1, order).double()  # evidence flags in ranked order
    ks = evidence.sum(1) if k is None else torch.full((scores.shape[0],), k, device=scores.device)
    if (ks < 1).any():
        raise ValueError("every example needs k >= 1 (an example has no evidence tokens)")
    within = torch.arange(scores.shape[1], device=scores.device) < ks[:, None]
    return (hits * within).sum(1) / ks


def roc_auc(scores: Tensor, evidence: Tensor, candidates: Tensor | None = None) -> Tensor:
    """Per-example ROC AUC of ``scores`` for ``evidence``: ``(batch,)``.

    The probability that a random evidence token scores higher than a random
    non-evidence candidate, ties counted as one half. 0.5 is chance, 1.0 perfect.
    """
    if scores.shape != evidence.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and evidence {tuple(evidence.shape)} differ")
    candidates = torch.ones_like(evidence) if candidates is None else candidates
    pos = (evidence & candidates).double()
    neg = (~evidence & candidates).double()
    if (pos.sum(1) == 0).any() or (neg.sum(1) == 0).any():
        raise ValueError("every example needs at least one evidence and one other candidate token")
    diff = scores.double()[:, :, None] - scores.double()[:, None, :]  # (batch, pos t, neg u)
    wins = (diff > 0).double() + 0.5 * (diff == 0).double()
    pairs = pos[:, :, None] * neg[:, None, :]
    return (wins * pairs).sum((1, 2)) / pairs.sum((1, 2))


def js_divergence(p: Tensor, q: Tensor, dim: int = -1) -> Tensor:
    """Jensen-Shannon divergence in nats along ``dim``; 0 for equal, at most ln 2.

    JSD(p, q) = KL(p || m) / 2 + KL(q || m) / 2 with m = (p + q) / 2. Logarithms see
    their argument clamped to the smallest positive float, so a weight of exactly 0 (a
    saturated softmax) contributes 0 and a finite gradient instead of NaN.
    """
    if p.shape != q.shape:
        raise ValueError(f"p {tuple(p.shape)} and q {tuple(q.shape)} differ")
    tiny = torch.finfo(p.dtype).tiny
    log_m = (0.5 * (p + q)).clamp_min(tiny).log()
    kl_pm = (p * (p.clamp_min(tiny).log() - log_m)).sum(dim)
    kl_qm = (q * (q.clamp_min(tiny).log() - log_m)).sum(dim)
    return 0.5 * (kl_pm + kl_qm)
# --8<-- [end:metrics]
