"""Front ends that let the library's ``EncoderDecoder`` read sound and images (chapter 20).

The Transformer of chapter 7 reads token ids through an embedding table. Nothing after
that table cares where its vectors came from, so another modality only needs another
first layer that turns its input into a sequence of ``d_model`` vectors:

* ``FrameEmbedding``: spectrogram frames (batch, frames, bins) -> (batch, frames, d_model),
  a linear map of each frame plus sinusoidal positions (time is a 1-D sequence);
* ``ConvPatchEmbedding``: images (batch, H, W) -> (batch, patches, d_model), a small
  convolutional stem whose feature map is cut into p x p patches read row by row;
* ``FeatureEncoderDecoder``: ``EncoderDecoder`` with such a front end in place of the
  source embedding; ``greedy_decode`` works on it unchanged;
* ``cross_attention_weights``: the decoder's cross-attention weights for given target
  inputs, read out of the trained model with hooks (batch, layers, heads, tgt_len, src_len).
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from ..attention._checks import check_positive_int, check_rank
from ..attention.positional import sinusoidal_encoding
from .transformer import EncoderDecoder, _check_dropout

Tensor = torch.Tensor


# --8<-- [start:frames]
class FrameEmbedding(nn.Module):
    """x_t = LayerNorm(f_t) W + b + PE(t): one vector per spectrogram frame f_t ∈ ℝ^bins.

    The LayerNorm per frame removes the frame's overall level (what a louder recording adds
    to every bin of a log spectrum), so the projection sees the shape of the spectrum: which
    bins stand out.
    """

    def __init__(self, num_bins: int, d_model: int, *, dropout: float = 0.0):
        super().__init__()
        self.num_bins = check_positive_int("num_bins", num_bins)
        self.norm = nn.LayerNorm(num_bins)
        self.proj = nn.Linear(num_bins, d_model)
        self.dropout = nn.Dropout(_check_dropout("dropout", dropout))

    def forward(self, frames: Tensor) -> Tensor:
        check_rank("frames", frames, 3, "(batch, frames, bins)")
        if frames.shape[-1] != self.num_bins:
            raise ValueError(f"frames have {frames.shape[-1]} bins, expected num_bins={self.num_bins}")
        x = self.proj(self.norm(frames))                                   # (batch, frames, d_model)
        positions = sinusoidal_encoding(x.shape[1], x.shape[2], dtype=x.dtype, device=x.device)
        return self.dropout(x + positions)
# --8<-- [end:frames]


# --8<-- [start:patches]
class ConvPatchEmbedding(nn.Module):
    """Images (batch, H, W) -> one vector per p x p patch (batch, (H/p)·(W/p), d_model).

    A small convolutional stem (two 3 x 3 convolutions with ReLU, as the CNN that gives
    Show, Attend and Tell its "annotation vectors", in miniature) lets each patch's vector
    describe its neighbourhood; a convolution with kernel = stride = p then cuts the
    feature map into patches, read row by row. Each patch gets the sinusoidal encoding of
    its column: the order a caption is read in is left to right.
    """

    def __init__(self, image_size: tuple[int, int], patch: int, d_model: int, *, channels: int = 16):
        super().__init__()
        self.patch = check_positive_int("patch", patch)
        height, width = image_size
        if height % patch or width % patch:
            raise ValueError(f"image_size {height} x {width} is not divisible by patch={patch}")
        self.grid = (height // patch, width // patch)                      # patch rows, columns
        self.stem = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, d_model, patch, stride=patch))             # one vector per patch
        columns = sinusoidal_encoding(self.grid[1], d_model)               # (grid columns, d_model)
        self.register_buffer("position", columns.repeat(self.grid[0], 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        check_rank("images", images, 3, "(batch, height, width)")
        if tuple(images.shape[1:]) != (self.grid[0] * self.patch, self.grid[1] * self.patch):
            raise ValueError(f"images must be {self.grid[0] * self.patch} x {self.grid[1] * self.patch}, "
                             f"got shape {tuple(images.shape)}")
        features = self.stem(images[:, None])                              # (batch, d_model, rows, cols)
        patches = rearrange(features, "b d gh gw -> b (gh gw) d")          # row by row
        return patches + self.position
# --8<-- [end:patches]


# --8<-- [start:model]
class FeatureEncoderDecoder(EncoderDecoder):
    """``EncoderDecoder`` whose source is not tokens but what ``frontend`` turns into vectors.

    forward(src, tgt_in (batch, tgt_len)) -> logits (batch, tgt_len, tgt_vocab), where
    ``frontend(src)`` is (batch, src_len, d_model): spectrogram frames for speech, image
    patches for captions. Everything after the source embedding is chapter 7's model.
    """

    def __init__(self, frontend: nn.Module, tgt_vocab: int, **transformer_options):
        super().__init__(1, tgt_vocab, **transformer_options)
        self.src_embed = frontend  # replaces the token table the parent built

    def encode(self, src: Tensor, src_key_padding_mask: Tensor | None = None) -> Tensor:
        """src (batch, ...) -> memory (batch, src_len, d_model)."""
        return self.encoder(self.src_embed(src), src_key_padding_mask)
# --8<-- [end:model]


# --8<-- [start:weights]
@torch.no_grad()
def cross_attention_weights(model: EncoderDecoder, src: Tensor, tgt_in: Tensor) -> Tensor:
    """Cross-attention weights of every decoder layer: (batch, layers, heads, tgt_len, src_len).

    Row i holds where the decoder looked while predicting token i + 1 from ``tgt_in[:, :i+1]``
    (pass the greedy output to see the alignment of the model's own transcription).
    A pre-hook turns on ``need_weights`` in each layer's cross-attention, and a hook keeps
    the weights it then returns; both are removed afterwards.
    """
    check_rank("tgt_in", tgt_in, 2, "(batch, tgt_len)")
    layers, captured, handles = model.decoder.layers, [], []

    def ask_for_weights(module, args, kwargs):
        return args, {**kwargs, "need_weights": True}

    def keep(module, args, output):
        captured.append(output[1])  # (batch, heads, tgt_len, src_len)

    try:
        for layer in layers:
            handles.append(layer.cross_attn.register_forward_pre_hook(ask_for_weights, with_kwargs=True))
            handles.append(layer.cross_attn.register_forward_hook(keep))
        was_training = model.training
        model.eval()
        model.decode(tgt_in, model.encode(src))
        model.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(captured, dim=1)
# --8<-- [end:weights]
