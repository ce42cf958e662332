"""Inference-only building blocks for the deploy form.

Each module here is the algebraic equivalent of one training-time block after every BatchNorm, layer scale,
LayerNorm affine, attention scale and head average has been folded into a neighbouring convolution or linear
layer (see :mod:`efficientformer.deploy.fuse`). What is left at run time is convolutions, linear layers, GELU,
LayerNorm without affine, softmax and the attention products, on a fixed attention grid whose bias is a buffer.

The modules are built empty (right shapes, zero weights) so that :func:`~efficientformer.deploy.load_deployed`
can rebuild the structure from a model name and fill it from a file; :func:`~efficientformer.deploy.deploy`
builds them the same way and then copies the folded tensors in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

Grid = tuple[int, int]


# ---------------------------------------------------------------------------------------------------------------
# One convolution + activation (+ residual add) that runs as a single oneDNN kernel on the CPU
# ---------------------------------------------------------------------------------------------------------------
_ACTIVATIONS = {"none": None, "relu": F.relu, "gelu": F.gelu, "hardswish": F.hardswish}  # all oneDNN post-ops


def _mkldnn_ready() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


class FusedConv2d(nn.Conv2d):
    """``act(conv(x))``, or ``conv(x) + residual``, with an optional fast path for CPU inference.

    The plain path is ordinary PyTorch (what exporters trace and what runs on GPUs). With ``cpu_kernels`` on, a
    float32 CPU forward instead calls oneDNN's fused convolution (``torch.ops.mkldnn._convolution_pointwise``)
    with the weight reordered once into oneDNN's blocked layout: the activation and the residual add happen
    inside the convolution kernel, and no weight is re-laid-out and no intermediate map allocated per call.
    At batch 1 on a CPU this removes more time than the convolutions themselves take (see benchmarks/README.md).
    The packed weight is a cache, never saved: it is rebuilt after ``.to()``/``load_state_dict``/in-place edits.
    """

    def __init__(
        self, in_chs: int, out_chs: int, k: int = 1, stride: int = 1, groups: int = 1, act: str = "none"
    ) -> None:
        super().__init__(in_chs, out_chs, k, stride, k // 2, groups=groups, bias=True)
        if act not in _ACTIVATIONS:
            raise ValueError(f"act must be one of {sorted(_ACTIVATIONS)}, got {act!r}")
        self.act = act
        self.cpu_kernels = False
        self._geometry = (list(self.padding), list(self.stride), list(self.dilation), self.groups)
        self._packed: dict[tuple[int, ...], torch.Tensor] = {}  # input shape -> weight in oneDNN's layout
        self._packed_key: tuple[int, int] | None = None

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.act == "none" else f", act={self.act}")

    def __getstate__(self) -> dict:
        # oneDNN's opaque tensors cannot be pickled or deep-copied; the cache is rebuilt on the next forward.
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state["_packed"], state["_packed_key"] = {}, None
        return state

    def _apply(self, fn, recurse=True):  # .to(), .half(), .cuda(): the cached layout is stale afterwards
        self._packed, self._packed_key = {}, None
        return super()._apply(fn, recurse)

    def _use_kernels(self, x: torch.Tensor) -> bool:
        return (
            self.cpu_kernels
            and type(x) is torch.Tensor  # not a FakeTensor / functional tensor / fx Proxy from an exporter
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
            and not torch.jit.is_tracing()
            and not torch.jit.is_scripting()
            and not torch.compiler.is_compiling()
            # a dispatch mode (FlopCounterMode, fake/debug modes) must see the ordinary aten ops it knows
            and _get_current_dispatch_mode() is None
        )

    def _packed_weight(self, x: torch.Tensor) -> torch.Tensor:
        # oneDNN picks the weight layout for a given input shape; a weight packed for another shape still works
        # but is re-laid-out inside every call, so the cache is per input shape (a few shapes at most).
        version = (self.weight._version, self.weight.data_ptr())
        if self._packed_key != version:
            self._packed, self._packed_key = {}, version
        shape = tuple(x.shape)
        packed = self._packed.get(shape)
        if packed is None:
            if len(self._packed) >= 8:
                self._packed.clear()
            weight = self.weight.detach().to_mkldnn()
            packed = self._packed[shape] = torch._C._nn.mkldnn_reorder_conv2d_weight(
                weight, *self._geometry, list(shape)
            )
        return packed

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if self._use_kernels(x):
            geometry = self._geometry
            if residual is not None and self.act == "none":
                return torch.ops.mkldnn._convolution_pointwise.binary(
                    x, residual, self._packed_weight(x), self.bias, *geometry, "add", None, None, [], None
                )
            y = torch.ops.mkldnn._convolution_pointwise(
                x, self._packed_weight(x), self.bias, *geometry, self.act, [], "none" if self.act == "gelu" else None
            )
            return y if residual is None else y + residual
        y = super().forward(x)
        act = _ACTIVATIONS[self.act]
        if act is not None:
            y = act(y)
        return y if residual is None else y + residual


def _conv(in_chs: int, out_chs: int, k: int = 1, stride: int = 1, groups: int = 1, act: str = "none") -> FusedConv2d:
    return FusedConv2d(in_chs, out_chs, k, stride, groups, act)


def set_cpu_kernels(module: nn.Module, enabled: bool) -> nn.Module:
    """Switch the oneDNN fast path of every :class:`FusedConv2d` inside ``module`` on or off (in place)."""
    if enabled and not _mkldnn_ready():
        enabled = False  # a torch build without oneDNN: the plain path is the only one
    for m in module.modules():
        if isinstance(m, FusedConv2d):
            m.cpu_kernels = enabled
            if not enabled:
                m._packed, m._packed_key = {}, None
    return module


# ---------------------------------------------------------------------------------------------------------------
# EfficientFormer (V1)
# ---------------------------------------------------------------------------------------------------------------
class PoolBlock(nn.Module):
    """Meta4D: ``x + s1*(pool(x) - x)`` (a lerp towards the pooled map), then ``x + fc2(gelu(fc1(x)))``.

    The second layer scale lives in ``fc2``'s output channels; the first one cannot be folded into anything
    (it scales a pooling difference), so it stays as a ``(C, 1, 1)`` buffer.
    """

    def __init__(self, dim: int, hidden: int, act: str = "gelu") -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.register_buffer("ls1", torch.zeros(dim, 1, 1))
        self.fc1 = _conv(dim, hidden, act=act)
        self.fc2 = _conv(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(x)
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            # exporters decompose lerp into Sub/Mul/Add plus a Where per block; the plain formula has no Where
            x = x + self.ls1 * (pooled - x)
        else:
            x = torch.lerp(x, pooled, self.ls1)  # one kernel in eager mode
        return self.fc2(self.fc1(x), residual=x)


class TokenAttention(nn.Module):
    """V1 attention with the query scale in ``qkv`` and the bias for one grid baked in; q/k/v interleaved per head."""

    def __init__(self, dim: int, grid: Grid, key_dim: int = 32, num_heads: int = 8, attn_ratio: int = 4) -> None:
        super().__init__()
        self.num_heads, self.key_dim, self.val_dim = num_heads, key_dim, key_dim * attn_ratio
        self.qkv = nn.Linear(dim, num_heads * (2 * key_dim + self.val_dim))
        self.proj = nn.Linear(num_heads * self.val_dim, dim)
        n = self.num_tokens = grid[0] * grid[1]  # fixed grid: static sizes keep traced graphs shape-free
        self.register_buffer("bias", torch.zeros(num_heads, n, n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N = self.num_tokens
        kd, vd = self.key_dim, self.val_dim
        # -1 for the batch: traced graphs (Core ML) cannot turn a traced batch size back into an int.
        qkv = self.qkv(x).reshape(-1, N, self.num_heads, 2 * kd + vd).permute(0, 2, 1, 3)
        q, k, v = qkv[..., :kd], qkv[..., kd : 2 * kd], qkv[..., 2 * kd :]
        # scale=1: the 1/sqrt(key_dim) factor is already in the query weights.
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias, scale=1.0)
        return self.proj(x.transpose(1, 2).reshape(-1, N, self.num_heads * vd))


class TokenBlock(nn.Module):
    """Meta3D: the LayerNorm affines live in ``qkv``/``fc1`` and the layer scales in ``proj``/``fc2``."""

    def __init__(self, dim: int, hidden: int, grid: Grid, eps: float = 1e-5, act: str = "gelu") -> None:
        super().__init__()
        self.dim, self.eps, self.act = dim, eps, _ACTIVATIONS[act]
        self.attn = TokenAttention(dim, grid)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(F.layer_norm(x, (self.dim,), eps=self.eps))
        return x + self.fc2(self.act(self.fc1(F.layer_norm(x, (self.dim,), eps=self.eps))))


class DeployStageV1(nn.Module):
    def __init__(
        self, in_dim: int, dim: int, depth: int, num_vit: int, grid: Grid, downsample: bool, act: str = "gelu"
    ) -> None:
        super().__init__()
        self.downsample = _conv(in_dim, dim, 3, 2) if downsample else nn.Identity()
        self.num_4d = depth - num_vit
        self.blocks = nn.ModuleList(
            [
                PoolBlock(dim, dim * 4, act) if i < self.num_4d else TokenBlock(dim, dim * 4, grid, act=act)
                for i in range(depth)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW in; NCHW out, or (B, N, C) tokens when the stage ends in attention blocks."""
        x = self.downsample(x)
        for block in self.blocks[: self.num_4d]:
            x = block(x)
        if self.num_4d == len(self.blocks):
            return x
        x = x.flatten(2).transpose(1, 2)
        for block in self.blocks[self.num_4d :]:
            x = block(x)
        return x


# ---------------------------------------------------------------------------------------------------------------
# EfficientFormerV2
# ---------------------------------------------------------------------------------------------------------------
class ConvFFN(nn.Module):
    """V2 FFN residual: ``x + fc2(gelu(mid(gelu(fc1(x)))))`` with the layer scale in ``fc2``."""

    def __init__(self, dim: int, hidden: int, act: str = "gelu") -> None:
        super().__init__()
        self.fc1 = _conv(dim, hidden, act=act)
        self.mid = _conv(hidden, hidden, 3, groups=hidden, act=act)
        self.fc2 = _conv(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.mid(self.fc1(x)), residual=x)


class GridAttention(nn.Module):
    """V2 attention (talking heads, local V, optional stride-2 grid) for one fixed grid.

    q, k and v come from one merged 1x1 conv with the query scale folded in. The first talking-head mix is
    linear, so its effect on the position bias is precomputed: ``bias`` is ``W1 @ table_gather + b1``.
    """

    def __init__(
        self, dim: int, grid: Grid, stride: int, key_dim: int = 32, num_heads: int = 8, attn_ratio=4, act="gelu"
    ):
        super().__init__()
        self.num_heads, self.key_dim, self.val_dim = num_heads, key_dim, key_dim * attn_ratio
        self.act = _ACTIVATIONS[act]
        inner = num_heads * self.val_dim
        self.qk_chs = num_heads * key_dim
        self.stride_conv = _conv(dim, dim, 3, 2, groups=dim) if stride > 1 else None
        self.qkv = _conv(dim, 2 * self.qk_chs + inner)
        self.v_local = _conv(inner, inner, 3, groups=inner)
        # Talking heads are 8x8 mixes over the head axis: plain matmuls on (B, heads, N*N) (a 1x1 conv on an
        # 8-channel map falls back to a slow generic kernel on CPU).
        self.register_buffer("th1_weight", torch.zeros(num_heads, num_heads))
        self.register_buffer("th2_weight", torch.zeros(num_heads, num_heads))
        self.register_buffer("th2_bias", torch.zeros(num_heads, 1))
        self.proj = _conv(inner, dim)
        self.grid = grid  # the attention grid (after the stride); fixed, so traced graphs carry no shape ops
        n = grid[0] * grid[1]
        self.register_buffer("bias", torch.zeros(num_heads, n, n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x + attention(x)``: the block's residual add happens inside ``proj``."""
        shortcut = x
        if self.stride_conv is not None:
            x = self.stride_conv(x)
        H, W = self.grid
        N, nh, c = H * W, self.num_heads, self.qk_chs
        qkv = self.qkv(x)
        q = qkv[:, :c].reshape(-1, nh, self.key_dim, N).transpose(-2, -1)
        k = qkv[:, c : 2 * c].reshape(-1, nh, self.key_dim, N)
        v = qkv[:, 2 * c :]
        v_heads = v.reshape(-1, nh, self.val_dim, N).transpose(-2, -1)
        attn = (self.th1_weight @ (q @ k).reshape(-1, nh, N * N)).reshape(-1, nh, N, N) + self.bias
        attn = self.th2_weight @ attn.softmax(dim=-1).reshape(-1, nh, N * N) + self.th2_bias
        x = (attn.reshape(-1, nh, N, N) @ v_heads).transpose(-2, -1).reshape(-1, nh * self.val_dim, H, W)
        x = self.v_local(v, residual=x)
        if self.stride_conv is not None:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.proj(self.act(x), residual=shortcut)


class DeployBlockV2(nn.Module):
    def __init__(self, dim: int, hidden: int, attn: GridAttention | None, act: str = "gelu") -> None:
        super().__init__()
        self.attn = attn
        self.ffn = ConvFFN(dim, hidden, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn is not None:
            x = self.attn(x)  # includes the residual
        return self.ffn(x)


class DownsampleAttention(nn.Module):
    """V2 attention downsampling for one fixed grid; k and v come from one merged conv, no talking heads."""

    def __init__(
        self, dim: int, out_dim: int, grid: Grid, key_dim: int = 16, num_heads: int = 8, attn_ratio=4, act="gelu"
    ):
        super().__init__()
        self.num_heads, self.key_dim, self.val_dim = num_heads, key_dim, key_dim * attn_ratio
        self.act = _ACTIVATIONS[act]
        inner = num_heads * self.val_dim
        self.qk_chs = num_heads * key_dim
        self.q_local = _conv(dim, dim, 3, 2, groups=dim)
        self.q = _conv(dim, self.qk_chs)
        self.kv = _conv(dim, self.qk_chs + inner)
        self.v_local = _conv(inner, inner, 3, 2, groups=inner)
        self.proj = _conv(inner, out_dim)
        self.grid = grid  # the key grid; fixed, so traced graphs carry no shape ops
        nq = -(-grid[0] // 2) * -(-grid[1] // 2)
        self.register_buffer("bias", torch.zeros(num_heads, nq, grid[0] * grid[1]))

    def forward(self, x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        """``shortcut + attention_downsample(x)`` (the sum with the parallel strided conv happens in ``proj``)."""
        H, W = self.grid
        Hq, Wq = (H + 1) // 2, (W + 1) // 2
        nh, c = self.num_heads, self.qk_chs
        q = self.q(self.q_local(x, residual=x[:, :, ::2, ::2])).reshape(-1, nh, self.key_dim, Hq * Wq).transpose(-2, -1)
        kv = self.kv(x)
        k = kv[:, :c].reshape(-1, nh, self.key_dim, H * W).transpose(-2, -1)
        v = kv[:, c:]
        v_heads = v.reshape(-1, nh, self.val_dim, H * W).transpose(-2, -1)
        x = F.scaled_dot_product_attention(q, k, v_heads, attn_mask=self.bias, scale=1.0)
        x = self.v_local(v, residual=x.transpose(-2, -1).reshape(-1, nh * self.val_dim, Hq, Wq))
        return self.proj(self.act(x), residual=shortcut)


class DeployDualDownsample(nn.Module):
    def __init__(self, dim: int, out_dim: int, grid: Grid, act: str = "gelu") -> None:
        super().__init__()
        self.conv = _conv(dim, out_dim, 3, 2)
        self.attn = DownsampleAttention(dim, out_dim, grid, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, shortcut=self.conv(x))


class DeployStageV2(nn.Module):
    def __init__(self, downsample: nn.Module, blocks: list[DeployBlockV2]) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))
