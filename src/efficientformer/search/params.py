"""Exact parameter counts from an architecture alone (no model is built), for the search's size term.

The formulas mirror the module code in ``models/``; ``tests/test_search.py`` checks them against
``sum(p.numel() for p in model.parameters())`` for the published models and random subnets.
"""

from __future__ import annotations

from ..models.base import ModelSpec
from ..models.layers import ceil_div, to_grid

HEADS, KEY_DIM, ATTN_RATIO = 8, 32, 4  # Attention2d (V2) and Attention (V1)
DOWN_KEY_DIM = 16  # AttentionDownsample (V2)


def conv_norm(cin: int, cout: int, k: int = 1, groups: int = 1) -> int:
    """Conv2d with bias, then BatchNorm2d (weight and bias)."""
    return cout * (cin // groups) * k * k + cout + 2 * cout


def stem(width: int, in_chans: int = 3) -> int:
    return conv_norm(in_chans, width // 2, 3) + conv_norm(width // 2, width, 3)


def v2_ffn(width: int, hidden: int) -> int:
    """FFN block: fc1, depthwise mid, fc2 (all ConvNorm) and its layer scale."""
    return conv_norm(width, hidden) + conv_norm(hidden, hidden, 3, hidden) + conv_norm(hidden, width) + width


def v2_attention(width: int, attn_grid: tuple[int, int]) -> int:
    """Attention mixer of a block (stride conv counted by the caller), its layer scale included."""
    qk, inner = HEADS * KEY_DIM, HEADS * KEY_DIM * ATTN_RATIO
    talking = 2 * (HEADS * HEADS + HEADS)
    return (
        2 * conv_norm(width, qk)
        + conv_norm(width, inner)
        + conv_norm(inner, inner, 3, inner)
        + talking
        + conv_norm(inner, width)
        + HEADS * attn_grid[0] * attn_grid[1]
        + width
    )


def v2_dual_downsample(cin: int, cout: int, key_grid: tuple[int, int]) -> int:
    qk, inner = HEADS * DOWN_KEY_DIM, HEADS * DOWN_KEY_DIM * ATTN_RATIO
    attn = (
        (cin * 9 + cin)  # q_local: depthwise conv with bias, no norm
        + 2 * conv_norm(cin, qk)
        + conv_norm(cin, inner)
        + conv_norm(inner, inner, 3, inner)
        + conv_norm(inner, cout)
        + HEADS * key_grid[0] * key_grid[1]
    )
    return conv_norm(cin, cout, 3) + attn


def head(width: int, num_classes: int, distillation: bool, norm_params: int) -> int:
    if num_classes <= 0:
        return norm_params
    return norm_params + (2 if distillation else 1) * (width * num_classes + num_classes)


def count_params(
    spec: ModelSpec,
    img_size: int | tuple[int, int] = 224,
    num_classes: int = 1000,
    distillation: bool = True,
    in_chans: int = 3,
) -> int:
    """``sum(p.numel())`` of ``build_from_arch(spec, img_size=..., num_classes=..., distillation=...)``."""
    h, w = to_grid(img_size)
    grids = [(ceil_div(h, 2 ** (i + 2)), ceil_div(w, 2 ** (i + 2))) for i in range(4)]
    W, D = spec.widths, spec.depths
    total = stem(W[0], in_chans)
    if spec.family == "v2":
        for i in range(4):
            if i in (1, 2):
                total += conv_norm(W[i - 1], W[i], 3)
            elif i == 3:
                total += v2_dual_downsample(W[2], W[3], grids[2])
            for j in range(D[i]):
                total += v2_ffn(W[i], int(W[i] * spec.mlp_ratios[i][j]))
                if spec.has_attention(i, j):
                    stride = 2 if i == 2 else 1
                    attn_grid = (ceil_div(grids[i][0], stride), ceil_div(grids[i][1], stride))
                    total += v2_attention(W[i], attn_grid)
                    if stride > 1:
                        total += conv_norm(W[i], W[i], 3, W[i])
        return total + head(W[3], num_classes, distillation, 2 * W[3])
    # V1
    for i in range(4):
        if i > 0:
            total += conv_norm(W[i - 1], W[i], 3)
        n3d = spec.num_vit if i == 3 else 0
        for _ in range(D[i] - n3d):
            total += conv_norm(W[i], 4 * W[i]) + conv_norm(4 * W[i], W[i]) + 2 * W[i]
        for _ in range(n3d):
            qkv = HEADS * (2 * KEY_DIM + KEY_DIM * ATTN_RATIO)
            inner = HEADS * KEY_DIM * ATTN_RATIO
            attn = W[i] * qkv + qkv + inner * W[i] + W[i] + HEADS * grids[3][0] * grids[3][1]
            mlp = W[i] * 4 * W[i] + 4 * W[i] + 4 * W[i] * W[i] + W[i]
            total += 4 * W[i] + attn + mlp + 2 * W[i]
    return total + head(W[3], num_classes, distillation, 2 * W[3])
