"""Training, evaluation and prediction loops for both dense tasks (single process or torchrun DDP).

Layout of an output directory: ``config.json``, ``log.jsonl`` (one JSON record per log step / evaluation),
``last.pth`` (model, optimizer, scheduler, progress, RNG, config; rewritten atomically), ``metrics.json`` (the last
evaluation). Rerunning ``train`` with the same output directory resumes from ``last.pth``.
"""

from __future__ import annotations

import dataclasses
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

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
    DistInfo,
    JsonlLog,
    ResumableSampler,
    SeededSamples,
    WarmupSchedule,
    broadcast_buffers,
    distributed,
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


def _loader(dataset, sampler: ResumableSampler, batch_size: int, workers: int, seed: int, collate=None,
            drop_last: bool = False) -> torch.utils.data.DataLoader:  # fmt: skip
    """The training loader for the sampler's current epoch, with per-sample augmentation seeds."""
    return torch.utils.data.DataLoader(
        SeededSamples(dataset, seed, sampler.epoch),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        drop_last=drop_last,
        worker_init_fn=seed_worker,
        persistent_workers=False,
        # Its own generator: otherwise creating the iterator draws from the global RNG, one draw more in a run
        # resumed mid-epoch than in a straight one.
        generator=torch.Generator().manual_seed(seed * 1_000_003 + sampler.epoch),
    )


def _wrap_ddp(model: nn.Module, env: DistInfo, find_unused: bool) -> nn.Module:
    if not env.enabled:
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


def _progress_bar(total: int, initial: int, env: DistInfo, desc: str):
    return tqdm(total=total, initial=initial, desc=desc, disable=not env.is_main, dynamic_ncols=True, file=sys.stderr)


# -- the shared training loop -------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Plan:
    """What differs between the two tasks' training runs; everything else is :func:`_fit`."""

    task: str
    model: nn.Module  # already on the device
    optimizer: torch.optim.Optimizer
    schedule: WarmupSchedule
    loader: Callable[[ResumableSampler], Any]  # the training DataLoader for a sampler
    sampler: ResumableSampler
    per_epoch: int  # iterations per epoch (per process)
    stop_at: int  # last iteration of this run
    loss: Callable[[nn.Module, Any], tuple[torch.Tensor, dict[str, torch.Tensor]]]  # (model, batch) -> total, parts
    evaluate: Callable[[], dict]  # every rank calls it; every rank gets the same metrics
    describe: Callable[[int, int, dict], str]  # (epoch, iteration, metrics) -> progress-bar line
    meta: dict  # stored in the checkpoint's progress (task, class names, ...)
    eval_unit: Literal["epoch", "iteration"]  # what eval_every counts; "epoch" also checkpoints every epoch end
    find_unused: bool = False


def _fit(cfg, env: DistInfo, plan: _Plan) -> dict:
    """Train to ``plan.stop_at`` with resume, periodic logs, checkpoints and evaluations; returns the last metrics.

    A checkpoint is written every ``checkpoint_every`` iterations, at every epoch end for epoch-based tasks, and at
    the end; its progress (epoch, iteration within the epoch) is what the resumable sampler restarts from.
    """
    out = Path(cfg.output)
    model, optimizer, schedule = plan.model, plan.optimizer, plan.schedule
    progress = _resume(out, cfg, model, optimizer, schedule)
    ddp_model = _wrap_ddp(model, env, find_unused=plan.find_unused)
    log = JsonlLog(out / "log.jsonl", enabled=env.is_main)
    if env.is_main:
        write_config(out, cfg)
    it, epoch, epoch_iter = int(progress["iteration"]), int(progress["epoch"]), int(progress["epoch_iter"])
    metrics: dict = {}
    bar = _progress_bar(plan.stop_at, it, env, f"{plan.task} train")

    def checkpoint() -> None:
        if env.is_main:
            prog = {"iteration": it, "epoch": epoch, "epoch_iter": epoch_iter, **plan.meta}
            save_checkpoint(out / CHECKPOINT_NAME, model, optimizer, schedule, prog, cfg)

    def run_eval() -> None:
        nonlocal metrics
        broadcast_buffers(model, env)
        metrics = plan.evaluate()  # a collective under DDP: all ranks evaluate their share
        if env.is_main:
            log.write(kind="eval", iteration=it, epoch=epoch, **metrics)
            atomic_write_json(out / "metrics.json", {"iteration": it, "epoch": epoch, **metrics})
            bar.write(plan.describe(epoch, it, metrics))

    def eval_due() -> bool:
        if cfg.eval_every <= 0:
            return False
        if plan.eval_unit == "epoch":
            return epoch_iter == 0 and epoch % cfg.eval_every == 0
        return it % cfg.eval_every == 0

    while it < plan.stop_at:
        plan.sampler.set_epoch(epoch, start=epoch_iter * cfg.batch_size)
        ddp_model.train()
        for batch in plan.loader(plan.sampler):
            loss, parts = plan.loss(ddp_model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at iteration {it}; lower lr or check the data")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            _clip(model, cfg.grad_clip)
            optimizer.step()
            schedule.step()
            it, epoch_iter = it + 1, epoch_iter + 1
            bar.update(1)
            if it % cfg.log_every == 0 or it == plan.stop_at:
                rec = {k: round(v.item(), 5) for k, v in parts.items()}
                log.write(kind="train", iteration=it, epoch=epoch, lr=optimizer.param_groups[0]["lr"],
                          loss=round(loss.item(), 5), **rec)  # fmt: skip
                bar.set_postfix(loss=f"{loss.item():.3f}")
            if epoch_iter >= plan.per_epoch:
                epoch, epoch_iter = epoch + 1, 0
            done = it >= plan.stop_at
            epoch_end = epoch_iter == 0 and plan.eval_unit == "epoch"
            if done or epoch_end or (cfg.checkpoint_every > 0 and it % cfg.checkpoint_every == 0):
                checkpoint()
            if not done and eval_due():
                run_eval()
                ddp_model.train()
            if done or epoch_iter == 0:  # an epoch ends: the next one needs a fresh permutation
                break
        else:  # the loader ran dry before per_epoch batches (the samplers here never do): never spin on it
            epoch, epoch_iter = epoch + 1, 0
    bar.close()
    run_eval()
    return metrics


def _train(cfg, build: Callable[[Any, DistInfo], _Plan]) -> dict:
    with distributed(cfg.device) as env:
        _seed_everything(cfg.seed, env.rank, cfg.threads)
        return _fit(cfg, env, build(cfg, env))


def _loader_factory(dataset, cfg, collate=None, drop_last: bool = False) -> Callable[[ResumableSampler], Any]:
    return lambda sampler: _loader(dataset, sampler, cfg.batch_size, cfg.workers, cfg.seed, collate, drop_last)


# -- detection ---------------------------------------------------------------------------------------------------
def train_detection(cfg: det.DetectConfig) -> dict:
    """Mask R-CNN training with the epoch/step schedule; returns the final evaluation metrics (on every rank)."""
    return _train(cfg, _plan_detection)


def _plan_detection(cfg: det.DetectConfig, env: DistInfo) -> _Plan:
    train_set = det.CocoInstances(*det.coco_paths(cfg.data, cfg.train_split), train=True, flip_prob=cfg.flip_prob)
    val_set = det.CocoInstances(*det.coco_paths(cfg.data, cfg.val_split))
    if val_set.cat_ids != train_set.cat_ids:
        raise ValueError("train and val annotation files list different categories")
    model = det.build_mask_rcnn(cfg, train_set.num_classes).to(env.device)
    optimizer = _build_optimizer(model, cfg.lr, cfg.resolved_weight_decay())
    per_epoch = det.iterations_per_epoch(len(train_set), cfg.batch_size, env.world)
    total = per_epoch * cfg.epochs
    schedule = WarmupSchedule(optimizer, total, warmup_iters=cfg.warmup_iters, warmup_ratio=cfg.warmup_ratio,
                              milestones=tuple(e * per_epoch for e in cfg.lr_steps))  # fmt: skip

    def loss(ddp_model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images = [im.to(env.device) for im in batch[0]]
        targets = [{k: v.to(env.device) for k, v in t.items()} for t in batch[1]]
        parts = ddp_model(images, targets)
        return sum(parts.values()), parts

    def describe(epoch: int, it: int, m: dict) -> str:
        return (f"epoch {epoch} iter {it}: bbox AP {m['bbox_AP']:.3f} AP50 {m['bbox_AP50']:.3f} "
                f"| segm AP {m['segm_AP']:.3f} AP50 {m['segm_AP50']:.3f}")  # fmt: skip

    return _Plan(
        task="detect",
        model=model,
        optimizer=optimizer,
        schedule=schedule,
        loader=_loader_factory(train_set, cfg, collate=det.collate),
        sampler=ResumableSampler(len(train_set), shuffle=True, seed=cfg.seed, rank=env.rank, world_size=env.world),
        per_epoch=per_epoch,
        stop_at=min(total, cfg.max_iters) if cfg.max_iters > 0 else total,
        loss=loss,
        evaluate=lambda: det.evaluate(model, val_set, env.device, cfg.batch_size, rank=env.rank, world_size=env.world),
        describe=describe,
        meta={"task": "detect", "classes": train_set.class_names, "cat_ids": train_set.cat_ids},
        eval_unit="epoch",
        find_unused=True,  # torchvision's heads skip the mask branch for images without positive proposals
    )


def _model_from_checkpoint(checkpoint: str | Path, task: str, cfg_cls: type, build: Callable, device: torch.device,
                           **overrides):  # fmt: skip
    """Rebuild a task model from a ``train`` checkpoint: its saved config (``overrides`` on top), then its weights."""
    state = load_checkpoint_file(checkpoint)
    if state.get("progress", {}).get("task") != task:
        raise ValueError(f"{checkpoint} is not a `{task}` checkpoint (it is {state.get('progress', {}).get('task')!r})")
    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    cfg_dict = {k: tuple(v) if isinstance(v, list) else v for k, v in state["config"].items() if k in fields}
    # Checkpoints written before the output_norm option existed have no output norms, whatever the family.
    cfg_dict.setdefault("output_norm", False)
    cfg_dict.update({k: v for k, v in overrides.items() if v is not None})
    cfg = cfg_cls(**{**cfg_dict, "pretrained": None})
    model = build(cfg, state)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg, state["progress"]


def detection_model_from_checkpoint(checkpoint: str | Path, device: torch.device, **overrides):
    """``(model, config, progress)`` of a detection checkpoint, the model in eval mode on ``device``."""
    return _model_from_checkpoint(checkpoint, "detect", det.DetectConfig,
                                  lambda cfg, st: det.build_mask_rcnn(cfg, len(st["progress"]["classes"])), device,
                                  **overrides)  # fmt: skip


def eval_detection(checkpoint: str, data: str, split: str, device: str = "auto") -> dict:
    """COCO AP of a checkpoint on a split; under torchrun the images are shared out and every rank gets the result."""
    with distributed(device) as env:
        model, cfg, prog = detection_model_from_checkpoint(checkpoint, env.device)
        dataset = det.CocoInstances(*det.coco_paths(data or cfg.data, split or cfg.val_split))
        if dataset.cat_ids != list(prog["cat_ids"]):
            raise ValueError(f"the data set's categories {dataset.cat_ids} differ from the checkpoint's "
                             f"{prog['cat_ids']}")  # fmt: skip
        return det.evaluate(model, dataset, env.device, cfg.batch_size, rank=env.rank, world_size=env.world)


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
    """Semantic FPN training with the poly schedule; returns the final evaluation metrics (on every rank)."""
    return _train(cfg, _plan_segmentation)


def _plan_segmentation(cfg: seg.SegmentConfig, env: DistInfo) -> _Plan:
    train_set = seg.ADESegmentation(cfg.data, cfg.train_split, cfg, train=True)
    val_set = seg.ADESegmentation(cfg.data, cfg.val_split, cfg, train=False)
    model = seg.SemanticFPN(cfg).to(env.device)
    optimizer = _build_optimizer(model, cfg.lr, cfg.weight_decay)
    schedule = WarmupSchedule(optimizer, cfg.iters, warmup_iters=cfg.warmup_iters, poly_power=cfg.poly_power,
                              min_lr=cfg.resolved_min_lr())  # fmt: skip
    sampler = ResumableSampler(len(train_set), shuffle=True, seed=cfg.seed, rank=env.rank, world_size=env.world)
    per_epoch = len(sampler) // cfg.batch_size  # crops are batched with drop_last
    if per_epoch == 0:
        raise ValueError(f"batch_size {cfg.batch_size} is larger than the training split per process "
                         f"({len(sampler)} images); lower batch_size")  # fmt: skip

    def loss(ddp_model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images, labels = batch[0].to(env.device), batch[1].to(env.device)
        return F.cross_entropy(ddp_model(images), labels, ignore_index=cfg.ignore_index), {}

    return _Plan(
        task="segment",
        model=model,
        optimizer=optimizer,
        schedule=schedule,
        loader=_loader_factory(train_set, cfg, drop_last=True),
        sampler=sampler,
        per_epoch=per_epoch,
        stop_at=cfg.iters,
        loss=loss,
        evaluate=lambda: seg.evaluate(model, val_set, cfg, env.device, rank=env.rank, world_size=env.world),
        describe=lambda epoch, it, m: f"iter {it}: mIoU {m['mIoU']:.4f} aAcc {m['aAcc']:.4f}",
        meta={"task": "segment", "classes": train_set.class_names or [str(i) for i in range(cfg.num_classes)]},
        eval_unit="iteration",
    )


def segmentation_model_from_checkpoint(checkpoint: str | Path, device: torch.device):
    """``(model, config, progress)`` of a segmentation checkpoint, the model in eval mode on ``device``."""
    return _model_from_checkpoint(checkpoint, "segment", seg.SegmentConfig, lambda cfg, st: seg.SemanticFPN(cfg),
                                  device)  # fmt: skip


def eval_segmentation(checkpoint: str, data: str, split: str, device: str = "auto") -> dict:
    """mIoU of a checkpoint on a split; under torchrun the images are shared out and every rank gets the result."""
    with distributed(device) as env:
        model, cfg, _ = segmentation_model_from_checkpoint(checkpoint, env.device)
        dataset = seg.ADESegmentation(data or cfg.data, split or cfg.val_split, cfg)
        return seg.evaluate(model, dataset, cfg, env.device, rank=env.rank, world_size=env.world)


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


__all__ = [
    "eval_detection",
    "eval_segmentation",
    "predict_detection",
    "predict_segmentation",
    "train_detection",
    "train_segmentation",
]
