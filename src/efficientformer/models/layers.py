"""Building blocks shared by both EfficientFormer families.

Every convolution in these models is followed by BatchNorm, so ``ConvNorm`` is the unit the deploy step folds.
The attention bias is a learned table over (|Δrow|, |Δcol|) offsets; ``RelPosBias`` resamples that table to
whatever grid the input produces, which is what lets a model built at one resolution run at another.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Grid = tuple[int, int]

#: The activation every GELU of a model can be swapped for (``create_model(name, act=...)``, or the name suffix
#: ``efficientformerv2_s0_relu``). GELU is the published one; ReLU and Hardswish are the ones INT8 backends fold
#: into the quantised convolution (PT2E's x86 quantizer, oneDNN post-ops), where a GELU runs in float between a
#: dequantize and a quantize. Activations have no weights, so any variant loads the GELU model's state dict.
ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU, "hardswish": nn.Hardswish}


def check_activation(name: object) -> str:
    """``name`` if it is one of :data:`ACTIVATIONS`, else a one-line ``ValueError`` listing them."""
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(f"act must be one of {', '.join(ACTIVATIONS)}, got {name!r}")
    return name


def to_grid(size: int | tuple[int, int] | list[int]) -> Grid:
    """Normalise an ``int`` or ``(h, w)`` pair to a ``(h, w)`` tuple."""
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


def ceil_div(value: int, divisor: int) -> int:
    return -(-value // divisor)


NETWORK_STRIDE = 32  # the last stage's stride: every network here takes inputs whose sides are multiples of it


def fit_img_size(size: int | tuple[int, int] | list[int]) -> Grid:
    """The smallest ``(h, w)`` at least ``size`` whose sides are positive multiples of :data:`NETWORK_STRIDE`."""
    h, w = to_grid(size)
    return (
        max(NETWORK_STRIDE, ceil_div(h, NETWORK_STRIDE) * NETWORK_STRIDE),
        max(NETWORK_STRIDE, ceil_div(w, NETWORK_STRIDE) * NETWORK_STRIDE),
    )


def check_img_size(size: int | tuple[int, int] | list[int], name: str = "img_size") -> Grid:
    """``size`` as ``(h, w)``, or a one-line ``ValueError`` (naming ``name``, the size and the nearest size that
    fits) when a side is not a positive multiple of :data:`NETWORK_STRIDE`."""
    h, w = to_grid(size)
    if h % NETWORK_STRIDE or w % NETWORK_STRIDE or h < NETWORK_STRIDE or w < NETWORK_STRIDE:
        fit_h, fit_w = fit_img_size((h, w))
        raise ValueError(
            f"{name} must have sides that are positive multiples of {NETWORK_STRIDE}, got {h}x{w}; "
            f"resize or pad to e.g. {fit_h}x{fit_w}"
        )
    return h, w


class ConvNorm(nn.Module):
    """Conv2d (with bias, as in the official models) followed by BatchNorm2d."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, groups=groups)
        self.bn = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class LayerScale(nn.Module):
    """Per-channel learned scale. Stored as ``(C,)``; ``channels_first`` broadcasts it over (B, C, H, W)."""

    def __init__(self, dim: int, init_value: float = 1e-5, channels_first: bool = True) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), float(init_value)))
        self.channels_first = channels_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale.view(-1, 1, 1) if self.channels_first else self.scale
        return x * scale


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample while training."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Stem(nn.Module):
    """Two stride-2 3x3 ConvNorm layers: 3 -> C/2 -> C, stride 4 in all."""

    def __init__(self, in_chs: int, out_chs: int, act_layer: type[nn.Module]) -> None:
        super().__init__()
        self.conv1 = ConvNorm(in_chs, out_chs // 2, 3, 2, 1)
        self.act1 = act_layer()
        self.conv2 = ConvNorm(out_chs // 2, out_chs, 3, 2, 1)
        self.act2 = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.conv2(self.act1(self.conv1(x))))


def offset_index(
    query_grid: Grid, key_grid: Grid, query_stride: int, device: torch.device | None = None
) -> torch.Tensor:
    """Index into a flattened ``(key_h, key_w)`` offset table for every (query, key) pair.

    A query at (r, c) sits at (stride*r, stride*c) on the key grid; its offset to a key (kr, kc) is
    (|stride*r - kr|, |stride*c - kc|), stored at ``row * key_w + col``. This is the closed form of the
    official enumeration, so official and timm tables line up with ours without a permutation.
    """
    qh, qw = query_grid
    kh, kw = key_grid
    qr = torch.arange(qh, device=device).repeat_interleave(qw) * query_stride
    qc = torch.arange(qw, device=device).repeat(qh) * query_stride
    kr = torch.arange(kh, device=device).repeat_interleave(kw)
    kc = torch.arange(kw, device=device).repeat(kh)
    return (qr[:, None] - kr[None, :]).abs() * kw + (qc[:, None] - kc[None, :]).abs()


def resample_bias_table(table: torch.Tensor, size: Grid) -> torch.Tensor:
    """Resample a ``(heads, h, w)`` offset table to ``(heads, *size)``.

    Corners are aligned so that offset 0 (a position attending to itself) keeps its learned value exactly and
    the largest offset maps to the largest offset.
    """
    if tuple(table.shape[-2:]) == tuple(size):
        return table
    src_dtype = table.dtype
    work = table.float() if src_dtype in (torch.float16, torch.bfloat16) else table
    out = F.interpolate(work.unsqueeze(0), size=size, mode="bicubic", align_corners=True).squeeze(0)
    return out.to(src_dtype)


class RelPosBias(nn.Module):
    """Learned attention bias ``table[h, |Δrow|, |Δcol|]`` that works on any grid.

    The table is a parameter of shape ``(heads, key_h, key_w)`` for the grid the model was built for. Nothing
    derived from it is cached: the gather runs in every forward, so the bias always reflects the current weights,
    device and dtype (loading weights in eval mode, EMA updates and ``.to()`` cannot leave it stale). Only the
    integer index for the native grid is kept, as a non-persistent buffer, because it depends on shapes alone.
    """

    native_index: torch.Tensor

    def __init__(self, num_heads: int, key_grid: Grid, query_stride: int = 1) -> None:
        super().__init__()
        self.query_stride = query_stride
        self.key_grid = key_grid
        self.query_grid = (ceil_div(key_grid[0], query_stride), ceil_div(key_grid[1], query_stride))
        self.table = nn.Parameter(torch.zeros(num_heads, *key_grid))
        self.register_buffer("native_index", offset_index(self.query_grid, key_grid, query_stride), persistent=False)

    def forward(self, query_grid: Grid, key_grid: Grid) -> torch.Tensor:
        """Bias of shape ``(heads, Nq, Nk)`` for the given grids."""
        if query_grid == self.query_grid and key_grid == self.key_grid:
            return self.table.flatten(1)[:, self.native_index]
        table = resample_bias_table(self.table, key_grid)
        index = offset_index(query_grid, key_grid, self.query_stride, device=table.device)
        return table.flatten(1)[:, index]

    def extra_repr(self) -> str:
        return f"heads={self.table.shape[0]}, key_grid={self.key_grid}, query_stride={self.query_stride}"


def drop_path_rates(depths: tuple[int, ...] | list[int], rate: float) -> list[list[float]]:
    """Linear stochastic-depth schedule over the global block index: rate * i / (total - 1)."""
    total = sum(depths)
    rates = [rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
    out, start = [], 0
    for depth in depths:
        out.append(rates[start : start + depth])
        start += depth
    return out


def init_linear(module: nn.Module) -> None:
    """Truncated-normal (std 0.02) weights and zero bias for every Linear, as the official models do."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def init_conv_trunc_normal(conv: nn.Conv2d) -> None:
    nn.init.trunc_normal_(conv.weight, std=0.02)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class ConvMlp(nn.Module):
    """1x1 ConvNorm -> act -> [depthwise 3x3 ConvNorm -> act] -> 1x1 ConvNorm (act: GELU as published).

    V1's Meta4D MLP has no middle conv; V2's FFN has it (``mid_conv=True``).
    """

    def __init__(
        self, dim: int, hidden: int, mid_conv: bool = False, drop: float = 0.0, act_layer: type[nn.Module] = nn.GELU
    ) -> None:
        super().__init__()
        self.fc1 = ConvNorm(dim, hidden, 1)
        self.act = act_layer()
        self.mid = ConvNorm(hidden, hidden, 3, 1, 1, groups=hidden) if mid_conv else None
        self.drop = nn.Dropout(drop)
        self.fc2 = ConvNorm(hidden, dim, 1)
        # The official code initialises the two 1x1 convs before the depthwise conv exists.
        init_conv_trunc_normal(self.fc1.conv)
        init_conv_trunc_normal(self.fc2.conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fc1(x))
        if self.mid is not None:
            x = self.act(self.mid(x))
        x = self.drop(x)
        return self.drop(self.fc2(x))
