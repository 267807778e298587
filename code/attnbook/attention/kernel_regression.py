"""Nadaraya–Watson kernel regression: attention before neural networks.

Given training pairs (x_j, y_j), the Nadaraya–Watson estimate at a query x is a weighted
average of the y_j, with weights that are a kernel of the distance between x and x_j,
normalised to sum to one (Nadaraya, 1964; Watson, 1964). With a Gaussian kernel of
bandwidth σ the weights are exactly a softmax of the scores -‖x - x_j‖² / (2σ²), which is
attention with queries x, keys x_j and values y_j.

Vectors are rows, as everywhere in the book: queries (..., n, d), keys (..., m, d),
values (..., m, d_v); weights (..., n, m), every row sums to 1. An optional boolean mask
broadcasting to (..., n, m) says which (query, key) pairs may interact (True = may attend).
"""
from __future__ import annotations

import torch
from torch import nn

from ._checks import check_tensor
from .dot_product import stable_softmax

Tensor = torch.Tensor


def _check_bandwidth(bandwidth: float | Tensor) -> Tensor | float:
    if isinstance(bandwidth, Tensor):
        if bandwidth.numel() != 1:
            raise ValueError(f"bandwidth must be a scalar, got a tensor of shape {tuple(bandwidth.shape)}")
        if not bool(bandwidth.detach() > 0):
            raise ValueError(f"bandwidth must be positive, got {bandwidth.item()}")
        return bandwidth.reshape(())
    if isinstance(bandwidth, bool) or not isinstance(bandwidth, (int, float)):
        raise TypeError(f"bandwidth must be a float or a scalar tensor, got {type(bandwidth).__name__}")
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be positive, got {bandwidth}")
    return float(bandwidth)


def _check_points(queries: Tensor, keys: Tensor) -> None:
    for name, x in (("queries", queries), ("keys", keys)):
        check_tensor(name, x)
        if x.dim() < 2:
            raise ValueError(f"{name} must have shape (..., count, dim) with one point per row, got "
                             f"shape {tuple(x.shape)}; for 1-D inputs use x[:, None]")
    if queries.shape[-1] != keys.shape[-1]:
        raise ValueError(f"queries and keys must have the same dim, got queries {tuple(queries.shape)} "
                         f"and keys {tuple(keys.shape)}")


# --8<-- [start:scores]
def gaussian_scores(queries: Tensor, keys: Tensor, bandwidth: float | Tensor) -> Tensor:
    """Scores -‖q_i - k_j‖² / (2σ²) of a Gaussian kernel: (..., n, d), (..., m, d) -> (..., n, m).

    exp(score) is the Gaussian kernel without its normalising constant, which cancels in
    the Nadaraya–Watson ratio.
    """
    _check_points(queries, keys)
    sigma = _check_bandwidth(bandwidth)
    sq_dist = (queries.unsqueeze(-2) - keys.unsqueeze(-3)).pow(2).sum(-1)  # (..., n, m)
    return -sq_dist / (2 * sigma**2)


def gaussian_scores_dot_product_form(queries: Tensor, keys: Tensor, bandwidth: float | Tensor) -> Tensor:
    """The same softmax as ``gaussian_scores``, written as a dot product plus a key bias.

    -‖q - k‖²/(2σ²) = q kᵀ/σ² - ‖k‖²/(2σ²) - ‖q‖²/(2σ²), and the last term is the same for
    every key of a row, so the softmax drops it. What remains is a dot-product score scaled
    by 1/σ² with a per-key bias: (..., n, d), (..., m, d) -> (..., n, m).
    """
    _check_points(queries, keys)
    sigma = _check_bandwidth(bandwidth)
    dot = queries @ keys.transpose(-2, -1)                       # (..., n, m)
    key_bias = keys.pow(2).sum(-1).unsqueeze(-2) / 2             # (..., 1, m)
    return (dot - key_bias) / sigma**2
# --8<-- [end:scores]


# --8<-- [start:nw]
def nadaraya_watson_weights(queries: Tensor, keys: Tensor, bandwidth: float | Tensor,
                            mask: Tensor | None = None) -> Tensor:
    """Gaussian-kernel weights softmax_j(-‖q_i - k_j‖² / 2σ²): (..., n, d), (..., m, d) -> (..., n, m).

    ``mask`` (boolean, True = may attend, broadcasting to (..., n, m)) gives forbidden pairs
    weight exactly 0; a row with nothing allowed gets all-zero weights.
    """
    scores = gaussian_scores(queries, keys, bandwidth)
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise TypeError("mask must be a boolean tensor (True = may attend)")
        scores = scores.masked_fill(~mask, float("-inf"))
    return stable_softmax(scores, dim=-1)


def nadaraya_watson(queries: Tensor, keys: Tensor, values: Tensor, *, bandwidth: float | Tensor,
                    mask: Tensor | None = None,
                    return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """The Nadaraya–Watson estimate at each query (and, with ``return_weights``, its weights).

    f(q_i) = Σ_j a_ij v_j with a_ij = K(q_i, k_j) / Σ_l K(q_i, k_l) and a Gaussian K.
    queries (..., n, d), keys (..., m, d), values (..., m, d_v) -> output (..., n, d_v), or
    ``(output, weights (..., n, m))`` with ``return_weights=True``. ``mask`` as in
    ``nadaraya_watson_weights``.
    """
    check_tensor("values", values)
    if values.dim() < 2 or values.shape[-2] != keys.shape[-2]:
        raise ValueError(f"values must have shape (..., m, d_v) with m = {keys.shape[-2]} keys, "
                         f"got {tuple(values.shape)}; for scalar targets use y[:, None]")
    weights = nadaraya_watson_weights(queries, keys, bandwidth, mask)
    out = weights @ values
    return (out, weights) if return_weights else out
# --8<-- [end:nw]


# --8<-- [start:module]
class NadarayaWatson(nn.Module):
    """Nadaraya–Watson pooling with one learned bandwidth σ = exp(log_bandwidth).

    The only parameter is the log of σ, so σ stays positive whatever the optimiser does.
    Train it with a mask that hides each training point from itself (leave-one-out):
    otherwise σ → 0 makes every training point predict its own target, a perfect and
    useless fit.
    """

    def __init__(self, bandwidth: float = 1.0):
        super().__init__()
        self.log_bandwidth = nn.Parameter(torch.tensor(float(_check_bandwidth(bandwidth))).log())

    @property
    def bandwidth(self) -> Tensor:
        return self.log_bandwidth.exp()

    def forward(self, queries: Tensor, keys: Tensor, values: Tensor,
                mask: Tensor | None = None, *,
                return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        return nadaraya_watson(queries, keys, values, bandwidth=self.bandwidth, mask=mask,
                               return_weights=return_weights)
# --8<-- [end:module]
