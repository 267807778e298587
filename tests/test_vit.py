"""The Vision Transformer of chapter 19: patches, the patch embedding, the class token, Fig. 7 measures."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbook.models.vit import (
    PatchEmbedding,
    ViT,
    encoder_layer_with_weights,
    mean_attention_distance,
    patch_centres,
    patchify,
    position_similarity,
    unpatchify,
)


def small_vit(**options):
    torch.manual_seed(0)
    return ViT(**{"image_size": 8, "patch_size": 2, "d_model": 16, "num_heads": 2, "num_layers": 2,
                  "d_ff": 32, **options}).eval()


def test_vit_maps_images_to_class_logits():
    model = small_vit(num_classes=7)
    assert model(torch.rand(5, 8, 8)).shape == (5, 7)          # (batch, H, W): one channel
    assert model(torch.rand(5, 1, 8, 8)).shape == (5, 7)       # (batch, C, H, W)


def test_vit_returns_one_attention_map_per_layer_over_class_token_and_patches():
    model = small_vit(num_layers=3)
    logits, attentions = model(torch.rand(4, 8, 8), return_attentions=True)
    assert len(attentions) == 3
    for weights in attentions:
        assert weights.shape == (4, 2, 17, 17)                 # T = 1 + (8/2)**2
        torch.testing.assert_close(weights.sum(-1), torch.ones(4, 2, 17))
    assert logits.shape == (4, 10)


def test_weights_path_equals_the_encoder_layer():
    model = small_vit()
    x = torch.randn(3, 17, 16)
    for layer in model.encoder.layers:
        out, _ = encoder_layer_with_weights(layer, x)
        # the fused kernel and the explicit softmax sum in different orders: float32 rounding
        # of values of order 1, so 1e-5 is ample
        torch.testing.assert_close(out, layer(x), atol=1e-5, rtol=1e-5)


def test_logits_with_and_without_attentions_agree():
    model, images = small_vit(), torch.rand(3, 8, 8)
    logits, _ = model(images, return_attentions=True)
    torch.testing.assert_close(logits, model(images), atol=1e-5, rtol=1e-5)


def test_the_head_reads_only_the_class_token():
    # The head's input is z_L^0: the gradient of the logits w.r.t. the encoder's output is
    # exactly zero on every patch token and not on the class token.
    model = small_vit()
    z = model.encoder(model.embed(torch.rand(2, 8, 8))).detach().requires_grad_(True)
    model.head(z[:, 0]).sum().backward()
    assert z.grad[:, 1:].abs().max() == 0
    assert z.grad[:, 0].abs().max() > 0


def test_class_token_and_positions_reach_every_token_in_the_embedding():
    model = small_vit()
    with torch.no_grad():
        model.class_token.fill_(3.0)
    z0 = model.embed(torch.zeros(2, 8, 8))
    torch.testing.assert_close(z0[:, 0], 3.0 + model.pos_embed[0, 0].expand(2, -1))
    patch_bias = model.patch_embed.proj.bias
    torch.testing.assert_close(z0[:, 1:], (patch_bias + model.pos_embed[0, 1:]).expand(2, -1, -1))


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 3), channels=st.integers(1, 3), patch=st.sampled_from([1, 2, 4]),
       grid_h=st.integers(1, 3), grid_w=st.integers(1, 3))
def test_unpatchify_inverts_patchify(batch, channels, patch, grid_h, grid_w):
    images = torch.randn(batch, channels, grid_h * patch, grid_w * patch)
    patches = patchify(images, patch)
    assert patches.shape == (batch, grid_h * grid_w, channels * patch * patch)
    assert torch.equal(unpatchify(patches, patch, height=grid_h * patch, width=grid_w * patch), images)


def test_patches_are_row_major_and_flattened_channel_row_column():
    images = torch.arange(2 * 4 * 4, dtype=torch.float32).view(1, 2, 4, 4)
    patches = patchify(images, 2)
    # patch 1 is the top-right 2x2 block; channel 0's four pixels come first, row by row
    assert patches[0, 1].tolist() == [2, 3, 6, 7, 18, 19, 22, 23]


def test_patch_embedding_is_a_strided_conv2d_exactly():
    # Integer-valued inputs and weights make every product and partial sum an integer below
    # 2**24, so float32 is exact whatever order the two implementations sum in: torch.equal.
    torch.manual_seed(0)
    embed = PatchEmbedding(patch_size=2, channels=3, d_model=5)
    with torch.no_grad():
        embed.proj.weight.copy_(torch.randint(-4, 5, embed.proj.weight.shape).float())
        embed.proj.bias.copy_(torch.randint(-4, 5, embed.proj.bias.shape).float())
    images = torch.randint(0, 17, (2, 3, 6, 8)).float()
    conv = embed.as_conv2d()(images)                                   # (batch, d_model, 3, 4)
    assert torch.equal(embed(images), conv.flatten(2).transpose(1, 2))


@pytest.mark.parametrize("call, message", [
    (lambda: patchify(torch.rand(1, 1, 8, 6), 4), "not divisible by patch_size=4"),
    (lambda: ViT(image_size=8, patch_size=3), "not divisible by patch_size=3"),
    (lambda: unpatchify(torch.rand(1, 5, 4), 2, height=4, width=4), "do not tile"),
    (lambda: small_vit()(torch.rand(2, 6, 6)), "image_size=8"),
    (lambda: small_vit()(torch.rand(2, 3, 8, 8)), "channels=1"),
    (lambda: patchify(torch.rand(8, 8), 2), "images"),
    (lambda: mean_attention_distance(torch.rand(1, 2, 16, 16), grid_size=4, patch_size=2), "T = 1"),
])
def test_bad_input_raises_a_named_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_patch_centres_are_in_pixels():
    assert patch_centres(2, 4).tolist() == [[1.5, 1.5], [1.5, 5.5], [5.5, 1.5], [5.5, 5.5]]


def test_attention_to_self_has_distance_zero_and_uniform_attention_the_mean_distance():
    eye = torch.eye(17).expand(1, 2, 17, 17)
    assert mean_attention_distance(eye, grid_size=4, patch_size=2).tolist() == [0.0, 0.0]
    uniform = torch.full((1, 1, 17, 17), 1 / 17)
    centres = patch_centres(4, 2)
    expected = torch.cdist(centres, centres).mean().item()   # class-token weight renormalised away
    assert math.isclose(mean_attention_distance(uniform, grid_size=4, patch_size=2).item(), expected,
                        rel_tol=1e-6)


def test_attention_to_the_right_neighbour_is_one_patch_width():
    # a 2x2 grid in which every patch attends to its horizontal neighbour, patch_size pixels away
    attn = torch.zeros(1, 1, 5, 5)
    attn[0, 0, 0, 0] = 1
    for query, key in ((1, 2), (2, 1), (3, 4), (4, 3)):
        attn[0, 0, query, key] = 1
    assert mean_attention_distance(attn, grid_size=2, patch_size=4).tolist() == [4.0]


def test_position_similarity_is_cosine():
    embed = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    assert position_similarity(embed).tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 1]]
