"""Data for the book's interactive attention explorer (docs/javascripts/explorer.js).

A chapter script gathers, for a few inputs, the attention weights of every layer and head
(and optionally the scaled scores before the softmax, the next-token logits of a causal
model, or the image a ViT's patches come from) and calls :func:`explorer_json`; the dict it
returns is written with ``ch.json("explorer", data)`` and embedded in a page with
``<div class="attn-explorer" data-src="../../generated/<slug>/explorer.json" markdown="0"></div>``.

The format (version 2) is a superset of the first one (chapter 17): ``model``, ``num_layers``,
``num_heads``, ``head_roles`` and ``sentences`` keep their meaning. It is described in full in
the module's docstring of :func:`explorer_json`.
"""
from __future__ import annotations

import base64
import io
import json
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

FORMAT_VERSION = 2
MAX_TOP_K = 50


def _array(value, what: str) -> np.ndarray:
    """A float64 numpy copy of a numpy array, torch tensor or nested list."""
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch here
        value = value.detach().cpu().double().numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what} is not a numeric array: {error}") from None


def _rounded(matrix: np.ndarray, decimals: int) -> list:
    """Nested lists of floats rounded to ``decimals``; non-finite entries become None (JSON null)."""
    out = np.round(matrix, decimals)
    listed = out.tolist()
    if np.isfinite(out).all():
        return listed

    def clean(x):
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x if math.isfinite(x) else None

    return clean(listed)


def _png_data_url(pixels) -> str:
    from PIL import Image

    img = _array(pixels, "image pixels")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    if img.ndim != 3 or img.shape[-1] not in (3, 4):
        raise ValueError(f"image pixels have shape {img.shape}; expected (H, W, 3) or (H, W)")
    if img.max() <= 1.0:
        img = img * 255.0
    img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(img).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _next_token(spec: Mapping[str, Any], seq: int, top_k: int, decimals: int, where: str) -> dict:
    if "logits" not in spec:
        raise ValueError(f"{where}: next_token needs 'logits'")
    logits = _array(spec["logits"], f"{where}: next_token logits")
    if logits.ndim != 2 or logits.shape[0] != seq:
        raise ValueError(f"{where}: next_token logits have shape {tuple(logits.shape)}; expected ({seq}, vocab) or ({seq}, k)")
    if "tokens" in spec:  # already kept: (T, k) with their display strings
        names = [list(map(str, row)) for row in spec["tokens"]]
        if len(names) != seq or any(len(row) != logits.shape[1] for row in names):
            raise ValueError(f"{where}: next_token tokens must be {seq} lists of {logits.shape[1]} strings")
        ids = None if spec.get("ids") is None else np.asarray(spec["ids"], dtype=np.int64)
        if ids is not None and ids.shape != logits.shape:
            raise ValueError(f"{where}: next_token ids have shape {ids.shape}; expected {logits.shape}")
        order = np.argsort(-logits, axis=1, kind="stable")[:, :top_k]
        kept = np.take_along_axis(logits, order, axis=1)
        names = [[names[i][j] for j in order[i]] for i in range(seq)]
        ids = None if ids is None else np.take_along_axis(ids, order, axis=1)
    elif "decode" in spec:  # full logits (T, V) and a decoder: keep the top_k
        decode: Callable[[int], str] = spec["decode"]
        k = min(top_k, logits.shape[1])
        ids = np.argsort(-logits, axis=1, kind="stable")[:, :k]
        kept = np.take_along_axis(logits, ids, axis=1)
        names = [[str(decode(int(i))) for i in row] for row in ids]
    else:
        raise ValueError(f"{where}: next_token needs 'tokens' (kept top-k) or 'decode' (full logits)")
    if not np.isfinite(kept).all():
        raise ValueError(f"{where}: next_token logits must be finite")
    out = {"tokens": names, "logits": _rounded(kept, decimals)}
    if ids is not None:
        out["ids"] = ids.astype(int).tolist()
    return out


def explorer_json(model: str, examples: Sequence[Mapping[str, Any]], *, causal: bool = False,
                  layer_names: Sequence[str] | None = None, head_names: Sequence[str] | None = None,
                  head_roles: Sequence[Sequence[str]] | None = None, scale: float | None = None,
                  top_k: int = 10, decimals: int = 3, max_kb: float = 600,
                  description: str | None = None) -> dict:
    """The explorer's data for a few inputs of one model, ready for ``ch.json``.

    Args:
        model: the model's name, shown by the widget and on saved PNGs.
        examples: one mapping per input, with
            ``tokens``: T display strings;
            ``attention``: (L, H, T, T) softmax weights (rows are queries, columns keys);
            ``text`` (optional): the label in the input menu (default: the tokens joined);
            ``scores`` (optional): the scaled scores q_i k_j^T / sqrt(d_k) (plus any additive
            position bias) before the mask, as an (L, H, T, T) array or a dict
            ``{(layer, head): (T, T)}`` for a few heads; -inf or NaN are stored as null;
            ``next_token`` (optional, causal models): either ``{"logits": (T, V), "decode": id -> str}``
            (the top_k are kept) or ``{"logits": (T, k), "tokens": [[str] * k] * T, "ids": (T, k)?}``;
            ``image`` (optional, a ViT): ``{"pixels": (H, W, 3) array (uint8, or float in [0, 1]),
            "patch_grid": [rows, cols], "first_patch": index of the first patch token (default 0)}``.
        causal: True for a decoder (key j > query i is masked: the widget greys it out).
        layer_names, head_names: L and H labels (default "layer 0", "head 0", ...).
        head_roles: optional [L][H] strings (e.g. a measured role), shown with the chosen head.
        scale: the factor applied to q k^T in ``scores`` (1/sqrt(d_k)); lets the stage view show
            the raw scores as well.
        top_k: next-token candidates kept per position (1..50).
        decimals: every float is rounded to this many decimals (3 keeps 0.001 steps of weight).
        max_kb: a ValueError is raised when the compact JSON would be larger than this.
        description: an optional one-line note the widget shows under its controls.

    Returns:
        A JSON-ready dict (lists, floats, str; no NaN) in the explorer's format, version 2.

    Raises:
        ValueError: on inconsistent shapes, weights outside [0, 1], bad names or a file too large.
    """
    if not examples:
        raise ValueError("explorer_json needs at least one example")
    if not 1 <= int(top_k) <= MAX_TOP_K:
        raise ValueError(f"top_k={top_k} must be between 1 and {MAX_TOP_K}")
    shape = None
    sentences = []
    for n, ex in enumerate(examples):
        where = f"example {n}"
        for key in ("tokens", "attention"):
            if key not in ex:
                raise ValueError(f"{where} has no {key!r}")
        tokens = [str(t) for t in ex["tokens"]]
        attn = _array(ex["attention"], f"{where}: attention")
        if attn.ndim != 4 or attn.shape[-1] != attn.shape[-2]:
            raise ValueError(f"{where}: attention has shape {tuple(attn.shape)}; expected (layers, heads, T, T)")
        num_layers, num_heads, seq, _ = attn.shape
        if shape is None:
            shape = (num_layers, num_heads)
        elif shape != (num_layers, num_heads):
            raise ValueError(f"{where}: attention has {num_layers} layers x {num_heads} heads; "
                             f"example 0 has {shape[0]} x {shape[1]}")
        if seq != len(tokens):
            raise ValueError(f"{where}: attention is over {seq} positions but there are {len(tokens)} tokens")
        if not np.isfinite(attn).all() or attn.min() < -1e-6 or attn.max() > 1 + 1e-6:
            raise ValueError(f"{where}: attention weights must be finite and in [0, 1]")
        item: dict[str, Any] = {"text": str(ex.get("text") or " ".join(tokens)), "tokens": tokens,
                                "attention": _rounded(np.clip(attn, 0.0, 1.0), decimals)}
        if ex.get("scores") is not None:
            scores = ex["scores"]
            grid: list[list[Any]] = [[None] * num_heads for _ in range(num_layers)]
            if isinstance(scores, Mapping):
                pairs = scores.items()
            else:
                full = _array(scores, f"{where}: scores")
                if full.shape != attn.shape:
                    raise ValueError(f"{where}: scores have shape {tuple(full.shape)}; expected {tuple(attn.shape)}")
                pairs = (((l, h), full[l, h]) for l in range(num_layers) for h in range(num_heads))
            for (l, h), matrix in pairs:
                if not (0 <= l < num_layers and 0 <= h < num_heads):
                    raise ValueError(f"{where}: scores for layer {l}, head {h} outside {num_layers} x {num_heads}")
                matrix = _array(matrix, f"{where}: scores of layer {l}, head {h}")
                if matrix.shape != (seq, seq):
                    raise ValueError(f"{where}: scores of layer {l}, head {h} have shape {matrix.shape}; "
                                     f"expected ({seq}, {seq})")
                grid[l][h] = _rounded(np.where(np.isnan(matrix), -np.inf, matrix), decimals)
            item["scores"] = grid
        if ex.get("next_token") is not None:
            item["next_token"] = _next_token(ex["next_token"], seq, int(top_k), decimals, where)
        if ex.get("image") is not None:
            image = ex["image"]
            rows, cols = (int(v) for v in image["patch_grid"])
            first = int(image.get("first_patch", 0))
            if rows < 1 or cols < 1 or first < 0 or first + rows * cols > seq:
                raise ValueError(f"{where}: a {rows} x {cols} patch grid from token {first} does not fit "
                                 f"in {seq} tokens")
            src = image.get("src") or _png_data_url(image["pixels"])
            item["image"] = {"src": src, "patch_grid": [rows, cols], "first_patch": first}
        sentences.append(item)
    num_layers, num_heads = shape
    data: dict[str, Any] = {"version": FORMAT_VERSION, "model": str(model), "num_layers": num_layers,
                            "num_heads": num_heads, "causal": bool(causal), "sentences": sentences}
    for key, names, count in (("layer_names", layer_names, num_layers), ("head_names", head_names, num_heads)):
        if names is not None:
            if len(names) != count:
                raise ValueError(f"{key} has {len(names)} names; the model has {count}")
            data[key] = [str(x) for x in names]
    if head_roles is not None:
        if len(head_roles) != num_layers or any(len(row) != num_heads for row in head_roles):
            raise ValueError(f"head_roles must be {num_layers} lists of {num_heads} strings")
        data["head_roles"] = [[str(x) for x in row] for row in head_roles]
    if scale is not None:
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale={scale} must be a positive number")
        data["scale"] = float(scale)
    if description:
        data["description"] = str(description)
    size_kb = explorer_size_kb(data)
    if size_kb > max_kb:
        raise ValueError(f"the explorer's JSON would be {size_kb:.0f} KB, over max_kb={max_kb:g}: use fewer or "
                         f"shorter examples, scores for a few heads only, or a smaller top_k")
    return data


def explorer_size_kb(data: Mapping[str, Any]) -> float:
    """The size of ``data`` as ``ch.json`` writes it (compact, sorted keys), in KB."""
    return len(json.dumps(data, separators=(",", ":"), sort_keys=True).encode("utf-8")) / 1024
