"""Typed training configuration: dataclass defaults = the official ImageNet recipe; read through the runtime's one
config loader (YAML recipes that state only what differs, ``key=value`` / ``--key value`` overrides, range checks)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform

from ..data.images import DEFAULT_MAX_PIXELS
from ..models.layers import check_img_size
from ..runtime import config as runtime_config
from ..runtime.config import param
from ..runtime.precision import AMP_CHOICES, CPU_BF16_MIN_SPEEDUP
from ..runtime.schedule import EPOCH_SCHEDULES
from ..runtime.signals import DEFAULT_STOP_SIGNALS, PREEMPTED_EXIT_CODE, check_stop_signals
from ..runtime.trackers import parse_trackers


@dataclass
class TrainConfig:
    # -- model ---------------------------------------------------------------------------------------------------
    model: str = param("efficientformerv2_s0")
    img_size: int = param(224, ge=32)
    drop_path: float | None = param(
        None, ge=0.0, lt=1.0, help="None: the model's published constant (V1 0; V2 0/0/0.02/0.1)"
    )
    finetune: str | None = param(
        None, help="any checkpoint layout load_checkpoint reads; heads of another class count dropped"
    )
    # -- data ----------------------------------------------------------------------------------------------------
    data: str | None = param(None, help="ImageNet-style folder with train/ and val/; None = the bundled digits dataset")
    cache_dir: str | None = param(None, help="where the bundled dataset is written (default ~/.cache/efficientformer)")
    digits_size: int = param(64, ge=8, help="side of the PNGs written for the bundled digits dataset")
    max_pixels: int | None = param(
        None, ge=1, help=f"skip training/eval images over this many pixels (bomb guard); None: {DEFAULT_MAX_PIXELS:,}"
    )
    workers: int = param(8, ge=0)
    batch_size: int = param(128, ge=1, help="per process")
    grad_accum: int = param(
        1, ge=1, help="batches summed into one optimiser step: effective batch = batch_size x grad_accum x processes"
    )
    eval_batch_size: int | None = param(None, ge=1, help="default 1.5 x batch_size, as published")
    eval_resize: int | None = param(None, ge=32, help="default round(img_size / 0.875): 256 for 224")
    # -- optimisation --------------------------------------------------------------------------------------------
    epochs: int = param(300, ge=1)
    opt: str = param("adamw", choices=("adamw", "adam", "sgd", "momentum", "lamb", "rmsproptf"))
    base_lr: float = param(1e-3, gt=0.0, help="lr = base_lr * effective batch / 1024 unless lr is set")
    lr: float | None = param(None, gt=0.0)
    weight_decay: float = param(0.025, ge=0.0)
    no_decay_scales: bool = param(
        False, help="also exempt layer scales and attention biases from weight decay (ours; official: decayed)"
    )
    opt_eps: float = param(1e-8, gt=0.0)
    sched: str = param("cosine", choices=EPOCH_SCHEDULES, help="timm schedule, stepped after each epoch as official")
    warmup_epochs: int = param(5, ge=0)
    warmup_lr: float = param(1e-5, ge=0.0)
    min_lr: float = param(1e-5, ge=0.0)
    clip_grad: float | None = param(0.01, gt=0.0, help="None: no clipping")
    clip_mode: str = param("agc", choices=("agc", "norm", "value"), help="agc (adaptive, per unit), norm, value")
    freeze_bn: bool = param(False, help="keep BatchNorm in eval mode (running statistics): small-batch fine-tuning")
    # -- augmentation and regularisation ------------------------------------------------------------------------
    smoothing: float = param(0.1, ge=0.0, lt=1.0)
    mixup: float = param(0.8, ge=0.0)
    cutmix: float = param(1.0, ge=0.0)
    mixup_prob: float = param(1.0, ge=0.0, le=1.0)
    mixup_switch_prob: float = param(0.5, ge=0.0, le=1.0)
    auto_augment: str | None = param("rand-m9-mstd0.5-inc1", help="timm auto-augment spec (RandAugment as official)")
    color_jitter: float | None = param(0.4, ge=0.0, help="used by timm only when auto_augment is off")
    train_interpolation: str = param("bicubic", choices=("bicubic", "bilinear", "random"))
    reprob: float = param(0.25, ge=0.0, le=1.0, help="random erasing probability")
    remode: str = param("pixel", choices=("pixel", "rand", "const"), help="random erasing fill")
    recount: int = param(1, ge=1, help="random erasing count")
    hflip: float = param(0.5, ge=0.0, le=1.0)
    crop_scale_min: float = param(0.08, gt=0.0, le=1.0)
    no_aug: bool = param(
        False, help="train on the evaluation transform (deterministic inputs; used for exact comparisons)"
    )
    repeated_aug: bool = param(True)
    repeats: int = param(3, ge=1)
    ema: bool = param(True)
    ema_decay: float = param(0.99996, ge=0.0, lt=1.0)
    ema_warmup: bool = param(False, help="timm ModelEmaV3 decay warm-up for short runs (off as published)")
    # -- distillation (DeiT) ------------------------------------------------------------------------------------
    distillation: str = param("hard", choices=("none", "soft", "hard"), help="none | soft | hard")
    distillation_alpha: float = param(0.5, ge=0.0, le=1.0)
    distillation_tau: float = param(1.0, gt=0.0)
    teacher: str | None = param(
        "regnety_160", help="our model name, a timm name, efficientnet_lite0, or a TorchScript file"
    )
    teacher_checkpoint: str | None = param(None)
    # -- hardware ------------------------------------------------------------------------------------------------
    device: str = param("auto", help="auto | cpu | cuda | cuda:N")
    amp: str = param(
        "auto",
        choices=AMP_CHOICES,
        help="training autocast: auto (bf16 on CUDA GPUs that support it and on CPUs "
        f"with native bf16 where a start-up probe measures it >= {CPU_BF16_MIN_SPEEDUP}x fp32; else fp32; a resumed "
        "run keeps its precision) | none (fp32, as published) | bf16 | fp16",
    )
    eval_amp: str = param("none", choices=("none", "bf16", "fp16"), help="evaluation autocast (none: fp32, as `eval`)")
    sync_bn: bool = param(True, help="only applied on multi-GPU CUDA runs")
    channels_last: bool | None = param(None, help="None: auto (on for CUDA and CPU devices)")
    compile: bool = param(False)
    grad_checkpointing: bool = param(False, help="recompute each block's activations in the backward pass (memory)")
    threads: int | None = param(None, ge=1, help="torch intra-op CPU threads (None: torch's default)")
    # -- run -----------------------------------------------------------------------------------------------------
    output: str | None = param(None, help="default runs/<model>-<dataset>")
    seed: int = param(0, ge=0)
    eval_every: int = param(1, ge=0, help="evaluate every N epochs (0: only after the last)")
    log_every: int = param(50, ge=1, help="steps between loss logs (and the host synchronisation)")
    max_steps: int | None = param(None, ge=1, help="cap on optimiser steps per epoch (smoke tests)")
    checkpoint_every: int = param(0, ge=0, help="optimiser steps between mid-epoch checkpoints (0: epoch ends only)")
    checkpoint_minutes: float = param(0.0, ge=0.0, help="minutes between mid-epoch checkpoints (0: off)")
    stop_signals: tuple[str, ...] = param(
        DEFAULT_STOP_SIGNALS, help=f"on these, finish the step, checkpoint and exit {PREEMPTED_EXIT_CODE}"
    )
    tensorboard: bool = param(False)
    log: str | None = param(None, help="experiment trackers beside log.jsonl: tensorboard,wandb,mlflow (any of them)")
    progress: bool = param(True)
    resume: bool = param(True, help="resume from <output>/last.pth when it exists")

    def effective_batch(self, world_size: int) -> int:
        """Images per optimiser step over all processes."""
        return self.batch_size * self.grad_accum * world_size

    def global_lr(self, world_size: int) -> float:
        return self.lr if self.lr is not None else self.base_lr * self.effective_batch(world_size) / 1024

    @property
    def mixup_active(self) -> bool:
        return (self.mixup > 0 or self.cutmix > 0) and self.mixup_prob > 0

    def check(self) -> None:
        """Rules that involve more than one field."""
        parse_trackers(self.log)  # an unknown tracker name: one line naming log, before any work
        check_img_size(self.img_size)
        if self.eval_resize is not None and self.eval_resize < self.img_size:
            raise ValueError(f"eval_resize ({self.eval_resize}) must be at least img_size ({self.img_size})")
        if self.distillation != "none" and not self.teacher:
            raise ValueError(f"distillation={self.distillation} needs teacher=NAME (or set distillation=none)")
        if self.mixup_active and self.batch_size % 2:
            raise ValueError(
                f"Mixup/CutMix mix each batch with its reverse and need an even batch_size, got "
                f"{self.batch_size}; use an even batch_size or set mixup=0 cutmix=0"
            )
        if not (
            self.device in ("auto", "cpu", "cuda") or (self.device.startswith("cuda:") and self.device[5:].isdigit())
        ):
            raise ValueError(f"device={self.device!r} is not one of auto, cpu, cuda, cuda:N")
        if self.warmup_epochs >= self.epochs and self.warmup_epochs > 0 and self.sched != "constant":
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be fewer than epochs ({self.epochs})")
        if self.auto_augment:
            _check_auto_augment(self.auto_augment)
        check_stop_signals(self.stop_signals)


def _check_auto_augment(spec: str) -> None:
    builders = {"rand": rand_augment_transform, "augmix": augment_and_mix_transform}
    build = builders.get(spec.split("-")[0], auto_augment_transform)
    try:
        build(spec, {"translate_const": 100, "img_mean": (124, 116, 104)})
    except Exception as err:  # timm raises AssertionError/KeyError/ValueError for malformed specs
        raise ValueError(
            f"auto_augment={spec!r} is not a timm auto-augment spec ({type(err).__name__}: {err}); "
            "use e.g. rand-m9-mstd0.5-inc1 (the official policy) or none"
        ) from None


def build_config(
    config_file: str | Path | None = None, overrides: dict[str, Any] | list[str] | None = None
) -> TrainConfig:
    """Defaults, then the YAML recipe, then overrides (later wins); every value type- and range-checked."""
    return runtime_config.load_config(TrainConfig, config_file, overrides or {})


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    return runtime_config.from_dict(TrainConfig, data)


def __getattr__(name: str) -> Any:
    # dump_yaml was defined here and in runtime/config.py; one definition remains (the runtime's, every config's)
    if name == "dump_yaml":
        warnings.warn(
            "efficientformer.train.config.dump_yaml is deprecated; use efficientformer.runtime.config.dump_yaml",
            DeprecationWarning,
            stacklevel=2,
        )
        return runtime_config.dump_yaml
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["TrainConfig", "build_config", "config_from_dict"]
