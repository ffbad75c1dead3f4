"""ViTMini: the block map is the pre-LN transformer block, the state is the token tensor."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from faeval.backbones import ViTMini


def test_defaults_give_64_tokens_of_width_128_at_every_layer():
    vit = ViTMini((3, 32, 32), 10)
    assert vit.num_blocks == 4 and vit.residual_add
    assert vit.state_shapes() == [(64, 128)] * 5
    assert isinstance(vit.out_ln, nn.LayerNorm)
    assert ViTMini((3, 32, 32), 10, pool="cls").state_shapes() == [(65, 128)] * 5


def test_residual_add_of_the_block_map_is_the_two_step_pre_ln_block():
    vit = ViTMini((3, 16, 16), 5, d_model=16, num_heads=2, num_blocks=1).double()
    block = vit.blocks[0]
    h = torch.randn(3, 16, 16, dtype=torch.float64)
    # The textbook pre-LN block: u = h + Attn(LN1(h)); out = u + MLP(LN2(u)).
    u = h + block.attn(block.ln1(h))
    expected = u + block.mlp(block.ln2(u))
    torch.testing.assert_close(vit.combine(h, block(h)), expected, rtol=1e-12, atol=1e-12)


def test_attention_equals_torch_multihead_attention():
    vit = ViTMini((3, 16, 16), 5, d_model=16, num_heads=4, num_blocks=1).double()
    ours = vit.blocks[0].attn
    ref = nn.MultiheadAttention(16, 4, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.qkv.weight)
        ref.in_proj_bias.copy_(ours.qkv.bias.normal_())
        ref.out_proj.weight.copy_(ours.proj.weight)
        ref.out_proj.bias.copy_(ours.proj.bias.normal_())
    h = torch.randn(2, 7, 16, dtype=torch.float64)
    torch.testing.assert_close(ours(h), ref(h, h, h, need_weights=False)[0])


def test_readout_pools_the_normalised_tokens():
    vit = ViTMini((3, 8, 8), 3, d_model=8, num_heads=2, num_blocks=1)
    h = torch.randn(4, 4, 8)
    torch.testing.assert_close(
        vit.readout(h),
        vit.head(nn.functional.layer_norm(h, (8,), vit.out_ln.weight, vit.out_ln.bias).mean(1)),
    )
    cls = ViTMini((3, 8, 8), 3, d_model=8, num_heads=2, num_blocks=1, pool="cls", terminal_ln=False)
    torch.testing.assert_close(cls.readout(h), cls.head(h[:, 0]))


def test_the_embedding_is_patches_plus_positions():
    vit = ViTMini((1, 4, 4), 2, patch_size=2, d_model=4, num_heads=1, num_blocks=1)
    x = torch.randn(1, 1, 4, 4)
    w, b = vit.embed.proj.weight.view(4, 4), vit.embed.proj.bias
    patches = x.view(2, 2, 2, 2).permute(0, 2, 1, 3).reshape(4, 4)  # row-major 2×2 patches
    torch.testing.assert_close(vit.embed(x)[0], patches @ w.T + b + vit.embed.pos[0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"input_shape": (3, 30, 30)}, "4×4, which does not divide.*patch_size"),
        ({"input_shape": (64,)}, "image inputs.*--model.backbone ResMLP"),
        ({"num_heads": 3}, "num_heads dividing d_model"),
    ],
)
def test_bad_shapes_are_refused_with_the_way_out(kwargs, match):
    args = {"input_shape": (3, 32, 32), "num_classes": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        ViTMini(**args)
