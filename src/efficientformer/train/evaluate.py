"""Evaluate a checkpoint of any layout with the published preprocessing; the teacher is never built here."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from ..data.folder import TolerantImageFolder
from ..data.transforms import describe_eval_transform, eval_transform
from ..models import create_model, load_checkpoint
from ..models.checkpoint import stored_class_names
from ..runtime import distributed
from ..runtime.checkpoint import CheckpointReadError, read_checkpoint
from .engine import classification_metrics, eval_loader


def _trained_class_names(path: str | Path) -> list[str] | None:
    """The class names a training checkpoint of ours records; None for other layouts (read by load_checkpoint)."""
    if Path(path).suffix == ".safetensors":
        return None
    try:
        state = read_checkpoint(path, "read")
    except CheckpointReadError:
        return None
    return stored_class_names(state)


def evaluate_checkpoint(
    model_name: str,
    checkpoint: str | Path,
    data: str | Path,
    *,
    img_size: int = 224,
    resize: int | None = None,
    batch_size: int = 64,
    workers: int = 2,
    use_ema: bool = False,
    amp: str = "none",
    device: str = "auto",
    max_pixels: int | None = None,
) -> dict | None:
    """Top-1/top-5/loss of ``checkpoint`` on an ImageNet-style folder; under torchrun each process scores a share
    and rank 0 returns the result (other ranks return None)."""
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"--max-pixels must be a positive number of pixels, got {max_pixels}")
    root = Path(data).expanduser()
    folder = root / "val" if (root / "val").is_dir() else root
    with distributed.process_group(device) as info:
        dataset = TolerantImageFolder(folder, eval_transform(img_size, resize), max_pixels=max_pixels)
        names = _trained_class_names(checkpoint)
        if names is not None and names != list(dataset.classes):
            raise ValueError(
                f"the checkpoint was trained on classes {names[:5]}... but {folder} has {dataset.classes[:5]}...; "
                "evaluate on a folder with the same class subfolders"
            )
        model = create_model(model_name, num_classes=len(dataset.classes), img_size=img_size)
        report = load_checkpoint(model, checkpoint, strict=True, use_ema=use_ema)
        model.to(info.device)
        result = classification_metrics(model, eval_loader(dataset, batch_size, workers, info), info.device, amp)
    if not info.is_main:
        return None
    return {
        "model": model_name,
        "checkpoint": str(checkpoint),
        "layout": report.layout,
        "top1": result["val_top1"],
        "top5": result["val_top5"],
        "loss": result["val_loss"],
        "images": result["val_count"],
        "skipped": result["val_skipped"],
        "classes": len(dataset.classes),
        "preprocessing": describe_eval_transform(img_size, resize),
    }


def __getattr__(name: str) -> Any:
    # inference.api had another checkpoint_class_names (of a read checkpoint); one name remains, in the models layer
    if name == "checkpoint_class_names":
        warnings.warn(
            "efficientformer.train.evaluate.checkpoint_class_names is deprecated; use "
            "efficientformer.models.checkpoint.stored_class_names(efficientformer.runtime.checkpoint.read_checkpoint"
            "(path))",
            DeprecationWarning,
            stacklevel=2,
        )
        return _trained_class_names
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
