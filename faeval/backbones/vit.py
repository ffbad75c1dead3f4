"""ViT-Mini: a small pre-LayerNorm vision transformer whose hidden state is the token tensor."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from faeval.backbones.base import LayeredBackbone
from faeval.errors import ConfigError


class PatchEmbed(nn.Module):
    """h_0: non-overlapping patches projected to d, plus learned position embeddings.

    With ``pool="cls"`` a learned class token is prepended, so h_0 has one token more.
    """

    def __init__(
        self,
        channels: int,
        image_size: tuple[int, int],
        patch_size: int,
        d_model: int,
        cls_token: bool,
        init_std: float,
    ) -> None:
        super().__init__()
        rows, cols = image_size[0] // patch_size, image_size[1] // patch_size
        self.proj = nn.Conv2d(channels, d_model, kernel_size=patch_size, stride=patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, d_model)) if cls_token else None
        self.pos = nn.Parameter(torch.zeros(1, rows * cols + int(cls_token), d_model))
        nn.init.trunc_normal_(self.pos, std=init_std)
        if self.cls is not None:
            nn.init.trunc_normal_(self.cls, std=init_std)

    @override
    def forward(self, x: Tensor) -> Tensor:
        tokens = self.proj(x).flatten(2).transpose(1, 2)  # (B, d, R, C) -> (B, R·C, d)
        if self.cls is not None:
            tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], dim=1)  # (B, T, d)
        return tokens + self.pos


class SelfAttention(nn.Module):
    """Multi-head self-attention over all tokens (no mask, no dropout)."""

    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    @override
    def forward(self, h: Tensor) -> Tensor:
        b, t, d = h.shape
        qkv = self.qkv(h).view(b, t, 3, self.num_heads, d // self.num_heads)  # (B, T, 3, H, d/H)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, T, d/H)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, T, d/H)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))  # (B, T, d)


class TransformerBlock(nn.Module):
    """The block map of a pre-LN transformer block, written so that h + F(h) is the block.

    A pre-LN block computes u = h + Attn(LN₁(h)), then u + MLP(LN₂(u)). Its map is therefore
    F(h) = a + MLP(LN₂(h + a)) with a = Attn(LN₁(h)): both residual branches, and
    h_l = h_{l-1} + F_l(h_{l-1}) holds exactly.
    """

    def __init__(self, d_model: int, num_heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, num_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_ratio * d_model),
            nn.GELU(),
            nn.Linear(mlp_ratio * d_model, d_model),
        )

    @override
    def forward(self, h: Tensor) -> Tensor:
        a = self.attn(self.ln1(h))  # (B, T, d): the attention branch
        return a + self.mlp(self.ln2(h + a))  # (B, T, d): both branches, without h itself


class ViTMini(LayeredBackbone):
    """h_0 = patches·W + pos; h_l = h_{l-1} + F_l(h_{l-1}); logits = head(pool(LN(h_L))).

    The hidden state is the whole token tensor (B, T, d): diagnostics and feedback matrices
    treat it per sample, flattened (T·d = 64·128 = 8192 values at the defaults on 32×32).
    FA's dense |h_l|×|h_{l-1}| feedback then takes 8192² floats (256 MiB) per block; shrink
    ``d_model`` or grow ``patch_size`` for FA on CPU.

    Args:
        input_shape: (channels, height, width); height and width multiples of ``patch_size``.
        num_classes: C.
        patch_size: side of the square patches (4 on 32×32 gives 64 tokens).
        d_model: token width d.
        num_blocks: depth L.
        num_heads: attention heads (must divide ``d_model``).
        mlp_ratio: hidden width of each MLP branch, in multiples of d.
        pool: ``"mean"`` averages the tokens after the terminal LN; ``"cls"`` prepends a class
            token and reads it out.
        terminal_ln: apply LayerNorm before pooling and the head.
        init_std: std of the truncated-normal init of every linear weight and of the position
            embeddings (the patch projection keeps PyTorch's default init).

    Raises:
        ValueError: the input is not an image divisible into patches, or the heads do not
            divide d.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        patch_size: int = 4,
        d_model: int = 128,
        num_blocks: int = 4,
        num_heads: int = 4,
        mlp_ratio: int = 4,
        pool: Literal["mean", "cls"] = "mean",
        terminal_ln: bool = True,
        init_std: float = 0.02,
    ) -> None:
        super().__init__(input_shape, num_classes)
        if len(input_shape) != 3:
            raise ConfigError(
                f"ViTMini needs image inputs (channels, height, width), the data gives "
                f"{tuple(input_shape)}; pick image data (--data FashionMNIST, CIFAR10) or a "
                "vector backbone (--model.backbone ResMLP)"
            )
        if any(s % patch_size for s in input_shape[1:]):
            raise ConfigError(
                f"ViTMini cuts images into patches of {patch_size}×{patch_size}, which does not "
                f"divide {tuple(input_shape[1:])}; pass --model.backbone.patch_size with a "
                "divisor of both sides"
            )
        if num_blocks < 1 or d_model % num_heads:
            raise ConfigError(
                f"ViTMini needs num_blocks >= 1 and num_heads dividing d_model, got "
                f"num_blocks={num_blocks}, d_model={d_model}, num_heads={num_heads}"
            )
        self.residual_add = True
        self.pool = pool
        self.embed = PatchEmbed(
            input_shape[0], input_shape[1:], patch_size, d_model, pool == "cls", init_std
        )
        self.blocks = nn.ModuleList(
            TransformerBlock(d_model, num_heads, mlp_ratio) for _ in range(num_blocks)
        )
        self.out_ln = nn.LayerNorm(d_model) if terminal_ln else nn.Identity()
        self.head = nn.Linear(d_model, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=init_std)
                nn.init.zeros_(module.bias)

    @override
    def readout(self, h: Tensor) -> Tensor:
        h = self.out_ln(h)  # (B, T, d)
        pooled = h[:, 0] if self.pool == "cls" else h.mean(1)  # (B, d)
        return self.head(pooled)  # (B, C)
