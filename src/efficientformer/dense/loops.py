"""Training, evaluation and prediction loops for both dense tasks (single process or torchrun DDP).

Layout of an output directory: ``config.json``, ``log.jsonl`` (one JSON record per log step / evaluation),
``last.pth`` (model, optimizer, scheduler, progress, RNG, config; rewritten atomically), ``metrics.json`` (the last
evaluation). Rerunning ``train`` with the same output directory resumes from ``last.pth``.
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from ..utils.io import atomic_write_json
from . import detection as det
from . import segmentation as seg
from .engine import (
    CHECKPOINT_NAME,
    DistEnv,
    JsonlLog,
    ResumableSampler,
    WarmupSchedule,
    barrier,
    cleanup_distributed,
    init_distributed,
    load_checkpoint_file,
    param_groups,
    save_checkpoint,
    seed_worker,
    set_rng_state,
    unwrap,
    write_config,
)


def _seed_everything(seed: int, rank: int, threads: int = 0) -> None:
    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    random.seed(seed + rank)


def _loader(dataset, sampler: ResumableSampler, batch_size: int, workers: int, collate=None, drop_last=False):
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        drop_last=drop_last,
        worker_init_fn=seed_worker,
        persistent_workers=False,
    )


def _wrap_ddp(model: nn.Module, env: DistEnv, find_unused: bool) -> nn.Module:
    if not env.distributed:
        return model
    ids = [env.device.index] if env.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)


def _resume(out: Path, cfg, model: nn.Module, optimizer, schedule) -> dict[str, Any]:
    path = out / CHECKPOINT_NAME
    if not (cfg.resume and path.is_file()):
        return {"iteration": 0, "epoch": 0, "epoch_iter": 0}
    state = load_checkpoint_file(path)
    if state.get("config", {}).get("model") != cfg.model:
        raise ValueError(f"{path} was trained with model {state.get('config', {}).get('model')!r}, not "
                         f"{cfg.model!r}; use another --output or resume=false")  # fmt: skip
    unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return dict(state["progress"])


def _build_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.999))


def _clip(model: nn.Module, max_norm: float) -> None:
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], max_norm)


def _progress_bar(total: int, initial: int, env: DistEnv, desc: str):
    return tqdm(total=total, initial=initial, desc=desc, disable=not env.is_main, dynamic_ncols=True, file=sys.stderr)


# -- detection ---------------------------------------------------------------------------------------------------
def train_detection(cfg: det.DetectConfig) -> dict:
    """Mask R-CNN training with the epoch/step schedule; returns the final evaluation metrics."""
    env = init_distributed(cfg.device)
    try:
        return _train_detection(cfg, env)
    finally:
        cleanup_distributed()


def _train_detection(cfg: det.DetectConfig, env: DistEnv) -> dict:
    out = Path(cfg.output)
    _seed_everything(cfg.seed, env.rank, cfg.threads)
    train_set = det.CocoInstances(*det.coco_paths(cfg.data, cfg.train_split), train=True, flip_prob=cfg.flip_prob)
    val_set = det.CocoInstances(*det.coco_paths(cfg.data, cfg.val_split))
    if val_set.cat_ids != train_set.cat_ids:
        raise ValueError("train and val annotation files list different categories")
    model = det.build_mask_rcnn(cfg, train_set.num_classes).to(env.device)
    optimizer = _build_optimizer(model, cfg.lr, cfg.resolved_weight_decay())
    per_epoch = det.iterations_per_epoch(len(train_set), cfg.batch_size, env.world_size)
    total = per_epoch * cfg.epochs
    schedule = WarmupSchedule(optimizer, total, warmup_iters=cfg.warmup_iters, warmup_ratio=cfg.warmup_ratio,
                              milestones=tuple(e * per_epoch for e in cfg.lr_steps))  # fmt: skip
    progress = _resume(out, cfg, model, optimizer, schedule)
    ddp_model = _wrap_ddp(model, env, find_unused=True)
    log = JsonlLog(out / "log.jsonl", enabled=env.is_main)
    if env.is_main:
        write_config(out, cfg)
    sampler = ResumableSampler(len(train_set), shuffle=True, seed=cfg.seed, rank=env.rank, world_size=env.world_size)
    stop_at = min(total, cfg.max_iters) if cfg.max_iters > 0 else total
    it = int(progress["iteration"])
    metrics: dict = {}
    meta = {"task": "detect", "classes": train_set.class_names, "cat_ids": train_set.cat_ids}
    bar = _progress_bar(stop_at, it, env, "detect train")

    def checkpoint(epoch: int, epoch_iter: int) -> None:
        if env.is_main:
            prog = {"iteration": it, "epoch": epoch, "epoch_iter": epoch_iter, **meta}
            save_checkpoint(out / CHECKPOINT_NAME, model, optimizer, schedule, prog, cfg)

    def run_eval(epoch: int) -> None:
        nonlocal metrics
        if env.is_main:
            metrics = det.evaluate(model, val_set, env.device, batch_size=cfg.batch_size)
            log.write(kind="eval", iteration=it, epoch=epoch, **metrics)
            atomic_write_json(out / "metrics.json", {"iteration": it, "epoch": epoch, **metrics})
            bar.write(f"epoch {epoch} iter {it}: bbox AP {metrics['bbox_AP']:.3f} AP50 {metrics['bbox_AP50']:.3f} "
                      f"| segm AP {metrics['segm_AP']:.3f} AP50 {metrics['segm_AP50']:.3f}")  # fmt: skip
        barrier(env)

    epoch = int(progress["epoch"])
    epoch_iter = int(progress["epoch_iter"])
    while it < stop_at and epoch < cfg.epochs:
        sampler.set_epoch(epoch, start=epoch_iter * cfg.batch_size)
        ddp_model.train()
        for images, targets in _loader(train_set, sampler, cfg.batch_size, cfg.workers, collate=det.collate):
            images = [im.to(env.device) for im in images]
            targets = [{k: v.to(env.device) for k, v in t.items()} for t in targets]
            losses = ddp_model(images, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at iteration {it}; lower lr or check the data")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            _clip(model, cfg.grad_clip)
            optimizer.step()
            schedule.step()
            it += 1
            epoch_iter += 1
            bar.update(1)
            if it % cfg.log_every == 0 or it == stop_at:
                rec = {k: round(v.item(), 5) for k, v in losses.items()}
                log.write(kind="train", iteration=it, epoch=epoch, lr=optimizer.param_groups[0]["lr"],
                          loss=round(loss.item(), 5), **rec)  # fmt: skip
                bar.set_postfix(loss=f"{loss.item():.3f}")
            if cfg.checkpoint_every > 0 and it % cfg.checkpoint_every == 0:
                checkpoint(epoch, epoch_iter)
            if it >= stop_at:
                break
        if epoch_iter >= per_epoch:
            epoch, epoch_iter = epoch + 1, 0
        checkpoint(epoch, epoch_iter)
        finished = it >= stop_at or epoch >= cfg.epochs
        if not finished and cfg.eval_every > 0 and epoch % cfg.eval_every == 0 and epoch_iter == 0:
            run_eval(epoch)
    bar.close()
    run_eval(epoch)
    return metrics


def _load_for_inference(checkpoint: str | Path, task: str, device: torch.device):
    state = load_checkpoint_file(checkpoint)
    if state.get("progress", {}).get("task") != task:
        raise ValueError(f"{checkpoint} is not a `{task}` checkpoint (it is {state.get('progress', {}).get('task')!r})")
    return state


def detection_model_from_checkpoint(checkpoint: str | Path, device: torch.device, **overrides):
    state = _load_for_inference(checkpoint, "detect", device)
    fields = {f.name for f in dataclasses.fields(det.DetectConfig)}
    cfg_dict = {k: tuple(v) if isinstance(v, list) else v for k, v in state["config"].items() if k in fields}
    cfg_dict.update({k: v for k, v in overrides.items() if v is not None})
    cfg = det.DetectConfig(**{**cfg_dict, "pretrained": None})
    model = det.build_mask_rcnn(cfg, len(state["progress"]["classes"]))
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg, state["progress"]


def eval_detection(checkpoint: str, data: str, split: str, device: str = "auto") -> dict:
    dev = _device(device)
    model, cfg, prog = detection_model_from_checkpoint(checkpoint, dev)
    dataset = det.CocoInstances(*det.coco_paths(data or cfg.data, split or cfg.val_split))
    if dataset.cat_ids != list(prog["cat_ids"]):
        raise ValueError(f"the data set's categories {dataset.cat_ids} differ from the checkpoint's {prog['cat_ids']}")
    return det.evaluate(model, dataset, dev, batch_size=cfg.batch_size)


def predict_detection(checkpoint: str, image: str, output: str, threshold: float | None, device: str = "auto") -> int:
    dev = _device(device)
    model, cfg, prog = detection_model_from_checkpoint(checkpoint, dev)
    img = _open_image(image)
    x = torch.from_numpy(np.asarray(img, np.float32) / 255.0).permute(2, 0, 1).to(dev)
    with torch.no_grad():
        result = model([x])[0]
    drawn, n = det.draw_detections(img, result, list(prog["classes"]), cfg.score_threshold if threshold is None
                                   else threshold)  # fmt: skip
    _save_png(drawn, output)
    return n


# -- segmentation ------------------------------------------------------------------------------------------------
def train_segmentation(cfg: seg.SegmentConfig) -> dict:
    env = init_distributed(cfg.device)
    try:
        return _train_segmentation(cfg, env)
    finally:
        cleanup_distributed()


def _train_segmentation(cfg: seg.SegmentConfig, env: DistEnv) -> dict:
    out = Path(cfg.output)
    _seed_everything(cfg.seed, env.rank, cfg.threads)
    train_set = seg.ADESegmentation(cfg.data, cfg.train_split, cfg, train=True)
    val_set = seg.ADESegmentation(cfg.data, cfg.val_split, cfg, train=False)
    model = seg.SemanticFPN(cfg).to(env.device)
    optimizer = _build_optimizer(model, cfg.lr, cfg.weight_decay)
    schedule = WarmupSchedule(optimizer, cfg.iters, warmup_iters=cfg.warmup_iters, poly_power=cfg.poly_power,
                              min_lr=cfg.min_lr)  # fmt: skip
    progress = _resume(out, cfg, model, optimizer, schedule)
    ddp_model = _wrap_ddp(model, env, find_unused=False)
    log = JsonlLog(out / "log.jsonl", enabled=env.is_main)
    if env.is_main:
        write_config(out, cfg)
    sampler = ResumableSampler(len(train_set), shuffle=True, seed=cfg.seed, rank=env.rank, world_size=env.world_size)
    per_epoch = len(sampler) // cfg.batch_size
    if per_epoch == 0:
        raise ValueError(f"batch_size {cfg.batch_size} is larger than the training split per process "
                         f"({len(sampler)} images); lower batch_size")  # fmt: skip
    it, epoch, epoch_iter = int(progress["iteration"]), int(progress["epoch"]), int(progress["epoch_iter"])
    meta = {"task": "segment", "classes": train_set.class_names or [str(i) for i in range(cfg.num_classes)]}
    metrics: dict = {}
    bar = _progress_bar(cfg.iters, it, env, "segment train")

    def checkpoint() -> None:
        if env.is_main:
            prog = {"iteration": it, "epoch": epoch, "epoch_iter": epoch_iter, **meta}
            save_checkpoint(out / CHECKPOINT_NAME, model, optimizer, schedule, prog, cfg)

    def run_eval() -> None:
        nonlocal metrics
        if env.is_main:
            metrics = seg.evaluate(model, val_set, cfg, env.device)
            log.write(kind="eval", iteration=it, **metrics)
            atomic_write_json(out / "metrics.json", {"iteration": it, **metrics})
            bar.write(f"iter {it}: mIoU {metrics['mIoU']:.4f} aAcc {metrics['aAcc']:.4f}")
        barrier(env)

    while it < cfg.iters:
        sampler.set_epoch(epoch, start=epoch_iter * cfg.batch_size)
        ddp_model.train()
        for images, labels in _loader(train_set, sampler, cfg.batch_size, cfg.workers, drop_last=True):
            images, labels = images.to(env.device), labels.to(env.device)
            logits = ddp_model(images)
            loss = F.cross_entropy(logits, labels, ignore_index=cfg.ignore_index)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at iteration {it}; lower lr or check the labels")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            it += 1
            epoch_iter += 1
            bar.update(1)
            if it % cfg.log_every == 0 or it == cfg.iters:
                log.write(kind="train", iteration=it, lr=optimizer.param_groups[0]["lr"], loss=round(loss.item(), 5))
                bar.set_postfix(loss=f"{loss.item():.3f}")
            done = it >= cfg.iters
            if epoch_iter >= per_epoch:
                epoch, epoch_iter = epoch + 1, 0
            if done or (cfg.checkpoint_every > 0 and it % cfg.checkpoint_every == 0):
                checkpoint()
            if not done and cfg.eval_every > 0 and it % cfg.eval_every == 0:
                run_eval()
                ddp_model.train()
            if done or epoch_iter == 0:
                break
    bar.close()
    run_eval()
    return metrics


def segmentation_model_from_checkpoint(checkpoint: str | Path, device: torch.device):
    state = _load_for_inference(checkpoint, "segment", device)
    fields = {f.name for f in dataclasses.fields(seg.SegmentConfig)}
    cfg_dict = {k: tuple(v) if isinstance(v, list) else v for k, v in state["config"].items() if k in fields}
    cfg = seg.SegmentConfig(**{**cfg_dict, "pretrained": None})
    model = seg.SemanticFPN(cfg)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg, state["progress"]


def eval_segmentation(checkpoint: str, data: str, split: str, device: str = "auto") -> dict:
    dev = _device(device)
    model, cfg, _ = segmentation_model_from_checkpoint(checkpoint, dev)
    dataset = seg.ADESegmentation(data or cfg.data, split or cfg.val_split, cfg)
    return seg.evaluate(model, dataset, cfg, dev)


def predict_segmentation(checkpoint: str, image: str, output: str, device: str = "auto") -> dict:
    dev = _device(device)
    model, cfg, prog = segmentation_model_from_checkpoint(checkpoint, dev)
    img = _open_image(image)
    pred = seg.predict_logits(model, img, cfg, dev).argmax(0).cpu().numpy()
    _save_png(seg.overlay(img, pred, cfg.num_classes, cfg.overlay_alpha), output)
    names = list(prog["classes"])
    counts = np.bincount(pred.ravel(), minlength=cfg.num_classes)
    return {names[i] if i < len(names) else str(i): round(float(c) / pred.size, 4) for i, c in enumerate(counts) if c}


# -- helpers -----------------------------------------------------------------------------------------------------
def _device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} asked for CUDA but none is available; use --device cpu")
    return torch.device(device)


def _open_image(path: str) -> Image.Image:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image not found: {p}")
    try:
        return Image.open(p).convert("RGB")
    except OSError as err:
        raise ValueError(f"cannot read {p} as an image: {err}") from None


def _save_png(img: Image.Image, output: str) -> None:
    from ..utils.io import atomic_write_bytes

    out = Path(output)
    if out.suffix.lower() != ".png":
        raise ValueError(f"output must be a .png file, got {out}")
    atomic_write_bytes(out, lambda f: img.save(f, format="PNG"))


def dump(metrics: dict) -> str:
    return json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()}, indent=2)


__all__ = [
    "eval_detection",
    "eval_segmentation",
    "predict_detection",
    "predict_segmentation",
    "train_detection",
    "train_segmentation",
]
