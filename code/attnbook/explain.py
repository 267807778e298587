"""Attributions: which input tokens a model's output depends on.

Chapter 23 compares these with the raw attention weights. Conventions: attention maps
are ``(batch, heads, T, T)``, rows = queries, and each row sums to one.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .attention._checks import check_tensor

Tensor = torch.Tensor

__all__ = ["attention_rollout"]


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
