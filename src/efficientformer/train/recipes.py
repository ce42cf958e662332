"""Built-in recipes. ``configs/*.yaml`` hold the same values as files; the digits recipe is also kept here so that
``efficientformer train`` works from an installed wheel, without the repository's ``configs/`` folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import TrainConfig, build_config

#: Overrides of the ImageNet defaults for the bundled 8x8 digits (1438 train / 359 val images, 10 classes).
DIGITS_RECIPE: dict = {
    "model": "efficientformerv2_s0",
    "img_size": 32,  # 8x8 scans upscaled to 32 px: 4x the source resolution, the smallest input the models take
    "digits_size": 32,
    "epochs": 6,  # a complete cosine schedule; epoch 1 alone reaches ~89%, 6 end well above 90%
    "batch_size": 64,
    "workers": 1,
    "threads": 1,  # tiny convolutions are overhead-bound: one intra-op thread beats two on a busy 2-core machine
    "lr": 2.0e-3,  # ~45 steps/epoch: a larger lr than 1e-3 x 64/1024 converges within the short budget
    "warmup_epochs": 0,  # epoch 0 of a warm-up runs at warmup_lr: too costly in a 12-epoch run
    "min_lr": 1.0e-5,
    "weight_decay": 0.05,
    "mixup": 0.0,  # on 1.4k tiny images mixing hurts more than it regularises at this epoch count
    "cutmix": 0.0,
    "auto_augment": None,  # RandAugment's geometric/colour ops at m9 destroy 8-pixel strokes
    "color_jitter": None,
    "hflip": 0.0,  # mirrored digits are other digits (or none)
    "crop_scale_min": 0.5,
    "reprob": 0.0,
    "repeated_aug": False,  # repeated augmentation only pays off with large batches and datasets
    "ema_decay": 0.99,  # 0.99996 averages over ~25k steps; this run has ~130
    "ema_warmup": True,  # without it the EMA still holds ~25% of the random initial weights at the end
    "distillation": "none",  # no digits teacher exists
    "teacher": None,
    "clip_grad": 0.01,
}


def repo_configs_dir() -> Path:
    return Path(__file__).resolve().parents[3] / "configs"


def config_or_digits(config_file: str | Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """The training config of ``config_file`` and ``overrides``; with neither a config file nor ``data``, the
    bundled digits recipe (:data:`DIGITS_RECIPE`) under the overrides (what ``efficientformer train`` runs bare)."""
    if config_file is None and overrides.get("data") in (None, "", "none"):
        return build_config(None, {**DIGITS_RECIPE, **overrides})
    return build_config(config_file, overrides)
