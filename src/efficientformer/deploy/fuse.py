"""``deploy(model)``: fold an eval-mode EfficientFormer into its inference form, and save/load that form.

What gets folded, all exactly (only float rounding differs):

* every BatchNorm into the convolution before it (``ConvNorm``);
* every layer scale into the output channels of the conv/linear layer that ends its branch, except V1's pooling
  mixer scale (it multiplies ``pool(x) - x``, so it stays as a per-channel ``lerp`` weight);
* the 1/sqrt(key_dim) attention scale into the query weights; V2's q/k/v (and downsample k/v) convs merged;
* V1's LayerNorm affines into the linear layer that reads the normalised tokens, and the final norm's affine
  (V1 LayerNorm, V2 BatchNorm: both followed by a mean-pool and a linear layer) into the classifier;
* the two heads into one linear layer (the eval output is their mean, which is linear);
* the attention-bias gathers for one resolution into buffers (V2's first talking-head mix is folded into that
  bias too); drop path and dropout disappear.

The result accepts only the resolution it was built for; ``deploy(model, img_size=R)`` builds it for another.
A deploy checkpoint is a safetensors file whose metadata names the model, resolution and class count, so
:func:`load_deployed` can rebuild the structure without the training-time model.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from ..models.arch import ArchError, arch_to_spec, spec_to_arch
from ..models.base import EfficientFormerBase, ModelSpec
from ..models.layers import ConvNorm, Grid, check_img_size, to_grid
from ..models.registry import UnknownModelError, get_spec
from ..utils.io import atomic_write_bytes
from .modules import (
    DeployBlockV2,
    DeployDualDownsample,
    DeployStageV1,
    DeployStageV2,
    GridAttention,
    _conv,
    set_cpu_kernels,
)

FORMAT_NAME = "efficientformer-deploy"
FORMAT_VERSION = "2"  # 2: stem convs carry their activation (keys stem.0 / stem.1)


class DeployedEfficientFormer(nn.Module):
    """Inference-only EfficientFormer / EfficientFormerV2 for one input resolution.

    Built empty from ``(spec, img_size, num_classes)``; :func:`deploy` fills it from a trained model and
    :func:`load_deployed` from a file.
    """

    def __init__(self, spec: ModelSpec, img_size: int | Grid = 224, num_classes: int = 1000, in_chans: int = 3):
        super().__init__()
        h, w = self.img_size = check_img_size(img_size)
        if num_classes < 1:
            raise ValueError("deploy needs a classifier (num_classes >= 1); deploy a model with a head")
        self.spec, self.num_classes, self.in_chans = spec, num_classes, in_chans
        widths, depths = spec.widths, spec.depths
        act = spec.act  # GELU as published, or what replaces it (models.layers.ACTIVATIONS)
        stem_act = "relu" if spec.family == "v1" else act
        self.stem = nn.Sequential(
            _conv(in_chans, widths[0] // 2, 3, 2, act=stem_act), _conv(widths[0] // 2, widths[0], 3, 2, act=stem_act)
        )
        grids = [(h // 2 ** (i + 2), w // 2 ** (i + 2)) for i in range(4)]
        if spec.family == "v1":
            if spec.num_vit < 1:
                raise ValueError(f"{spec.name}: the V1 deploy form expects attention blocks in the last stage")
            self.stages = nn.ModuleList(
                DeployStageV1(
                    widths[max(i - 1, 0)], widths[i], depths[i], spec.num_vit if i == 3 else 0, grids[3], i > 0, act
                )
                for i in range(4)
            )
        else:
            stages = []
            for i in range(4):
                if i == 0:
                    down: nn.Module = nn.Identity()
                elif i < 3:
                    down = _conv(widths[i - 1], widths[i], 3, 2)
                else:
                    down = DeployDualDownsample(widths[i - 1], widths[i], grids[2], act)
                blocks = []
                for j in range(depths[i]):
                    is_attn = spec.has_attention(i, j)
                    attn = GridAttention(widths[i], grids[3], 2 if i == 2 else 1, act=act) if is_attn else None
                    blocks.append(DeployBlockV2(widths[i], int(widths[i] * spec.mlp_ratios[i][j]), attn, act))
                stages.append(DeployStageV2(down, blocks))
            self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(widths[3], num_classes)
        self.norm_eps = 1e-5

    @property
    def name(self) -> str:
        return self.spec.name

    def use_cpu_kernels(self, enabled: bool = True) -> DeployedEfficientFormer:
        """Run float32 CPU inference through oneDNN's fused conv kernels (on by default; see ``FusedConv2d``).

        Only eager inference takes the fast path; tracing, ``torch.export``, ``torch.compile``, autograd and
        other devices or dtypes always run plain PyTorch ops, so exports are unaffected either way.
        """
        set_cpu_kernels(self, enabled)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and tuple(x.shape[-2:]) != self.img_size:
            h, w = self.img_size
            raise ValueError(
                f"this deployed model was built for {h}x{w} inputs, got {tuple(x.shape)}; "
                "resize the input or rebuild with deploy(model, img_size=...)"
            )
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        if self.spec.family == "v1":
            # (B, N, C) tokens: LayerNorm whose affine lives in the head, then the token mean.
            x = F.layer_norm(x, (self.spec.widths[-1],), eps=self.norm_eps).mean(dim=1)
        else:
            x = x.mean(dim=(2, 3))
        return self.head(x)


# ---------------------------------------------------------------------------------------------------------------
# Folding helpers: all arithmetic in float64, cast back when copied.
# ---------------------------------------------------------------------------------------------------------------
def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(device="cpu", dtype=torch.float64)


def fold_conv_bn(cn: ConvNorm, out_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of one conv equal to ``bn(conv(x))``, optionally times a per-output-channel scale."""
    conv, bn = cn.conv, cn.bn
    w = _f64(conv.weight)
    b = _f64(conv.bias) if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    gamma = _f64(bn.weight) if bn.weight is not None else torch.ones_like(b)
    beta = _f64(bn.bias) if bn.bias is not None else torch.zeros_like(b)
    s = gamma / torch.sqrt(_f64(bn.running_var) + bn.eps)
    w = w * s.view(-1, 1, 1, 1)
    b = (b - _f64(bn.running_mean)) * s + beta
    if out_scale is not None:
        o = _f64(out_scale).flatten()
        w, b = w * o.view(-1, 1, 1, 1), b * o
    return w, b


def _plain(layer: nn.Conv2d | nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    b = layer.bias if layer.bias is not None else torch.zeros(layer.weight.shape[0])
    return _f64(layer.weight), _f64(b)


def _scale_rows(wb: tuple[torch.Tensor, torch.Tensor], scale: torch.Tensor | float) -> tuple[torch.Tensor, ...]:
    w, b = wb
    s = _f64(scale).flatten() if isinstance(scale, torch.Tensor) else torch.tensor(scale, dtype=torch.float64)
    shape = (-1,) + (1,) * (w.ndim - 1) if s.ndim else ()
    return w * s.view(shape), b * s


def _fold_affine_in(linear_wb: tuple[torch.Tensor, torch.Tensor], norm: nn.Module) -> tuple[torch.Tensor, ...]:
    """Linear applied after ``y = g*n + b`` (a norm's affine): becomes ``(W*g) n + (W b + c)``."""
    w, c = linear_wb
    g, b = _f64(norm.weight), _f64(norm.bias)
    return w * g.view(1, -1), c + w @ b


def _bn_affine(bn: nn.BatchNorm2d) -> SimpleNamespace:
    """A BatchNorm in eval mode as a plain ``weight``/``bias`` affine (so it can be folded like a LayerNorm's)."""
    s = _f64(bn.weight) / torch.sqrt(_f64(bn.running_var) + bn.eps)
    return SimpleNamespace(weight=s, bias=_f64(bn.bias) - _f64(bn.running_mean) * s)


def _put(layer: nn.Conv2d | nn.Linear, wb: tuple[torch.Tensor, torch.Tensor]) -> None:
    w, b = wb
    if tuple(w.shape) != tuple(layer.weight.shape):
        raise RuntimeError(f"deploy: weight shape {tuple(w.shape)} does not fit {layer}")
    layer.weight.copy_(w)
    layer.bias.copy_(b)


def _cat(*wbs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([w for w, _ in wbs]), torch.cat([b for _, b in wbs])


def _merged_head(model: EfficientFormerBase) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(model.head, nn.Linear):
        raise ValueError("deploy needs a classifier head; this model has none (num_classes=0)")
    w, b = _plain(model.head)
    if model.head_dist is not None:
        wd, bd = _plain(model.head_dist)
        w, b = (w + wd) / 2, (b + bd) / 2
    return w, b


# ---------------------------------------------------------------------------------------------------------------
# Family-specific copies
# ---------------------------------------------------------------------------------------------------------------
def _fill_stem(dst: nn.Sequential, src: nn.Module) -> None:
    _put(dst[0], fold_conv_bn(src.conv1))
    _put(dst[1], fold_conv_bn(src.conv2))


def _fill_v1(dst: DeployedEfficientFormer, model: EfficientFormerBase, grid: Grid) -> None:
    _fill_stem(dst.stem, model.stem)
    for d_stage, s_stage in zip(dst.stages, model.stages, strict=True):
        if isinstance(s_stage.downsample, ConvNorm):
            _put(d_stage.downsample, fold_conv_bn(s_stage.downsample))
        for d, s in zip(d_stage.blocks, s_stage.blocks, strict=True):
            if hasattr(s, "mixer"):  # Meta4D
                d.ls1.copy_(_f64(s.ls1.scale).view(-1, 1, 1))
                _put(d.fc1, fold_conv_bn(s.mlp.fc1))
                _put(d.fc2, fold_conv_bn(s.mlp.fc2, s.ls2.scale))
                continue
            attn = s.attn  # Meta3D
            qkv_w, qkv_b = _fold_affine_in(_plain(attn.qkv), s.norm1)
            per_head = 2 * attn.key_dim + attn.val_dim
            row_scale = torch.ones(qkv_w.shape[0], dtype=torch.float64).view(attn.num_heads, per_head)
            row_scale[:, : attn.key_dim] = attn.scale  # q rows come first in each head's slice
            _put(d.attn.qkv, _scale_rows((qkv_w, qkv_b), row_scale))
            _put(d.attn.proj, _scale_rows(_plain(attn.proj), s.ls1.scale))
            d.attn.bias.copy_(_f64(attn.pos_bias(grid, grid)))
            _put(d.fc1, _fold_affine_in(_plain(s.mlp.fc1), s.norm2))
            _put(d.fc2, _scale_rows(_plain(s.mlp.fc2), s.ls2.scale))
            d.eps = s.norm1.eps
    dst.norm_eps = model.norm.eps
    _put(dst.head, _fold_affine_in(_merged_head(model), model.norm))


def _fill_attention_v2(d: GridAttention, s: nn.Module, grid: Grid, out_scale: torch.Tensor) -> None:
    if s.stride_conv is not None:
        _put(d.stride_conv, fold_conv_bn(s.stride_conv))
    q = _scale_rows(fold_conv_bn(s.q), s.scale)
    _put(d.qkv, _cat(q, fold_conv_bn(s.k), fold_conv_bn(s.v)))
    _put(d.v_local, fold_conv_bn(s.v_local))
    w1, b1 = _plain(s.talking_head1)
    d.th1_weight.copy_(w1.flatten(1))
    bias = _f64(s.pos_bias(grid, grid))
    d.bias.copy_(torch.einsum("gh,hnm->gnm", w1.flatten(1), bias) + b1.view(-1, 1, 1))
    w2, b2 = _plain(s.talking_head2)
    d.th2_weight.copy_(w2.flatten(1))
    d.th2_bias.copy_(b2.view(-1, 1))
    _put(d.proj, fold_conv_bn(s.proj, out_scale))


def _fill_v2(dst: DeployedEfficientFormer, model: EfficientFormerBase, img: Grid) -> None:
    _fill_stem(dst.stem, model.stem)
    h, w = img
    grid3, grid4 = (h // 16, w // 16), (h // 32, w // 32)
    for d_stage, s_stage in zip(dst.stages, model.stages, strict=True):
        down = s_stage.downsample
        if isinstance(down, ConvNorm):
            _put(d_stage.downsample, fold_conv_bn(down))
        elif not isinstance(down, nn.Identity):  # DualDownsample
            dd, sa = d_stage.downsample, down.attn
            _put(dd.conv, fold_conv_bn(down.conv))
            _put(dd.attn.q_local, _plain(sa.q_local))
            _put(dd.attn.q, _scale_rows(fold_conv_bn(sa.q), sa.scale))
            _put(dd.attn.kv, _cat(fold_conv_bn(sa.k), fold_conv_bn(sa.v)))
            _put(dd.attn.v_local, fold_conv_bn(sa.v_local))
            _put(dd.attn.proj, fold_conv_bn(sa.proj))
            dd.attn.bias.copy_(_f64(sa.pos_bias(grid4, grid3)))
        for d, s in zip(d_stage.blocks, s_stage.blocks, strict=True):
            if s.attn is not None:
                _fill_attention_v2(d.attn, s.attn, grid4, s.ls1.scale)  # stage 3 attends on a stride-2 grid too
            _put(d.ffn.fc1, fold_conv_bn(s.mlp.fc1))
            _put(d.ffn.mid, fold_conv_bn(s.mlp.mid))
            _put(d.ffn.fc2, fold_conv_bn(s.mlp.fc2, s.ls2.scale))
    _put(dst.head, _fold_affine_in(_merged_head(model), _bn_affine(model.norm)))


# ---------------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------------
def has_deploy_form(model: nn.Module) -> bool:
    """Whether ``model`` has an inference form :func:`deploy` makes: an EfficientFormer (or its deploy form
    already); another library's model (``timm:NAME``) has none and is exported as it is."""
    return isinstance(model, DeployedEfficientFormer | EfficientFormerBase)


@torch.no_grad()
def deploy(
    model: nn.Module, img_size: int | Grid | None = None, *, cpu_kernels: bool = True
) -> DeployedEfficientFormer:
    """Return the inference form of ``model`` for inputs of ``img_size`` (default: the size it was built for).

    ``model`` is left untouched. The result is in eval mode, on the model's device and dtype, has no trainable
    parameters, and its output equals ``model.eval()(x)`` (the mean of the two heads for a distilled model) up
    to float rounding. ``cpu_kernels``: fuse conv + activation + residual into oneDNN kernels for CPU float32
    inference (see :meth:`DeployedEfficientFormer.use_cpu_kernels`).
    """
    if isinstance(model, DeployedEfficientFormer):
        if img_size is None or to_grid(img_size) == model.img_size:
            return model
        raise ValueError("this model is already deployed for another resolution; deploy the original model again")
    if not isinstance(model, EfficientFormerBase):
        raise TypeError(f"deploy expects an EfficientFormer model from create_model, got {type(model).__name__}")
    if model.features_only:
        raise ValueError("deploy needs a classifier model; this one was built with features_only=True")
    img = to_grid(img_size) if img_size is not None else model.img_size
    param = next(model.parameters())
    dst = DeployedEfficientFormer(model.spec, img, model.num_classes, model.in_chans).double()
    was_training = model.training
    model.eval()
    try:
        if model.spec.family == "v1":
            _fill_v1(dst, model, (img[0] // 32, img[1] // 32))
        else:
            _fill_v2(dst, model, img)
    finally:
        model.train(was_training)
    dst = dst.to(device=param.device, dtype=param.dtype).eval().requires_grad_(False)
    return dst.use_cpu_kernels(cpu_kernels)


def save_deployed(model: DeployedEfficientFormer, path: str | Path) -> Path:
    """Write a deployed model as safetensors. The metadata header names the model, its resolution and class count,
    and holds its architecture (:func:`~efficientformer.models.arch.spec_to_arch`), so a searched model, which has
    no registered name, loads back too."""
    from safetensors.torch import save

    if not isinstance(model, DeployedEfficientFormer):
        raise TypeError(f"save_deployed expects the output of deploy(), got {type(model).__name__}")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model": model.spec.name,
        "img_size": json.dumps(list(model.img_size)),
        "num_classes": str(model.num_classes),
        "in_chans": str(model.in_chans),
        "norm_eps": repr(model.norm_eps),
        "arch": json.dumps(spec_to_arch(model.spec)),
    }
    data = save(tensors, metadata=meta)
    return atomic_write_bytes(path, lambda f: f.write(data))


def load_deployed(
    path: str | Path, map_location: str | torch.device = "cpu", *, cpu_kernels: bool = True
) -> DeployedEfficientFormer:
    """Rebuild a deployed model from a file written by :func:`save_deployed`."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"deploy checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for non-safetensors files
        raise ValueError(
            f"{path} is not a safetensors deploy checkpoint ({err}); write one with save_deployed"
        ) from None
    if meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{path} is not an efficientformer deploy checkpoint (no '{FORMAT_NAME}' metadata)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} is deploy format version {meta.get('format_version')!r}, this library reads version "
            f"{FORMAT_VERSION}; deploy the original checkpoint again and save it with save_deployed"
        )
    spec = _deployed_spec(path, meta)
    model = DeployedEfficientFormer(
        spec, tuple(json.loads(meta["img_size"])), int(meta["num_classes"]), int(meta.get("in_chans", 3))
    )
    model.norm_eps = float(meta.get("norm_eps", 1e-5))
    state = load_file(str(path), device="cpu")
    model.load_state_dict(state, strict=True)
    return model.to(map_location).eval().requires_grad_(False).use_cpu_kernels(cpu_kernels)


def _deployed_spec(path: Path, meta: dict[str, str]) -> ModelSpec:
    """The spec a deploy file describes: its recorded architecture, else (files written before it was recorded)
    the registered model it names."""
    if "arch" in meta:
        try:
            return arch_to_spec(json.loads(meta["arch"]))
        except (ArchError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} holds an unreadable architecture ({err}); save the model again") from None
    name = meta.get("model", "")
    try:
        return get_spec(name)  # a published variant, or one with another activation (efficientformerv2_s0_relu)
    except UnknownModelError:
        raise ValueError(f"{path} names an unknown model {name!r}") from None
