"""EfficientFormerV2: S0, S1, S2, L.  Li et al., "Rethinking Vision Transformers for MobileNet Size and Speed", 2022.

Every block is a Conv-BN FFN with a depthwise 3x3 in the middle; the last ``num_vit`` blocks of stages 3 and 4
add a 4-D attention mixer in front (stage 3 attends on a stride-2 grid and upsamples back). The last downsample
is dual-path: a stride-2 ConvNorm plus attention whose queries come from the halved grid.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .base import EfficientFormerBase, ModelSpec
from .layers import (
    ACTIVATIONS,
    ConvMlp,
    ConvNorm,
    DropPath,
    Grid,
    LayerScale,
    RelPosBias,
    Stem,
    ceil_div,
    drop_path_rates,
    init_linear,
)


def _ratios(*stages: list[int]) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(r) for r in s) for s in stages)


#: Widths, depths, attention blocks per stage (3 and 4), drop path, and the searched per-block FFN expansion.
V2_VARIANTS: dict[str, ModelSpec] = {
    "efficientformerv2_s0": ModelSpec(
        "efficientformerv2_s0",
        "v2",
        (32, 48, 96, 176),
        (2, 2, 6, 4),
        num_vit=2,
        drop_path_rate=0.0,
        mlp_ratios=_ratios([4, 4], [4, 4], [4, 3, 3, 3, 4, 4], [4, 3, 3, 4]),
    ),
    "efficientformerv2_s1": ModelSpec(
        "efficientformerv2_s1",
        "v2",
        (32, 48, 120, 224),
        (3, 3, 9, 6),
        num_vit=2,
        drop_path_rate=0.0,
        mlp_ratios=_ratios([4, 4, 4], [4, 4, 4], [4, 4, 3, 3, 3, 3, 4, 4, 4], [4, 4, 3, 3, 4, 4]),
    ),
    "efficientformerv2_s2": ModelSpec(
        "efficientformerv2_s2",
        "v2",
        (32, 64, 144, 288),
        (4, 4, 12, 8),
        num_vit=4,
        drop_path_rate=0.02,
        mlp_ratios=_ratios([4] * 4, [4] * 4, [4, 4, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4], [4, 4, 3, 3, 3, 3, 4, 4]),
    ),
    "efficientformerv2_l": ModelSpec(
        "efficientformerv2_l",
        "v2",
        (40, 80, 192, 384),
        (5, 5, 15, 10),
        num_vit=6,
        drop_path_rate=0.1,
        mlp_ratios=_ratios(
            [4] * 5, [4] * 5, [4, 4, 4, 4, 3, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4], [4, 4, 4, 3, 3, 3, 3, 4, 4, 4]
        ),
    ),
}

LAYER_SCALE_INIT = 1e-5


class Attention2d(nn.Module):
    """Multi-head attention on NCHW maps with local V, talking heads and an optional stride-2 grid.

    Channels are head-major (channel = head * dim + c). With ``stride=2`` a depthwise stride-2 ConvNorm shrinks
    the map first and a bilinear x2 upsample restores it afterwards.
    """

    def __init__(
        self,
        dim: int,
        grid: Grid,
        stride: int = 1,
        key_dim: int = 32,
        num_heads: int = 8,
        attn_ratio: int = 4,
        act_layer: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.val_dim = key_dim * attn_ratio
        self.scale = key_dim**-0.5
        inner = num_heads * self.val_dim
        self.stride_conv = ConvNorm(dim, dim, 3, 2, 1, groups=dim) if stride > 1 else None
        attn_grid = (ceil_div(grid[0], stride), ceil_div(grid[1], stride))
        self.q = ConvNorm(dim, num_heads * key_dim)
        self.k = ConvNorm(dim, num_heads * key_dim)
        self.v = ConvNorm(dim, inner)
        self.v_local = ConvNorm(inner, inner, 3, 1, 1, groups=inner)
        self.talking_head1 = nn.Conv2d(num_heads, num_heads, 1)
        self.talking_head2 = nn.Conv2d(num_heads, num_heads, 1)
        self.act = act_layer()
        self.proj = ConvNorm(inner, dim)
        self.pos_bias = RelPosBias(num_heads, attn_grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride_conv is not None:
            x = self.stride_conv(x)
        B, _, H, W = x.shape
        N, nh = H * W, self.num_heads
        q = self.q(x).reshape(B, nh, self.key_dim, N).transpose(-2, -1)
        k = self.k(x).reshape(B, nh, self.key_dim, N)
        v = self.v(x)
        v_local = self.v_local(v)
        v = v.reshape(B, nh, self.val_dim, N).transpose(-2, -1)
        attn = (q @ k) * self.scale + self.pos_bias((H, W), (H, W))
        attn = self.talking_head2(self.talking_head1(attn).softmax(dim=-1))
        x = (attn @ v).transpose(-2, -1).reshape(B, nh * self.val_dim, H, W) + v_local
        if self.stride_conv is not None:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.proj(self.act(x))


class AttentionDownsample(nn.Module):
    """Attention whose queries live on the stride-2 grid: local (depthwise s2 conv) plus strided-subsample query."""

    def __init__(
        self,
        dim: int,
        out_dim: int,
        grid: Grid,
        key_dim: int = 16,
        num_heads: int = 8,
        attn_ratio: int = 4,
        act_layer: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.val_dim = key_dim * attn_ratio
        self.scale = key_dim**-0.5
        inner = num_heads * self.val_dim
        self.q_local = nn.Conv2d(dim, dim, 3, 2, 1, groups=dim)
        self.q = ConvNorm(dim, num_heads * key_dim)
        self.k = ConvNorm(dim, num_heads * key_dim)
        self.v = ConvNorm(dim, inner)
        self.v_local = ConvNorm(inner, inner, 3, 2, 1, groups=inner)
        self.act = act_layer()
        self.proj = ConvNorm(inner, out_dim)
        self.pos_bias = RelPosBias(num_heads, grid, query_stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        Hq, Wq = ceil_div(H, 2), ceil_div(W, 2)
        nh = self.num_heads
        # The official AvgPool2d(kernel 1, stride 2) is a strided subsample.
        q = self.q(self.q_local(x) + x[:, :, ::2, ::2]).reshape(B, nh, self.key_dim, Hq * Wq).transpose(-2, -1)
        k = self.k(x).reshape(B, nh, self.key_dim, H * W)
        v = self.v(x)
        v_local = self.v_local(v)
        v = v.reshape(B, nh, self.val_dim, H * W).transpose(-2, -1)
        attn = (q @ k) * self.scale + self.pos_bias((Hq, Wq), (H, W))
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(-2, -1).reshape(B, nh * self.val_dim, Hq, Wq) + v_local
        return self.proj(self.act(x))


class DualDownsample(nn.Module):
    """Stride-2 ConvNorm plus attention downsampling, summed."""

    def __init__(self, dim: int, out_dim: int, grid: Grid, act_layer: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.conv = ConvNorm(dim, out_dim, 3, 2, 1)
        self.attn = AttentionDownsample(dim, out_dim, grid, act_layer=act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x) + self.conv(x)


class Block(nn.Module):
    """FFN block (``attn=None``) or attention + FFN block; no pre-norms, BN lives inside the convs."""

    def __init__(
        self,
        dim: int,
        mlp_ratio: float,
        attn: nn.Module | None = None,
        drop_path: float = 0.0,
        act_layer: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.attn = attn
        self.ls1 = LayerScale(dim, LAYER_SCALE_INIT) if attn is not None else None
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), mid_conv=True, act_layer=act_layer)
        self.ls2 = LayerScale(dim, LAYER_SCALE_INIT)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn is not None and self.ls1 is not None:
            x = x + self.drop_path(self.ls1(self.attn(x)))
        return x + self.drop_path(self.ls2(self.mlp(x)))


class Stage(nn.Module):
    def __init__(self, downsample: nn.Module, blocks: list[Block]) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and self.training:  # recompute each block's activations in the backward pass
            for block in self.blocks:
                x = checkpoint(block, x, use_reentrant=False)
            return x
        return self.blocks(x)


class EfficientFormerV2(EfficientFormerBase):
    def __init__(self, spec: ModelSpec, *, drop_path_rate: float | None = None, **kwargs: Any) -> None:
        super().__init__(spec, **kwargs)
        rate = spec.drop_path_rate if drop_path_rate is None else drop_path_rate
        dpr = drop_path_rates(spec.depths, rate)
        h, w = self.img_size
        grids = [(ceil_div(h, 2 ** (i + 2)), ceil_div(w, 2 ** (i + 2))) for i in range(4)]
        widths = spec.widths
        act_layer = ACTIVATIONS[spec.act]
        self.stem = Stem(self.in_chans, widths[0], act_layer)
        stages = []
        for i in range(4):
            if i == 0:
                downsample: nn.Module = nn.Identity()
            elif i < 3:
                downsample = ConvNorm(widths[i - 1], widths[i], 3, 2, 1)
            else:
                downsample = DualDownsample(widths[i - 1], widths[i], grids[2], act_layer)
            blocks = []
            for j in range(spec.depths[i]):
                global_block = spec.has_attention(i, j)
                attn = (
                    Attention2d(widths[i], grids[i], stride=2 if i == 2 else 1, act_layer=act_layer)
                    if global_block
                    else None
                )
                blocks.append(Block(widths[i], spec.mlp_ratios[i][j], attn, dpr[i][j], act_layer))
            stages.append(Stage(downsample, blocks))
        self.stages = nn.ModuleList(stages)
        self._build_head(nn.BatchNorm2d(self.num_features))
        self.apply(init_linear)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass (training only): less memory, more time."""
        for stage in self.stages:
            cast(Stage, stage).grad_checkpointing = enable

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is None:
            raise RuntimeError("a features_only model has no final norm")
        return self.norm(x)
