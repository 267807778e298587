"""The Vision Transformer of Dosovitskiy et al. (2021, arXiv:2010.11929), small enough for a CPU.

An image is cut into non-overlapping ``patch_size`` x ``patch_size`` patches; each patch,
flattened, is one token. A learned linear map embeds the tokens, a learned class token is
put in front, learned position embeddings are added, and the book's pre-LN Transformer
encoder (``attnbook.models.transformer.Encoder``, chapter 7) does the rest; a linear head
reads the class token's final vector (§3.1 of the paper, equations 1-4).

Layout: images ``(batch, channels, height, width)`` (a 3-D ``(batch, height, width)`` batch
is taken as one channel), patches ``(batch, num_patches, channels * patch_size**2)`` in
row-major order over the patch grid, each patch flattened as ``(channel, row, column)``,
the same order as a ``Conv2d`` weight ``(out, in, kh, kw)``. Tokens are
``(batch, 1 + num_patches, d_model)``, the class token at index 0. There is no masking:
every token may attend to every token.

Also here, for the chapter's reproduction of the paper's Fig. 7: ``patch_centres``,
``mean_attention_distance`` and ``position_similarity``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..attention._checks import check_positive_int, check_rank, check_tensor
from .transformer import Encoder, EncoderLayer

Tensor = torch.Tensor


def _as_4d(images: Tensor) -> Tensor:
    check_tensor("images", images)
    if images.dim() == 3:
        return images[:, None]  # (batch, 1, height, width)
    check_rank("images", images, 4, "(batch, channels, height, width)")
    return images


def _check_patch_size(height: int, width: int, patch_size: int) -> None:
    check_positive_int("patch_size", patch_size)
    if height % patch_size or width % patch_size:
        raise ValueError(f"image size {height}x{width} is not divisible by patch_size={patch_size}")


# --8<-- [start:patchify]
def patchify(images: Tensor, patch_size: int) -> Tensor:
    """Cut images into flattened non-overlapping patches.

    images (batch, channels, H, W) or (batch, H, W) -> (batch, (H/p)·(W/p), channels·p·p),
    patches in row-major order over the grid, each flattened as (channel, row, column).
    """
    images = _as_4d(images)
    _check_patch_size(images.shape[-2], images.shape[-1], patch_size)
    return rearrange(images, "b c (gh ph) (gw pw) -> b (gh gw) (c ph pw)", ph=patch_size, pw=patch_size)


def unpatchify(patches: Tensor, patch_size: int, *, height: int, width: int) -> Tensor:
    """The inverse of ``patchify``: (batch, num_patches, c·p·p) -> (batch, c, height, width)."""
    check_rank("patches", patches, 3, "(batch, num_patches, channels * patch_size**2)")
    _check_patch_size(height, width, patch_size)
    grid_h, grid_w = height // patch_size, width // patch_size
    if patches.shape[1] != grid_h * grid_w or patches.shape[2] % (patch_size * patch_size):
        raise ValueError(f"patches of shape {tuple(patches.shape)} do not tile a {height}x{width} image "
                         f"with patch_size={patch_size} ({grid_h * grid_w} patches of c·{patch_size ** 2})")
    return rearrange(patches, "b (gh gw) (c ph pw) -> b c (gh ph) (gw pw)",
                     gh=grid_h, ph=patch_size, pw=patch_size)
# --8<-- [end:patchify]


# --8<-- [start:embedding]
class PatchEmbedding(nn.Module):
    """x_p E: one linear map applied to every flattened patch (equation 1 of the paper).

    (batch, channels, H, W) -> (batch, num_patches, d_model). The same map as a Conv2d with
    kernel size and stride ``patch_size`` whose weight is ``proj.weight`` reshaped to
    (d_model, channels, p, p) (tested); written as patchify + Linear to show that a
    patch is just a token.
    """

    def __init__(self, patch_size: int, channels: int, d_model: int, *, device=None, dtype=None):
        super().__init__()
        self.patch_size = check_positive_int("patch_size", patch_size)
        self.channels = check_positive_int("channels", channels)
        self.proj = nn.Linear(channels * patch_size * patch_size, check_positive_int("d_model", d_model),
                              device=device, dtype=dtype)

    def forward(self, images: Tensor) -> Tensor:
        images = _as_4d(images)
        if images.shape[1] != self.channels:
            raise ValueError(f"images have {images.shape[1]} channels, expected channels={self.channels}")
        return self.proj(patchify(images, self.patch_size))  # (batch, num_patches, d_model)

    def as_conv2d(self) -> nn.Conv2d:
        """The equivalent ``Conv2d(channels, d_model, kernel_size=p, stride=p)``, sharing no storage."""
        p, d_model = self.patch_size, self.proj.out_features
        conv = nn.Conv2d(self.channels, d_model, p, stride=p, device=self.proj.weight.device,
                         dtype=self.proj.weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(self.proj.weight.view(d_model, self.channels, p, p))
            conv.bias.copy_(self.proj.bias)
        return conv
# --8<-- [end:embedding]


# --8<-- [start:layer_weights]
def encoder_layer_with_weights(layer: EncoderLayer, x: Tensor) -> tuple[Tensor, Tensor]:
    """One pre-LN ``EncoderLayer`` step that also returns its attention weights.

    Computes what ``layer(x)`` computes, x + MHA(LN(x)) then + FFN(LN(.)), with the weights
    materialised: (out (batch, T, d_model), weights (batch, heads, T, T)).
    """
    if not layer.attn_block.norm_first:
        raise ValueError("encoder_layer_with_weights expects a pre-LN layer (norm_first=True)")
    attended, weights = layer.self_attn(layer.attn_block.norm(x), need_weights=True)
    x = x + layer.attn_block.dropout(attended)
    return layer.ff_block(x, layer.feed_forward), weights
# --8<-- [end:layer_weights]


# --8<-- [start:vit]
class ViT(nn.Module):
    """A Vision Transformer classifier (Dosovitskiy et al., 2021, §3.1).

    forward(images (batch, channels, H, W) or (batch, H, W)) -> logits (batch, num_classes);
    with ``return_attentions=True`` also a list, one per layer (bottom first), of the
    attention weights (batch, heads, T, T), T = 1 + num_patches, token 0 = class token.

        z_0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos       (1)
        z_l = pre-LN encoder layer l (MSA, then MLP)          (2), (3)
        y   = LN(z_L^0) W_head                                (4)
    """

    def __init__(self, *, image_size: int = 8, patch_size: int = 2, channels: int = 1,
                 num_classes: int = 10, d_model: int = 32, num_heads: int = 4, num_layers: int = 2,
                 d_ff: int = 64, dropout: float = 0.0, device=None, dtype=None):
        super().__init__()
        check_positive_int("image_size", image_size)
        _check_patch_size(image_size, image_size, patch_size)
        factory = {"device": device, "dtype": dtype}
        self.image_size, self.patch_size = image_size, patch_size
        self.grid_size = image_size // patch_size
        num_patches = self.grid_size ** 2
        self.patch_embed = PatchEmbedding(patch_size, channels, d_model, **factory)
        self.class_token = nn.Parameter(torch.zeros(1, 1, d_model, **factory))
        self.pos_embed = nn.Parameter(torch.empty(1, 1 + num_patches, d_model, **factory))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)  # small random: no position is preferred
        self.dropout = nn.Dropout(dropout)
        self.encoder = Encoder(num_layers, d_model, num_heads, d_ff, dropout=dropout, norm_first=True,
                               activation="gelu", **factory)  # ends with the final LN of (4)
        self.head = nn.Linear(d_model, check_positive_int("num_classes", num_classes), **factory)

    def embed(self, images: Tensor) -> Tensor:
        """Equation (1): images -> z_0 (batch, 1 + num_patches, d_model)."""
        images = _as_4d(images)
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"images are {images.shape[-2]}x{images.shape[-1]}, the model was built "
                             f"for image_size={self.image_size}")
        patches = self.patch_embed(images)                            # (batch, N, d_model)
        cls = self.class_token.expand(patches.shape[0], -1, -1)       # (batch, 1, d_model)
        return self.dropout(torch.cat([cls, patches], dim=1) + self.pos_embed)

    def forward(self, images: Tensor, *, return_attentions: bool = False):
        z = self.embed(images)
        attentions = []
        if return_attentions:
            for layer in self.encoder.layers:
                z, weights = encoder_layer_with_weights(layer, z)
                attentions.append(weights)
            z = self.encoder.norm(z)
        else:
            z = self.encoder(z)                                       # (batch, T, d_model)
        logits = self.head(z[:, 0])                                   # the class token only
        return (logits, attentions) if return_attentions else logits
# --8<-- [end:vit]


# --8<-- [start:distance]
def patch_centres(grid_size: int, patch_size: int) -> Tensor:
    """(grid_size**2, 2) pixel coordinates (row, column) of the patch centres, row-major."""
    check_positive_int("grid_size", grid_size)
    check_positive_int("patch_size", patch_size)
    index = torch.arange(grid_size, dtype=torch.float64) * patch_size + (patch_size - 1) / 2
    rows, cols = torch.meshgrid(index, index, indexing="ij")
    return torch.stack([rows.flatten(), cols.flatten()], dim=-1)


def mean_attention_distance(attn: Tensor, *, grid_size: int, patch_size: int,
                            num_prefix_tokens: int = 1) -> Tensor:
    """Mean attention distance in pixels, per head: (batch, heads, T, T) -> (heads,).

    For query patch i, sum_j a_ij ||c_i - c_j|| with c the patch centres, averaged over
    query patches and over the batch (the paper's Fig. 7, right). The first
    ``num_prefix_tokens`` tokens (the class token) are left out as queries and as keys; each
    query's weights on the patches are renormalised to sum to one.
    """
    check_rank("attn", attn, 4, "(batch, heads, T, T)")
    num_patches = grid_size ** 2
    if attn.shape[-1] != attn.shape[-2] or attn.shape[-1] != num_prefix_tokens + num_patches:
        raise ValueError(f"attn {tuple(attn.shape)} must be (batch, heads, T, T) with "
                         f"T = {num_prefix_tokens} + grid_size**2 = {num_prefix_tokens + num_patches}")
    patch_attn = attn[..., num_prefix_tokens:, num_prefix_tokens:].double()   # (batch, heads, N, N)
    patch_attn = patch_attn / patch_attn.sum(dim=-1, keepdim=True)
    centres = patch_centres(grid_size, patch_size).to(attn.device)
    distance = torch.cdist(centres, centres)                                  # (N, N) pixels
    per_query = (patch_attn * distance).sum(dim=-1)                           # (batch, heads, N)
    return per_query.mean(dim=(0, 2)).to(attn.dtype)
# --8<-- [end:distance]


# --8<-- [start:similarity]
def position_similarity(pos_embed: Tensor) -> Tensor:
    """Cosine similarity between learned position embeddings: (N, d) -> (N, N)."""
    check_rank("pos_embed", pos_embed, 2, "(num_positions, d_model)")
    unit = F.normalize(pos_embed, dim=-1)
    return unit @ unit.T
# --8<-- [end:similarity]
