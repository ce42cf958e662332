"""What the detection and segmentation configs share: data, backbone, and how the run executes. Read through the
runtime's one config loader (``efficientformer.runtime.config``): every key has a type and a range or a set of
choices, so a bad value is refused in one line, and unknown keys get a "did you mean".

One vocabulary across tasks: ``clip_grad`` (gradient clipping), ``freeze_bn`` (BatchNorm on fixed statistics),
``hflip`` (horizontal flip probability) and ``steps`` / ``warmup_steps`` (optimiser steps of the run / of the
warm-up) mean here what they mean for classification and the search; the old spellings (``grad_clip``,
``frozen_bn``, ``flip_prob``, ``iters``, ``max_iters``, ``warmup_iters``) are still read, with a one-line note.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from ..models import list_models
from ..runtime.config import param
from ..runtime.signals import DEFAULT_STOP_SIGNALS, PREEMPTED_EXIT_CODE, check_stop_signals
from ..runtime.trackers import parse_trackers
from .backbone import EfficientFormerBackbone

BACKBONES = tuple(list_models())


@dataclasses.dataclass
class DenseConfig:
    """Task configs add head, data pipeline and schedule fields (and override the defaults that differ, such as
    the split names)."""

    RENAMED: ClassVar[dict[str, str]] = {
        "grad_clip": "clip_grad",
        "frozen_bn": "freeze_bn",
        "flip_prob": "hflip",
        "warmup_iters": "warmup_steps",
    }

    data: str = param("", help="the data set root")
    train_split: str = param("train")
    val_split: str = param("val")
    output: str = param("runs/dense")
    model: str = param("efficientformer_l1", choices=BACKBONES)
    pretrained: str | None = param(None, help="ImageNet checkpoint (any supported layout); None = random init")
    img_size: int = param(0, ge=0, help="grid the attention-bias tables are stored for; 0 = the task's working size")
    freeze_bn: bool = param(False, help="BatchNorm as a fixed affine map of the pretrained statistics")
    frozen_stages: int = param(-1, ge=-1, le=4, help="stages kept frozen (-1: none)")
    output_norm: bool | None = param(None, help="GroupNorm(1, C) on the backbone maps; None = official (V1 on, V2 off)")
    fpn_channels: int = param(256, ge=1)
    clip_grad: float = param(0.0, ge=0.0, help="max gradient norm; 0 = no clipping (official)")
    workers: int = param(2, ge=0)
    seed: int = param(0, ge=0)
    device: str = param("auto", help="auto | cpu | cuda | cuda:N")
    threads: int = param(0, ge=0, help="CPU threads for torch (0 = torch default)")
    checkpoint_minutes: float = param(0.0, ge=0.0, help="minutes between mid-epoch checkpoints (0: off)")
    stop_signals: tuple[str, ...] = param(
        DEFAULT_STOP_SIGNALS, help=f"on these, finish the step, checkpoint and exit {PREEMPTED_EXIT_CODE}"
    )
    resume: bool = param(True)
    log: str | None = param(None, help="experiment trackers beside log.jsonl: tensorboard,wandb,mlflow (any of them)")

    def check(self) -> None:
        """Rules that involve more than one field, or more than a range."""
        if not (
            self.device in ("auto", "cpu", "cuda") or (self.device.startswith("cuda:") and self.device[5:].isdigit())
        ):
            raise ValueError(f"device={self.device!r} is not one of auto, cpu, cuda, cuda:N")
        check_stop_signals(self.stop_signals)
        parse_trackers(self.log)  # an unknown tracker name: one line naming log, before any work
        for key in ("train_split", "val_split", "output"):
            if not str(getattr(self, key)).strip():
                raise ValueError(f"config key {key!r} cannot be empty")

    def build_backbone(self, working_size: int) -> EfficientFormerBackbone:
        """The backbone this config describes; ``working_size`` stands in for ``img_size=0``."""
        return EfficientFormerBackbone(
            self.model,
            checkpoint=self.pretrained,
            freeze_bn=self.freeze_bn,
            frozen_stages=self.frozen_stages,
            img_size=self.img_size or working_size,
            output_norm=self.output_norm,
        )


def check_increasing(key: str, values: tuple, low: float, high: float | None = None) -> None:
    """Refuse a tuple that is not strictly increasing within ``[low, high]`` (one line naming the key)."""
    if (
        any(b <= a for a, b in zip(values, values[1:], strict=False))
        or any(v < low for v in values)
        or (high is not None and any(v > high for v in values))
    ):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"config key {key!r} must be strictly increasing and {bounds}, got {list(values)}")
