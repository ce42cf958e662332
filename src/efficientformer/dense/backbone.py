"""EfficientFormer as a dense-prediction backbone: four stage maps, any input size, optional frozen BatchNorm.

The classifier models already run at any input whose sides are multiples of 32 (attention biases are resampled
at run time). This wrapper adds what detectors and segmenters need on top: padding of arbitrary inputs to a
multiple of 32 with the outputs cropped back to ``ceil(H / stride)``, ImageNet weights loaded without the
classifier, BatchNorm that can be frozen for real (no trainable parameters, statistics never updated, and
``train()`` cannot switch it back on), and the official V1 output norms (GroupNorm with one group on each map).
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..models import create_model, load_checkpoint
from ..models.layers import fit_img_size

STRIDES = (4, 8, 16, 32)


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters, all stored as buffers.

    Buffers are not returned by ``parameters()``, so no optimiser can touch them, and the forward pass is the same
    affine map in train and eval mode, so ``model.train()`` cannot make it update running statistics.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    @classmethod
    def from_batchnorm(cls, bn: nn.modules.batchnorm._BatchNorm) -> FrozenBatchNorm2d:
        frozen = cls(bn.num_features, bn.eps)
        with torch.no_grad():
            if bn.affine:
                frozen.weight.copy_(bn.weight)
                frozen.bias.copy_(bn.bias)
            if bn.track_running_stats and bn.running_mean is not None:
                frozen.running_mean.copy_(bn.running_mean)
                frozen.running_var.copy_(bn.running_var)
        return frozen.to(bn.weight.device if bn.affine else frozen.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d / SyncBatchNorm inside ``module`` with a :class:`FrozenBatchNorm2d` (in place)."""
    for name, child in module.named_children():
        if isinstance(child, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            setattr(module, name, FrozenBatchNorm2d.from_batchnorm(child))
        else:
            freeze_batchnorm(child)
    return module


class EfficientFormerBackbone(nn.Module):
    """The four stage maps of an EfficientFormer / EfficientFormerV2 for inputs of any size.

    ``checkpoint``: ImageNet (or any supported) weights, loaded through :func:`efficientformer.load_checkpoint`;
    classifier head and final norm are dropped and attention-bias tables resampled to ``img_size``.
    ``out_indices``: which stages to return (0..3, strides 4/8/16/32). ``freeze_bn``: turn BatchNorm into
    :class:`FrozenBatchNorm2d`. ``frozen_stages``: -1 trains everything; k >= 0 freezes the stem and stages 0..k.
    ``img_size``: the grid the bias tables are stored for (the typical working resolution); any input still works.
    ``output_norm``: a trainable ``GroupNorm(1, C)`` on every returned map; ``None`` follows the official dense
    backbones: on for the V1 family (their ``norm0/2/4/6``), off for V2.
    """

    def __init__(
        self,
        name: str,
        checkpoint: str | Path | dict | None = None,
        out_indices: tuple[int, ...] = (0, 1, 2, 3),
        freeze_bn: bool = False,
        frozen_stages: int = -1,
        img_size: int | tuple[int, int] = 224,
        drop_path_rate: float | None = None,
        output_norm: bool | None = None,
        *,
        frozen_bn: bool | None = None,
    ) -> None:
        super().__init__()
        if frozen_bn is not None:  # the old spelling of freeze_bn (the configs' key), accepted for one release
            warnings.warn(
                "EfficientFormerBackbone(frozen_bn=...) is deprecated; use freeze_bn=... (same meaning)",
                DeprecationWarning,
                stacklevel=2,
            )
            freeze_bn = frozen_bn
        if frozen_stages not in range(-1, 4):
            raise ValueError(f"frozen_stages must be -1 (none) or a stage number 0..3, got {frozen_stages}")
        img_size = fit_img_size(img_size)  # the bias grid needs a stride multiple; any input still runs
        self.body = create_model(
            name, features_only=True, img_size=img_size, out_indices=(0, 1, 2, 3), drop_path_rate=drop_path_rate
        )
        self.load_report = load_checkpoint(self.body, checkpoint, strict=False) if checkpoint is not None else None
        self.out_indices = tuple(out_indices)
        if not self.out_indices or any(i not in range(4) for i in self.out_indices):
            raise ValueError(f"out_indices must be a non-empty subset of 0..3, got {out_indices}")
        self.channels = [self.body.spec.widths[i] for i in self.out_indices]
        self.strides = [STRIDES[i] for i in self.out_indices]
        self.output_norm = (self.body.spec.family == "v1") if output_norm is None else bool(output_norm)
        # GroupNorm(1, C): per-sample statistics over (C, H, W), so batch size and BN freezing do not affect it.
        self.norms = nn.ModuleList(nn.GroupNorm(1, c) if self.output_norm else nn.Identity() for c in self.channels)
        self.frozen_stages = frozen_stages
        if freeze_bn:
            freeze_batchnorm(self.body)
        self._freeze_stages()

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.body.stem] + [self.body.stages[i] for i in range(self.frozen_stages + 1)]

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> EfficientFormerBackbone:
        super().train(mode)
        # Frozen stages stay in eval mode: their BatchNorm statistics and dropout must not change.
        self._freeze_stages()
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        fit_h, fit_w = fit_img_size((h, w))
        pad_h, pad_w = fit_h - h, fit_w - w
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        feats = self.body(x)
        outs = []
        for i, norm in zip(self.out_indices, self.norms, strict=True):
            s = STRIDES[i]
            # Normalise after cropping: statistics over the padding would make the output depend on it.
            outs.append(norm(feats[i][..., : math.ceil(h / s), : math.ceil(w / s)]))
        return outs


class FPN(nn.Module):
    """Feature pyramid on the backbone maps (torchvision's FPN), optionally with a max-pooled extra level."""

    def __init__(self, in_channels: list[int], out_channels: int = 256, extra_pool: bool = False) -> None:
        super().__init__()
        self.fpn = FeaturePyramidNetwork(
            in_channels, out_channels, extra_blocks=LastLevelMaxPool() if extra_pool else None
        )
        self.out_channels = out_channels

    def forward(self, feats: list[torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


class BackboneWithFPN(nn.Module):
    """Backbone + FPN returning an ordered dict of maps and exposing ``out_channels`` (what torchvision expects)."""

    def __init__(self, backbone: EfficientFormerBackbone, out_channels: int = 256, extra_pool: bool = True) -> None:
        super().__init__()
        self.body = backbone
        self.fpn = FPN(backbone.channels, out_channels, extra_pool=extra_pool)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(self.body(x))
