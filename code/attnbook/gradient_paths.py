"""How strongly an output depends on each input: Jacobian norms against distance.

A recurrent network reaches input x_s from output y_t only through t - s applications of
its step function, so ∂y_t/∂x_s is a product of t - s Jacobians; an attention layer
reaches every input in one step. ``input_jacobian_norms`` measures ‖∂y_t/∂x_s‖_F for every
s, whatever the model, and ``norms_by_distance`` lines the result up by the distance
k = t - s, the quantity behind the "maximum path length" column of Vaswani et al. (2017,
Table 1).

Inputs are batch-first, (batch, seq, d_in). The model must treat the sequences of a batch
independently (no batch normalisation, no mixing across the batch axis): the Jacobian of
a summed output then separates into one Jacobian per sequence.
"""
from __future__ import annotations

from typing import Callable

import torch

from .attention._checks import check_rank

Tensor = torch.Tensor


# --8<-- [start:jacobian]
def input_jacobian_norms(fn: Callable[[Tensor], Tensor], inputs: Tensor,
                         position: int | None = None) -> Tensor:
    """‖∂ y_t / ∂ x_s‖_F for every sequence b and input position s: returns (batch, seq).

    ``fn`` maps inputs (batch, seq, d_in) to outputs (batch, seq_out, d_out), of which
    output position ``position`` (t) is used, or to (batch, d_out) with ``position=None``.
    One backward pass per output unit o gives row o of every Jacobian at once:
    ∂ y_t[o] / ∂ x_s for all s. The squares of those rows add up to ‖J‖_F².
    """
    check_rank("inputs", inputs, 3, "(batch, seq, d_in)")
    x = inputs.detach().clone().requires_grad_(True)
    out = fn(x)
    if out.dim() == 3:
        if position is None:
            raise ValueError(f"fn returned (batch, seq_out, d_out) = {tuple(out.shape)}; "
                             f"say which output position to differentiate with position=...")
        if not -out.shape[1] <= position < out.shape[1]:
            raise ValueError(f"position={position} is out of range for {out.shape[1]} output positions")
        out = out[:, position]
    elif out.dim() != 2 or position is not None:
        raise ValueError(f"fn must return (batch, d_out), or (batch, seq_out, d_out) with a position; "
                         f"got shape {tuple(out.shape)} and position={position}")
    if out.shape[0] != x.shape[0]:
        raise ValueError(f"fn changed the batch size from {x.shape[0]} to {out.shape[0]}")
    squares = torch.zeros(x.shape[:2], dtype=x.dtype, device=x.device)   # (batch, seq)
    for o in range(out.shape[-1]):
        # summing over the batch is safe because sequences do not interact
        (row,) = torch.autograd.grad(out[:, o].sum(), x, retain_graph=True)  # (batch, seq, d_in)
        squares += row.pow(2).sum(-1)
    return squares.sqrt()


def norms_by_distance(norms: Tensor, position: int) -> Tensor:
    """Line up (batch, seq) Jacobian norms by distance k = position - s, for s = position, ..., 0.

    Returns (batch, position + 1): column k holds ‖∂y_t/∂x_{t-k}‖. Inputs after the output
    position (s > t) are dropped; in a causal model their Jacobian is zero.
    """
    check_rank("norms", norms, 2, "(batch, seq)")
    if not 0 <= position < norms.shape[1]:
        raise ValueError(f"position={position} is out of range for {norms.shape[1]} input positions")
    return norms[:, : position + 1].flip(-1)
# --8<-- [end:jacobian]
