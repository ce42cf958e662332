"""What both families share: input checks, the stage loop, the head with optional distillation, feature maps."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .layers import Grid, check_img_size, to_grid


@dataclass(frozen=True)
class ModelSpec:
    """One row of a variant table."""

    name: str
    family: str  # "v1" or "v2"
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    num_vit: int  # V1: Meta3D blocks at the end of stage 4; V2: attention blocks at the end of stages 3 and 4
    drop_path_rate: float = 0.0
    mlp_ratios: tuple[tuple[float, ...], ...] = field(default=())  # V2: per-block expansion ratios
    # V2: per-block attention flags for all four stages (searched models); empty means the published rule,
    # the last ``num_vit`` blocks of stages 3 and 4.
    attention: tuple[tuple[bool, ...], ...] = field(default=())
    # The activation in place of every GELU (one of ``layers.ACTIVATIONS``); V1's ReLU stem stays ReLU.
    act: str = "gelu"

    def has_attention(self, stage: int, block: int) -> bool:
        """Whether block ``block`` of stage ``stage`` (both 0-based) carries an attention mixer (V2)."""
        if self.attention:
            return bool(self.attention[stage][block])
        return stage >= 2 and block >= self.depths[stage] - self.num_vit


class EfficientFormerBase(nn.Module):
    """Stem, four stages, final norm, pooled linear head(s).

    ``forward_features`` returns the normalised last stage map (B, C, H/32, W/32) for both families;
    ``forward_head`` pools it and applies the classifier. With ``distillation=True`` there are two heads whose
    mean is the output; only while distilled training is switched on (:meth:`set_distilled_training`, which the
    trainer does for DeiT distillation) does a training-mode forward return ``(head_logits, dist_logits)``, so a
    user's own loop gets one tensor from ``create_model(...)`` as it comes.
    """

    distilled_training: bool = False

    spec: ModelSpec
    stem: nn.Module
    stages: nn.ModuleList

    def __init__(
        self,
        spec: ModelSpec,
        *,
        num_classes: int = 1000,
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        distillation: bool = True,
        drop_rate: float = 0.0,
        features_only: bool = False,
        out_indices: tuple[int, ...] = (0, 1, 2, 3),
    ) -> None:
        super().__init__()
        self.spec = spec
        self.img_size: Grid = to_grid(img_size)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.distillation = distillation
        self.num_features = spec.widths[-1]
        self.features_only = features_only
        self.out_indices = tuple(out_indices)
        for i in self.out_indices:
            if i not in range(4):
                raise ValueError(f"out_indices must be stage numbers in 0..3, got {out_indices}")
        self.feature_info = [
            {"num_chs": spec.widths[i], "reduction": 2 ** (i + 2), "module": f"stages.{i}"} for i in range(4)
        ]
        self.head_drop = nn.Dropout(drop_rate)
        check_img_size(self.img_size)

    norm: nn.Module | None
    head: nn.Module | None
    head_dist: nn.Module | None

    # -- pieces the families provide ---------------------------------------------------------------------------
    def _build_head(self, norm: nn.Module | None) -> None:
        """Called by subclasses after the stages exist."""
        if self.features_only:
            self.norm = None
            self.head = None
            self.head_dist = None
            return
        self.norm = norm
        self._make_classifier(self.num_classes)

    def _make_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if self.distillation:
            self.head_dist = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        else:
            self.head_dist = None
        for m in (self.head, self.head_dist):
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- public API --------------------------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        """Raise a one-line ``ValueError`` for inputs the network cannot take."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor of shape (B, {self.in_chans}, H, W), got {type(x).__name__}")
        if x.ndim != 4:
            raise ValueError(
                f"expected a 4-D batch of shape (B, {self.in_chans}, H, W), got shape {tuple(x.shape)}"
                + ("; add a batch dimension with x.unsqueeze(0)" if x.ndim == 3 else "")
            )
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"expected {self.in_chans} input channels, got {x.shape[1]} (input shape {tuple(x.shape)}); "
                "convert greyscale or RGBA images to RGB first"
            )
        check_img_size((int(x.shape[2]), int(x.shape[3])), "the input")

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stem and all four stages; returns every stage map (NCHW, strides 4/8/16/32)."""
        self.check_input(x)
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised last stage map, shape (B, C, H/32, W/32)."""
        if self.features_only:
            raise RuntimeError("forward_features needs the final norm; this model was built with features_only=True")
        self.check_input(x)
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self._final_norm(x)

    def forward_head(
        self, x: torch.Tensor, pre_logits: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = self.head_drop(x.mean(dim=(2, 3)))
        if pre_logits:
            return x
        if self.head is None:
            raise RuntimeError("a features_only model has no classifier; call forward() for its feature maps")
        logits = self.head(x)
        if self.head_dist is None:
            return logits
        dist = self.head_dist(x)
        if self.distilled_training and self.training and not torch.jit.is_scripting():
            return logits, dist
        return (logits + dist) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor] | list[torch.Tensor]:
        if self.features_only:
            outs = self.forward_stages(x)
            return [outs[i] for i in self.out_indices]
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int, distillation: bool | None = None) -> None:
        """Replace the head(s) with freshly initialised ones for ``num_classes`` classes."""
        if self.features_only:
            raise RuntimeError("a features_only model has no classifier")
        if distillation is not None:
            self.distillation = distillation
        self._make_classifier(num_classes)

    def set_distilled_training(self, enable: bool = True) -> None:
        """Training-mode forwards return ``(head, head_dist)`` (for a distillation loss) instead of their mean."""
        if enable and self.head_dist is None:
            raise ValueError("distilled training needs the distillation head; build the model with distillation=True")
        self.distilled_training = enable

    def get_classifier(self) -> nn.Module | tuple[nn.Module, nn.Module]:
        if self.head is None:
            raise RuntimeError("a features_only model has no classifier")
        return self.head if self.head_dist is None else (self.head, self.head_dist)

    def no_weight_decay(self) -> set[str]:
        """Parameter names that should not be weight-decayed: attention-bias tables and layer scales."""
        return {n for n, _ in self.named_parameters() if n.endswith("pos_bias.table") or n.endswith(".scale")}

    @property
    def name(self) -> str:
        return self.spec.name
