"""Typed training configuration: dataclass defaults = the official ImageNet recipe, YAML files, CLI overrides."""

from __future__ import annotations

import types
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml


@dataclass
class TrainConfig:
    # -- model ---------------------------------------------------------------------------------------------------
    model: str = "efficientformerv2_s0"
    img_size: int = 224
    drop_path: float | None = None  # None: the model's published constant (V1 0; V2 0/0/0.02/0.1)
    finetune: str | None = None  # any checkpoint layout load_checkpoint reads; heads of another class count dropped
    # -- data ----------------------------------------------------------------------------------------------------
    data: str | None = None  # ImageNet-style folder with train/ and val/; None = the bundled digits dataset
    cache_dir: str | None = None  # where the bundled dataset is written (default ~/.cache/efficientformer)
    digits_size: int = 64  # side of the PNGs written for the bundled digits dataset
    workers: int = 8
    batch_size: int = 128  # per process
    eval_batch_size: int | None = None  # default 1.5 x batch_size, as published
    eval_resize: int | None = None  # default round(img_size / 0.875): 256 for 224
    # -- optimisation --------------------------------------------------------------------------------------------
    epochs: int = 300
    opt: str = "adamw"
    base_lr: float = 1e-3  # lr = base_lr * global batch / 1024 unless lr is set
    lr: float | None = None
    weight_decay: float = 0.025
    opt_eps: float = 1e-8
    sched: str = "cosine"  # per-epoch cosine, or "constant"
    warmup_epochs: int = 5
    warmup_lr: float = 1e-5
    min_lr: float = 1e-5
    clip_grad: float | None = 0.01
    clip_mode: str = "agc"  # agc (adaptive, per unit), norm, value
    freeze_bn: bool = False  # keep BatchNorm in eval mode (running statistics): small-batch fine-tuning
    # -- augmentation and regularisation ------------------------------------------------------------------------
    smoothing: float = 0.1
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    randaugment: str | None = "m9-mstd0.5"
    reprob: float = 0.25
    hflip: float = 0.5
    crop_scale_min: float = 0.08
    no_aug: bool = False  # train on the evaluation transform (deterministic inputs; used for exact comparisons)
    repeated_aug: bool = True
    repeats: int = 3
    ema: bool = True
    ema_decay: float = 0.99996
    ema_warmup: bool = False  # decay min(ema_decay, (1+n)/(10+n)) at update n; for short runs (off as published)
    # -- distillation (DeiT) ------------------------------------------------------------------------------------
    distillation: str = "hard"  # none | soft | hard
    distillation_alpha: float = 0.5
    distillation_tau: float = 1.0
    teacher: str | None = "regnety_160"  # our model name, a timm name, efficientnet_lite0, or a TorchScript file
    teacher_checkpoint: str | None = None
    # -- hardware ------------------------------------------------------------------------------------------------
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "none"  # none | bf16 | fp16 (autocast)
    sync_bn: bool = True  # only applied on multi-GPU CUDA runs
    channels_last: bool = False
    compile: bool = False
    threads: int | None = None  # torch intra-op CPU threads (None: torch's default)
    # -- run -----------------------------------------------------------------------------------------------------
    output: str | None = None  # default runs/<model>-<dataset>
    seed: int = 0
    eval_every: int = 1
    max_steps: int | None = None  # cap on training steps per epoch (smoke tests)
    tensorboard: bool = False
    progress: bool = True
    resume: bool = True  # resume from <output>/last.pth when it exists

    def global_lr(self, world_size: int) -> float:
        return self.lr if self.lr is not None else self.base_lr * self.batch_size * world_size / 1024

    def validate(self) -> None:
        choices = {
            "distillation": ("none", "soft", "hard"),
            "amp": ("none", "bf16", "fp16"),
            "clip_mode": ("agc", "norm", "value"),
            "sched": ("cosine", "constant"),
            "opt": ("adamw", "sgd"),
            "device": ("auto", "cpu", "cuda"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key}={getattr(self, key)!r} is not one of {', '.join(allowed)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")
        if self.img_size % 32:
            raise ValueError(f"img_size must be a multiple of 32, got {self.img_size}")
        if self.distillation != "none" and not self.teacher:
            raise ValueError(f"distillation={self.distillation} needs teacher=NAME (or set distillation=none)")


FIELDS = {f.name: f for f in fields(TrainConfig)}


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def coerce(key: str, value: Any) -> Any:
    """Convert a YAML/CLI value to the declared type of ``key``; one-line error otherwise."""
    if key not in FIELDS:
        import difflib

        close = difflib.get_close_matches(key, FIELDS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown config key {key!r}{hint}")
    hint = _field_types()[key]
    args = typing.get_args(hint)
    optional = type(None) in args or (isinstance(hint, types.UnionType) and type(None) in args)
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if isinstance(value, str):
        text = value.strip()
        if optional and text.lower() in ("none", "null", ""):
            return None
        if base is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{key} expects true/false, got {value!r}")
        try:
            return base(text)
        except ValueError:
            raise ValueError(f"{key} expects {base.__name__}, got {value!r}") from None
    if value is None:
        if not optional:
            raise ValueError(f"{key} cannot be null")
        return None
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, base) or (base is int and isinstance(value, bool)):
        raise ValueError(f"{key} expects {base.__name__}, got {value!r}")
    return value


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of config keys, got {type(data).__name__}")
    return data


def parse_overrides(items: list[str]) -> dict[str, str]:
    """``["lr=0.1", "--epochs", "5", "--ema=false", "--no-ema"]`` -> ``{"lr": "0.1", "epochs": "5", ...}``."""
    out: dict[str, str] = {}
    i = 0
    while i < len(items):
        item = items[i]
        if item.startswith("--"):
            key = item[2:]
            if "=" in key:
                key, value = key.split("=", 1)
            elif key.startswith("no-") and key[3:].replace("-", "_") in FIELDS:
                key, value = key[3:], "false"
            elif i + 1 < len(items) and not items[i + 1].startswith("--") and "=" not in items[i + 1]:
                value = items[i + 1]
                i += 1
            else:
                value = "true"
        elif "=" in item:
            key, value = item.split("=", 1)
        else:
            raise ValueError(f"cannot parse override {item!r}; use key=value or --key value")
        out[key.replace("-", "_")] = value
        i += 1
    return out


def build_config(config_file: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the YAML file, then overrides (later wins)."""
    values: dict[str, Any] = {}
    if config_file is not None:
        for key, value in load_yaml(config_file).items():
            values[key] = coerce(key, value)
    for key, value in (overrides or {}).items():
        values[key] = coerce(key, value)
    cfg = TrainConfig(**values)
    cfg.validate()
    return cfg


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return asdict(cfg)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    return TrainConfig(**{k: coerce(k, v) for k, v in data.items() if k in FIELDS})


def dump_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


__all__ = ["TrainConfig", "build_config", "parse_overrides", "dump_yaml", "config_to_dict", "config_from_dict"]
