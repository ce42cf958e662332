"""Detection and segmentation as plans for the runtime's loop, and their evaluation and prediction.

Layout of an output directory: ``config.yaml``, ``log.jsonl`` (one JSON record per log step / evaluation / epoch),
``last.pth`` (the runtime's checkpoint: model, optimizer, scheduler, progress, every rank's RNG, config; rewritten
atomically), ``metrics.json`` (the last evaluation), ``curves.png``. Rerunning ``train`` with the same output
directory resumes from ``last.pth``, also part-way through an epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..data.images import read_rgb
from ..data.samplers import TrainSampler
from ..runtime import config as runtime_config
from ..runtime.checkpoint import CheckpointReadError, read_checkpoint, seed_all
from ..runtime.distributed import DistInfo, process_group, resolve_device
from ..runtime.loaders import epoch_loader
from ..runtime.lock import run_folder_lock
from ..runtime.loop import Plan, Reporting, Schedule, Step, Task, fit
from ..runtime.optim import build_optimizer
from ..runtime.schedule import WarmupSchedule
from ..utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from . import detection as det
from . import segmentation as seg


def _check_model(cfg) -> Callable[[dict, Path], None]:
    def check(state: dict, path: Path) -> None:
        if state.get("config", {}).get("model") != cfg.model:
            raise CheckpointReadError(
                f"{path} was trained with model {state.get('config', {}).get('model')!r}, not "
                f"{cfg.model!r}; use another --output or resume=false"
            )

    return check


def _run(cfg, env: DistInfo, plan: Plan) -> dict:
    out = Path(cfg.output)
    with run_folder_lock(out, enabled=env.is_main):  # before anything is written there: one run per folder
        if env.is_main:
            atomic_write_text(out / "config.yaml", runtime_config.dump_yaml(cfg))
        state = fit(plan)
        if env.is_main:
            atomic_write_json(
                out / "metrics.json", {"iteration": state.iteration, "epoch": state.epoch, **state.metrics}
            )
    return state.metrics


def _train(cfg, build: Callable[[Any, DistInfo], Plan]) -> dict:
    with process_group(cfg.device) as env:
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        seed_all(cfg.seed)  # the same initial weights on every rank
        plan = build(cfg, env)
        seed_all(cfg.seed + env.rank)  # then each rank its own stream
        return _run(cfg, env, plan)


# -- detection ---------------------------------------------------------------------------------------------------
def train_detection(cfg: det.DetectConfig) -> dict:
    """Mask R-CNN training with the epoch/step schedule; returns the final evaluation metrics (on every rank)."""
    return _train(cfg, _plan_detection)


def _plan_detection(cfg: det.DetectConfig, env: DistInfo) -> Plan:
    train_set = det.CocoInstances(*det.coco_paths(cfg.data, cfg.train_split), train=True, flip_prob=cfg.hflip)
    val_set = det.CocoInstances(*det.coco_paths(cfg.data, cfg.val_split))
    if val_set.cat_ids != train_set.cat_ids:
        raise ValueError("train and val annotation files list different categories")
    model = det.build_mask_rcnn(cfg, train_set.num_classes).to(env.device)
    optimizer = build_optimizer(model, "adamw", cfg.lr, cfg.resolved_weight_decay())
    per_epoch = det.iterations_per_epoch(len(train_set), cfg.batch_size, env.world)
    total = per_epoch * cfg.epochs
    schedule = WarmupSchedule(
        optimizer,
        total,
        warmup_iters=cfg.warmup_steps,
        warmup_ratio=cfg.warmup_ratio,
        milestones=tuple(e * per_epoch for e in cfg.lr_steps),
    )

    def step(train_model: nn.Module, batch) -> Step:
        images = [im.to(env.device) for im in batch[0]]
        targets = [{k: v.to(env.device) for k, v in t.items()} for t in batch[1]]
        parts = train_model(images, targets)
        return Step(sum(parts.values()), len(images), parts)

    def describe(m: dict) -> str:
        text = f"epoch {m['epoch']} iter {m['iteration']}: loss {m['train_loss']:.3f}"
        if "bbox_AP" in m:
            text += (
                f" | bbox AP {m['bbox_AP']:.3f} AP50 {m['bbox_AP50']:.3f} | segm AP {m['segm_AP']:.3f} "
                f"AP50 {m['segm_AP50']:.3f}"
            )
        return text

    sampler = TrainSampler(len(train_set), env.rank, env.world, seed=cfg.seed)
    return Plan(
        task=Task(
            name="detect",
            model=model,
            optimizer=optimizer,
            step=step,
            batches=epoch_loader(
                train_set, sampler, seed=cfg.seed, batch_size=cfg.batch_size, workers=cfg.workers, collate=det.collate
            ),
            evaluate=lambda m: det.detection_metrics(
                m, val_set, env.device, cfg.batch_size, rank=env.rank, world_size=env.world
            ),
            config=cfg,
            seed=cfg.seed,
            meta={"classes": train_set.class_names, "cat_ids": train_set.cat_ids},
            check_resume=_check_model(cfg),
            find_unused=True,  # torchvision's heads skip the mask branch for images without positive proposals
        ),
        schedule=_schedule(
            cfg, per_epoch, min(total, cfg.steps) if cfg.steps > 0 else total, schedule, eval_unit="epoch"
        ),
        reporting=Reporting(
            log_every=cfg.log_every,
            metric_names=("bbox_AP50", "segm_AP50"),
            describe=describe,
            trackers=cfg.log or False,
        ),
        output=Path(cfg.output),
        info=env,
    )


def _schedule(cfg, per_epoch: int, total: int, scheduler, eval_unit: str) -> Schedule:
    """The schedule both dense tasks share: iteration scheduler, norm clipping, mid-epoch checkpoints, signals."""
    return Schedule(
        steps_per_epoch=per_epoch,
        total_steps=total,
        iteration_scheduler=scheduler,
        clip_grad=cfg.clip_grad or None,
        clip_mode="norm",
        eval_every=cfg.eval_every,
        eval_unit=eval_unit,
        checkpoint_every=cfg.checkpoint_every,
        checkpoint_minutes=cfg.checkpoint_minutes,
        stop_signals=cfg.stop_signals,
        resume=cfg.resume,
    )


def _model_from_checkpoint(
    checkpoint: str | Path, task: str, cfg_cls: type, build: Callable, device: torch.device, **overrides
):
    """Rebuild a task model from a ``train`` checkpoint: its saved config (``overrides`` on top), then its weights."""
    state = read_checkpoint(checkpoint, "load")
    if state.get("task") != task:
        raise ValueError(f"{checkpoint} is not a `{task}` checkpoint (it is {state.get('task')!r})")
    saved = dict(state["config"])
    # Checkpoints written before the output_norm option existed have no output norms, whatever the family.
    saved.setdefault("output_norm", False)
    saved.update({k: v for k, v in overrides.items() if v is not None})
    cfg = runtime_config.from_dict(cfg_cls, {**saved, "pretrained": None})
    model = build(cfg, state)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg, state


def detection_model_from_checkpoint(checkpoint: str | Path, device: torch.device, **overrides):
    """``(model, config, checkpoint)`` of a detection checkpoint, the model in eval mode on ``device``."""
    return _model_from_checkpoint(
        checkpoint,
        "detect",
        det.DetectConfig,
        lambda cfg, st: det.build_mask_rcnn(cfg, len(st["classes"])),
        device,
        **overrides,
    )


def eval_detection(checkpoint: str, data: str, split: str, device: str = "auto") -> dict:
    """COCO AP of a checkpoint on a split; under torchrun the images are shared out and every rank gets the result."""
    with process_group(device) as env:
        model, cfg, state = detection_model_from_checkpoint(checkpoint, env.device)
        dataset = det.CocoInstances(*det.coco_paths(data or cfg.data, split or cfg.val_split))
        if dataset.cat_ids != list(state["cat_ids"]):
            raise ValueError(
                f"the data set's categories {dataset.cat_ids} differ from the checkpoint's {state['cat_ids']}"
            )
        return det.detection_metrics(model, dataset, env.device, cfg.batch_size, rank=env.rank, world_size=env.world)


def predict_detection(checkpoint: str, image: str, output: str, threshold: float | None, device: str = "auto") -> int:
    dev = resolve_device(device)
    model, cfg, state = detection_model_from_checkpoint(checkpoint, dev)
    img = read_rgb(image)  # the one reader: modes, EXIF, size and aspect limits; one-line ImageLoadError
    x = torch.from_numpy(np.asarray(img, np.float32) / 255.0).permute(2, 0, 1).to(dev)
    with torch.no_grad():
        result = model([x])[0]
    drawn, n = det.draw_detections(
        img, result, list(state["classes"]), cfg.score_threshold if threshold is None else threshold
    )
    _save_png(drawn, output)
    return n


# -- segmentation ------------------------------------------------------------------------------------------------
def train_segmentation(cfg: seg.SegmentConfig) -> dict:
    """Semantic FPN training with the poly schedule; returns the final evaluation metrics (on every rank)."""
    return _train(cfg, _plan_segmentation)


def _plan_segmentation(cfg: seg.SegmentConfig, env: DistInfo) -> Plan:
    train_set = seg.ADESegmentation(cfg.data, cfg.train_split, cfg, train=True)
    val_set = seg.ADESegmentation(cfg.data, cfg.val_split, cfg, train=False)
    model = seg.SemanticFPN(cfg).to(env.device)
    optimizer = build_optimizer(model, "adamw", cfg.lr, cfg.weight_decay)
    schedule = WarmupSchedule(
        optimizer, cfg.steps, warmup_iters=cfg.warmup_steps, poly_power=cfg.poly_power, min_lr=cfg.resolved_min_lr()
    )
    sampler = TrainSampler(len(train_set), env.rank, env.world, seed=cfg.seed)
    per_epoch = len(sampler) // cfg.batch_size  # crops are batched with drop_last
    if per_epoch == 0:
        raise ValueError(
            f"batch_size {cfg.batch_size} is larger than the training split per process "
            f"({len(sampler)} images); lower batch_size"
        )

    def step(train_model: nn.Module, batch) -> Step:
        images, labels = batch[0].to(env.device), batch[1].to(env.device)
        return Step(F.cross_entropy(train_model(images), labels, ignore_index=cfg.ignore_index), images.shape[0])

    return Plan(
        task=Task(
            name="segment",
            model=model,
            optimizer=optimizer,
            step=step,
            batches=epoch_loader(
                train_set, sampler, seed=cfg.seed, batch_size=cfg.batch_size, workers=cfg.workers, drop_last=True
            ),
            evaluate=lambda m: seg.segmentation_metrics(
                m, val_set, cfg, env.device, rank=env.rank, world_size=env.world
            ),
            config=cfg,
            seed=cfg.seed,
            meta={"classes": train_set.class_names or [str(i) for i in range(cfg.num_classes)]},
            check_resume=_check_model(cfg),
        ),
        schedule=_schedule(cfg, per_epoch, cfg.steps, schedule, eval_unit="iteration"),
        reporting=Reporting(
            log_every=cfg.log_every,
            metric_names=("mIoU", "aAcc"),
            plot_x="iteration",
            describe=lambda m: f"iter {m['iteration']}: mIoU {m['mIoU']:.4f} aAcc {m['aAcc']:.4f}",
            trackers=cfg.log or False,
        ),
        output=Path(cfg.output),
        info=env,
    )


def segmentation_model_from_checkpoint(checkpoint: str | Path, device: torch.device):
    """``(model, config, checkpoint)`` of a segmentation checkpoint, the model in eval mode on ``device``."""
    return _model_from_checkpoint(
        checkpoint, "segment", seg.SegmentConfig, lambda cfg, st: seg.SemanticFPN(cfg), device
    )


def eval_segmentation(checkpoint: str, data: str, split: str, device: str = "auto") -> dict:
    """mIoU of a checkpoint on a split; under torchrun the images are shared out and every rank gets the result."""
    with process_group(device) as env:
        model, cfg, _ = segmentation_model_from_checkpoint(checkpoint, env.device)
        dataset = seg.ADESegmentation(data or cfg.data, split or cfg.val_split, cfg)
        return seg.segmentation_metrics(model, dataset, cfg, env.device, rank=env.rank, world_size=env.world)


def predict_segmentation(checkpoint: str, image: str, output: str, device: str = "auto") -> dict:
    dev = resolve_device(device)
    model, cfg, state = segmentation_model_from_checkpoint(checkpoint, dev)
    img = read_rgb(image)  # the one reader: modes, EXIF, size and aspect limits; one-line ImageLoadError
    pred = seg.predict_logits(model, img, cfg, dev).argmax(0).cpu().numpy()
    _save_png(seg.overlay(img, pred, cfg.num_classes, cfg.overlay_alpha), output)
    names = list(state["classes"])
    counts = np.bincount(pred.ravel(), minlength=cfg.num_classes)
    return {names[i] if i < len(names) else str(i): round(float(c) / pred.size, 4) for i, c in enumerate(counts) if c}


# -- helpers -----------------------------------------------------------------------------------------------------
def _save_png(img: Image.Image, output: str) -> None:
    out = Path(output)
    if out.suffix.lower() != ".png":
        raise ValueError(f"output must be a .png file, got {out}")
    atomic_write_bytes(out, lambda f: img.save(f, format="PNG"))


__all__ = [
    "eval_detection",
    "eval_segmentation",
    "predict_detection",
    "predict_segmentation",
    "train_detection",
    "train_segmentation",
]
