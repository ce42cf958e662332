"""EfficientFormer (V1): L1, L3, L7.  Li et al., "EfficientFormer: Vision Transformers at MobileNet Speed", 2022.

Stages 1-3 are Meta4D blocks (pooling mixer + Conv-BN MLP on NCHW maps). Stage 4 ends with ``num_vit`` Meta3D
blocks (LayerNorm + multi-head self-attention with a learned offset bias, LayerNorm + linear MLP) on the flattened
tokens; the flatten happens once, before the first Meta3D block.
"""

from __future__ import annotations

from typing import Any, cast

import torch
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
    drop_path_rates,
    init_linear,
)

#: name -> (widths, depths, Meta3D blocks in stage 4). Drop path is 0 in the official training code.
V1_VARIANTS: dict[str, ModelSpec] = {
    "efficientformer_l1": ModelSpec("efficientformer_l1", "v1", (48, 96, 224, 448), (3, 2, 6, 4), num_vit=1),
    "efficientformer_l3": ModelSpec("efficientformer_l3", "v1", (64, 128, 320, 512), (4, 4, 12, 6), num_vit=4),
    "efficientformer_l7": ModelSpec("efficientformer_l7", "v1", (96, 192, 384, 768), (6, 6, 18, 8), num_vit=8),
}

MLP_RATIO = 4
LAYER_SCALE_INIT = 1e-5


class PoolMixer(nn.Module):
    """3x3 average pooling minus identity (the residual adds the identity back)."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x) - x


class Meta4D(nn.Module):
    def __init__(self, dim: int, drop_path: float = 0.0, act_layer: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.mixer = PoolMixer()
        self.ls1 = LayerScale(dim, LAYER_SCALE_INIT)
        self.mlp = ConvMlp(dim, dim * MLP_RATIO, act_layer=act_layer)
        self.ls2 = LayerScale(dim, LAYER_SCALE_INIT)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.ls1(self.mixer(x)))
        return x + self.drop_path(self.ls2(self.mlp(x)))


class Attention(nn.Module):
    """LeViT-style attention on tokens: q, k, v interleaved per head in one projection; inner width 1024."""

    def __init__(self, dim: int, grid: Grid, key_dim: int = 32, num_heads: int = 8, attn_ratio: int = 4) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.val_dim = key_dim * attn_ratio
        self.scale = key_dim**-0.5
        self.qkv = nn.Linear(dim, num_heads * (2 * key_dim + self.val_dim))
        self.proj = nn.Linear(num_heads * self.val_dim, dim)
        self.pos_bias = RelPosBias(num_heads, grid)

    def forward(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        B, N, _ = x.shape
        kd, vd = self.key_dim, self.val_dim
        # Explicit sizes and slicing (no -1, no split) keep batch-dynamic exports happy.
        qkv = self.qkv(x).reshape(B, N, self.num_heads, 2 * kd + vd).permute(0, 2, 1, 3)
        q, k, v = qkv[..., :kd], qkv[..., kd : 2 * kd], qkv[..., 2 * kd :]
        attn = (q @ k.transpose(-2, -1)) * self.scale + self.pos_bias(grid, grid)
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, self.num_heads * vd)
        return self.proj(x)


class LinearMlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0, act_layer: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Meta3D(nn.Module):
    def __init__(self, dim: int, grid: Grid, drop_path: float = 0.0, act_layer: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, grid)
        self.ls1 = LayerScale(dim, LAYER_SCALE_INIT, channels_first=False)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = LinearMlp(dim, dim * MLP_RATIO, act_layer=act_layer)
        self.ls2 = LayerScale(dim, LAYER_SCALE_INIT, channels_first=False)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x), grid)))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


class Stage(nn.Module):
    """Optional stride-2 ConvNorm downsample, Meta4D blocks, then (last stage only) Meta3D blocks on tokens."""

    def __init__(
        self,
        in_dim: int,
        dim: int,
        depth: int,
        num_vit: int,
        grid: Grid,
        dpr: list[float],
        downsample: bool,
        act_layer: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.downsample = ConvNorm(in_dim, dim, 3, 2, 1) if downsample else nn.Identity()
        self.grad_checkpointing = False
        self.num_4d = depth - num_vit
        self.blocks = nn.ModuleList(
            [
                Meta4D(dim, dpr[i], act_layer) if i < self.num_4d else Meta3D(dim, grid, dpr[i], act_layer)
                for i in range(depth)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        recompute = self.grad_checkpointing and self.training  # activations recomputed in the backward pass
        x = self.downsample(x)
        for block in self.blocks[: self.num_4d]:
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
        if self.num_4d == len(self.blocks):
            return x
        B, C, H, W = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        for block in self.blocks[self.num_4d :]:
            tokens = checkpoint(block, tokens, (H, W), use_reentrant=False) if recompute else block(tokens, (H, W))
        return tokens.transpose(1, 2).reshape(B, C, H, W)


class EfficientFormer(EfficientFormerBase):
    def __init__(self, spec: ModelSpec, *, drop_path_rate: float | None = None, **kwargs: Any) -> None:
        super().__init__(spec, **kwargs)
        rate = spec.drop_path_rate if drop_path_rate is None else drop_path_rate
        dpr = drop_path_rates(spec.depths, rate)
        grid = (self.img_size[0] // 32, self.img_size[1] // 32)
        act_layer = ACTIVATIONS[spec.act]
        self.stem = Stem(self.in_chans, spec.widths[0], nn.ReLU)  # ReLU as published, whatever spec.act says
        self.stages = nn.ModuleList(
            Stage(
                spec.widths[max(i - 1, 0)],
                spec.widths[i],
                spec.depths[i],
                spec.num_vit if i == 3 else 0,
                grid,
                dpr[i],
                downsample=i > 0,
                act_layer=act_layer,
            )
            for i in range(4)
        )
        self._build_head(nn.LayerNorm(self.num_features))
        self.apply(init_linear)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass (training only): less memory, more time."""
        for stage in self.stages:
            cast(Stage, stage).grad_checkpointing = enable

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        # LayerNorm over channels, as on the official tokens; kept in NCHW so both families look alike.
        if self.norm is None:
            raise RuntimeError("a features_only model has no final norm")
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
