"""What the detection and segmentation configs share: data, backbone, and how the run executes. Read through the
runtime's one config loader (``efficientformer.runtime.config``)."""

from __future__ import annotations

import dataclasses

from ..runtime.config import param
from .backbone import EfficientFormerBackbone


@dataclasses.dataclass
class DenseConfig:
    """Task configs add head, data pipeline and schedule fields (and override the defaults that differ, such as
    the split names)."""

    data: str = param("", help="the data set root")
    train_split: str = param("train")
    val_split: str = param("val")
    output: str = param("runs/dense")
    model: str = param("efficientformer_l1")
    pretrained: str | None = param(None, help="ImageNet checkpoint (any supported layout); None = random init")
    img_size: int = param(0, ge=0, help="grid the attention-bias tables are stored for; 0 = the task's working size")
    frozen_bn: bool = param(False)
    frozen_stages: int = param(-1, ge=-1, le=4)
    output_norm: bool | None = param(None, help="GroupNorm(1, C) on the backbone maps; None = official (V1 on, V2 off)")
    fpn_channels: int = param(256, ge=1)
    grad_clip: float = param(0.0, ge=0.0, help="max gradient norm; 0 = no clipping (official)")
    workers: int = param(2, ge=0)
    seed: int = param(0, ge=0)
    device: str = param("auto", help="auto | cpu | cuda | cuda:N")
    threads: int = param(0, ge=0, help="CPU threads for torch (0 = torch default)")
    resume: bool = param(True)

    def build_backbone(self, working_size: int) -> EfficientFormerBackbone:
        """The backbone this config describes; ``working_size`` stands in for ``img_size=0``."""
        return EfficientFormerBackbone(
            self.model,
            checkpoint=self.pretrained,
            frozen_bn=self.frozen_bn,
            frozen_stages=self.frozen_stages,
            img_size=self.img_size or working_size,
            output_norm=self.output_norm,
        )
