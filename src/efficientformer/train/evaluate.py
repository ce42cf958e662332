"""Evaluate a checkpoint of any layout with the published preprocessing; the teacher is never built here."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import DataLoader

from ..data.folder import TolerantImageFolder, collate_skip
from ..data.samplers import EvalSampler
from ..data.transforms import describe_eval_transform, eval_transform
from . import distributed
from .engine import evaluate


def _checkpoint_class_names(path: str | Path) -> list[str] | None:
    from ..utils.io import safe_torch_load

    try:
        obj = safe_torch_load(path)
    except Exception:  # other layouts (safetensors, official pickles) are read by load_checkpoint itself
        return None
    names = obj.get("class_names") if isinstance(obj, dict) else None
    return list(names) if names is not None else None


def evaluate_checkpoint(
    model_name: str, checkpoint: str | Path, data: str | Path, *, img_size: int = 224, resize: int | None = None,
    batch_size: int = 64, workers: int = 2, use_ema: bool = False, amp: str = "none", device: str = "auto",
) -> dict | None:  # fmt: skip
    from ..models import create_model, load_checkpoint

    root = Path(data).expanduser()
    folder = root / "val" if (root / "val").is_dir() else root
    info = distributed.setup(device)
    try:
        dataset = TolerantImageFolder(folder, eval_transform(img_size, resize))
        ckpt_names = _checkpoint_class_names(checkpoint) if Path(checkpoint).suffix != ".safetensors" else None
        if ckpt_names is not None and ckpt_names != list(dataset.classes):
            raise ValueError(
                f"the checkpoint was trained on classes {ckpt_names[:5]}... but {folder} has {dataset.classes[:5]}...; "
                "evaluate on a folder with the same class subfolders"
            )
        model = create_model(model_name, num_classes=len(dataset.classes), img_size=img_size)
        report = load_checkpoint(model, checkpoint, strict=True, use_ema=use_ema)
        model.to(info.device)
        loader = DataLoader(
            dataset, batch_size=batch_size, sampler=EvalSampler(len(dataset), info.rank, info.world),
            num_workers=workers, collate_fn=collate_skip,
        )  # fmt: skip
        result = evaluate(model, loader, info.device, amp)
    finally:
        distributed.cleanup()
    if not info.is_main:
        return None
    return {
        "model": model_name,
        "checkpoint": str(checkpoint),
        "layout": report.layout,
        "top1": result["top1"],
        "top5": result["top5"],
        "loss": result["loss"],
        "images": result["count"],
        "skipped": result["skipped"],
        "classes": len(dataset.classes),
        "preprocessing": describe_eval_transform(img_size, resize),
    }
