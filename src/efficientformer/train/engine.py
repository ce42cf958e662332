"""Image classification as a plan for the runtime's loop: the official recipe, built from timm's components.

The recipe pieces are timm's, as in the official ``main.py``: ``create_transform`` (RandAugment
``rand-m9-mstd0.5-inc1``, random erasing, bicubic), ``Mixup`` with label smoothing, ``SoftTargetCrossEntropy`` /
``LabelSmoothingCrossEntropy``, ``ModelEmaV3``, the optimiser factory, ``dispatch_clip_grad`` (AGC 0.01) and the
per-epoch cosine scheduler stepped after each epoch. The loop, checkpoints, DDP and logs are the runtime's.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import Mixup, create_transform
from timm.data import auto_augment as timm_auto_augment
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.utils.model_ema import ModelEmaV3
from torch import nn
from torch.utils.data import DataLoader

from ..data.digits import prepare_digits
from ..data.folder import build_datasets, collate_skip
from ..data.samplers import EvalSampler, TrainSampler
from ..data.transforms import describe_eval_transform, eval_transform
from ..models import create_model, load_checkpoint
from ..runtime import distributed
from ..runtime.checkpoint import CheckpointReadError, seed_all
from ..runtime.config import dump_yaml
from ..runtime.distributed import DistInfo, all_reduce_sum
from ..runtime.loaders import epoch_loader
from ..runtime.lock import run_folder_lock
from ..runtime.loop import NonFiniteLossError, Plan, Reporting, Schedule, Step, Task, fit
from ..runtime.optim import build_optimizer
from ..runtime.precision import (
    autocast,
    cpu_bf16_speedup,
    keep_channels_last_gradients,
    recorded_precision,
    resolve_amp,
    resolve_channels_last,
)
from ..runtime.schedule import epoch_scheduler
from ..utils.io import atomic_write_json, atomic_write_text, check_writable_dir
from .config import TrainConfig
from .distill import DistillationLoss, build_teacher


def official_posterize(img: Image.Image, bits_to_keep: int, **kwargs) -> Image.Image:
    """timm's RandAugment posterize as the official era's Pillow ran it: 0 bits kept gives a black image (each
    channel ``v & ~255``). Pillow 13 refuses 0 bits ("bits must be between or equal to 1 and 8"), which the
    official policy ``rand-m9-mstd0.5-inc1`` asks for whenever the sampled magnitude reaches 10."""
    if bits_to_keep <= 0:
        return img.point([0] * 256 * len(img.getbands()))
    return _TIMM_POSTERIZE(img, bits_to_keep, **kwargs)


_TIMM_POSTERIZE = timm_auto_augment.posterize


def use_official_posterize() -> None:
    """Route timm's three posterize ops through :func:`official_posterize` (ops built afterwards use it)."""
    for name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
        if timm_auto_augment.NAME_TO_OP.get(name) is _TIMM_POSTERIZE:
            timm_auto_augment.NAME_TO_OP[name] = official_posterize


def train_transform(cfg: TrainConfig):
    """timm's ``create_transform`` with the official arguments (the recipe's values come from ``cfg``), with the
    official era's posterize (:func:`official_posterize`)."""
    use_official_posterize()
    if cfg.no_aug:
        return eval_transform(cfg.img_size, cfg.eval_resize)
    return create_transform(
        input_size=cfg.img_size,
        is_training=True,
        scale=(cfg.crop_scale_min, 1.0),
        hflip=cfg.hflip,
        color_jitter=cfg.color_jitter,
        auto_augment=cfg.auto_augment,
        interpolation=cfg.train_interpolation,
        re_prob=cfg.reprob,
        re_mode=cfg.remode,
        re_count=cfg.recount,
    )


def base_criterion(cfg: TrainConfig) -> nn.Module:
    """The official choice: soft-target cross-entropy under Mixup (smoothing is in the mixed targets), label
    smoothing otherwise, plain cross-entropy without smoothing."""
    if cfg.mixup_active:
        return SoftTargetCrossEntropy()
    if cfg.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
    return nn.CrossEntropyLoss()


class StepMixup(Mixup):
    """timm's ``Mixup`` (mode ``batch``) whose mixing decision (Mixup or CutMix, and lambda) is drawn once per
    optimiser step by :meth:`new_step`, so that the batches accumulated into one step are mixed as one effective
    batch would be. Each batch is still mixed with its own reverse, and CutMix draws its box per batch. With one
    batch per step it draws exactly what ``Mixup`` draws, in the same order."""

    def new_step(self) -> None:
        self._drawn = super()._params_per_batch()

    def _params_per_batch(self):
        return getattr(self, "_drawn", None) or super()._params_per_batch()


def mixup_fn(cfg: TrainConfig, num_classes: int) -> StepMixup | None:
    if not cfg.mixup_active:
        return None
    return StepMixup(
        mixup_alpha=cfg.mixup,
        cutmix_alpha=cfg.cutmix,
        prob=cfg.mixup_prob,
        switch_prob=cfg.mixup_switch_prob,
        mode="batch",
        label_smoothing=cfg.smoothing,
        num_classes=num_classes,
    )


@torch.no_grad()
def classification_metrics(model: nn.Module, loader: DataLoader, device: torch.device, amp: str = "none") -> dict:
    """Top-1/top-5 (percent) and mean loss over the whole (possibly distributed) validation set, counting every
    image exactly once; unreadable images are skipped and counted. One host synchronisation, at the end."""
    model.eval()
    sums = torch.zeros(5, dtype=torch.float64, device=device)  # correct1, correct5, loss sum, count, skipped
    for images, targets, skipped in loader:
        sums[4] += skipped
        if images is None:
            continue
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(images)
        logits = logits.float()
        hit = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(targets.unsqueeze(1))
        sums[0] += hit[:, 0].sum()
        sums[1] += hit.any(dim=1).sum()
        sums[2] += F.cross_entropy(logits, targets, reduction="sum")
        sums[3] += targets.numel()
    all_reduce_sum(sums)
    correct1, correct5, loss, count, skipped = sums.tolist()
    n = max(count, 1.0)
    return {
        "val_top1": 100.0 * correct1 / n,
        "val_top5": 100.0 * correct5 / n,
        "val_loss": loss / n,
        "val_count": int(count),
        "val_skipped": int(skipped),
    }


def eval_loader(dataset, batch_size: int, workers: int, info: DistInfo) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EvalSampler(len(dataset), info.rank, info.world),
        num_workers=workers,
        collate_fn=collate_skip,
        pin_memory=info.device.type == "cuda",
        generator=torch.Generator(),  # its own: creating the iterator draws nothing from the global RNG
    )


def resolve_data(cfg: TrainConfig, info: DistInfo) -> tuple[Path, str]:
    if cfg.data:
        return Path(cfg.data).expanduser(), Path(cfg.data).expanduser().resolve().name
    if info.is_main:
        prepare_digits(cfg.cache_dir, cfg.digits_size)
    distributed.barrier()
    return prepare_digits(cfg.cache_dir, cfg.digits_size), "digits"  # other ranks: already written


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) a training run; returns the summary written to ``<output>/summary.json``. A stop signal
    (``stop_signals``) ends it with :class:`~efficientformer.runtime.signals.Preempted` after a checkpoint."""
    with distributed.process_group(cfg.device) as info:
        return _train(cfg, info)


def _precision(amp: str, channels_last: bool) -> str:
    return ("fp32" if amp == "none" else f"{amp} autocast") + (", channels-last" if channels_last else "")


def _log(info: DistInfo, msg: str) -> None:
    if info.is_main:
        print(msg, flush=True)


def resolve_precision(
    cfg: TrainConfig,
    model: nn.Module,
    device: torch.device,
    *,
    recorded: str | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[str, bool]:
    """``(amp, channels_last)`` as ``train`` runs ``cfg`` on ``device``; channels-last is applied to ``model`` when
    on (with its BatchNorm gradients kept channels-last in eager mode: :func:`keep_channels_last_gradients`).
    amp=auto's CPU probe times this model at the run's resolution and layout on a fixed random batch of up to 16
    images (see :func:`~efficientformer.runtime.precision.resolve_amp`)."""
    channels_last = resolve_channels_last(cfg.channels_last, device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        if not cfg.compile:  # Inductor plans the layouts of a compiled step itself
            keep_channels_last_gradients(model)

    def probe() -> float:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(min(cfg.batch_size, 16), 3, cfg.img_size, cfg.img_size, generator=gen)
        return cpu_bf16_speedup(model, x.contiguous(memory_format=torch.channels_last) if channels_last else x)

    return resolve_amp(cfg.amp, device, recorded=recorded, probe=probe, log=log), channels_last


def _train(cfg: TrainConfig, info: DistInfo) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data_root, dataset_name = resolve_data(cfg, info)
    out = Path(cfg.output) if cfg.output else Path("runs") / f"{cfg.model}-{dataset_name}"
    cfg.output = str(out)
    if info.is_main:
        check_writable_dir(out)  # before any work: a file in the way or a read-only folder is one line now
    with run_folder_lock(out, enabled=info.is_main):  # before anything is written there: one run per folder
        return _train_locked(cfg, info, data_root, dataset_name, out)


def _train_locked(cfg: TrainConfig, info: DistInfo, data_root: Path, dataset_name: str, out: Path) -> dict:
    device = info.device

    train_set, val_set = build_datasets(
        data_root, train_transform(cfg), eval_transform(cfg.img_size, cfg.eval_resize), max_pixels=cfg.max_pixels
    )
    class_names = list(train_set.classes)
    num_classes = len(class_names)
    sampler = TrainSampler(
        len(train_set), info.rank, info.world, seed=cfg.seed, repeats=cfg.repeats if cfg.repeated_aug else 1
    )
    steps_per_epoch = sampler.per_rank // (cfg.batch_size * cfg.grad_accum)  # optimiser steps
    if steps_per_epoch == 0:
        raise ValueError(
            f"{len(train_set)} training images over {info.world} process(es) is fewer than one step of "
            f"{cfg.grad_accum} batch(es) of {cfg.batch_size}; lower batch_size or grad_accum"
        )
    if cfg.max_steps:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps)

    batches = epoch_loader(
        train_set,
        sampler,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        workers=cfg.workers,
        collate=collate_skip,
        drop_last=True,
        pin_memory=device.type == "cuda",
    )

    # The same initial weights on every rank; each rank's own random stream (drop path, Mixup) after that.
    seed_all(cfg.seed)
    distill = cfg.distillation != "none"
    model = create_model(
        cfg.model, num_classes=num_classes, img_size=cfg.img_size, distillation=distill, drop_path_rate=cfg.drop_path
    )
    if distill:
        model.set_distilled_training(True)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if cfg.finetune:
        _log(info, f"fine-tuning from {load_checkpoint(model, cfg.finetune, strict=False, use_ema=False)}")
    model.to(device)
    # a resumed run keeps the precision it started with (only auto can resolve differently from run to run)
    recorded = recorded_precision(out) if cfg.resume and cfg.amp == "auto" else None
    amp, channels_last = resolve_precision(cfg, model, device, recorded=recorded, log=lambda line: _log(info, line))
    if info.enabled and device.type == "cuda" and cfg.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # SyncBN needs CUDA; CPU/gloo runs keep plain BN
    ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=cfg.ema_warmup) if cfg.ema else None
    seed_all(cfg.seed + info.rank)

    lr = cfg.global_lr(info.world)
    optimizer = build_optimizer(model, cfg.opt, lr, cfg.weight_decay, cfg.opt_eps, no_decay_scales=cfg.no_decay_scales)
    scheduler = epoch_scheduler(
        optimizer, cfg.sched, cfg.epochs, warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr
    )
    teacher = None
    if distill:
        teacher = build_teacher(cfg.teacher, cfg.teacher_checkpoint, num_classes, cfg.img_size).to(device)
        if channels_last:
            teacher.to(memory_format=torch.channels_last)
    criterion = DistillationLoss(
        base_criterion(cfg), cfg.distillation, teacher, cfg.distillation_alpha, cfg.distillation_tau
    )
    mixer = mixup_fn(cfg, num_classes)

    def step(train_model: nn.Module, batch) -> Step:
        images, targets, skipped = batch
        if images is not None and mixer is not None and images.shape[0] % 2:  # Mixup pairs a batch with its reverse
            images, targets, skipped = images[:-1], targets[:-1], skipped + 1
        if images is None or images.shape[0] == 0:
            return Step(None, skipped=skipped)
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if mixer is not None:
            images, targets = mixer(images, targets)
        return Step(criterion(images, train_model(images), targets), images.shape[0], skipped=skipped)

    def train_mode(module: nn.Module) -> None:
        module.train()
        if cfg.freeze_bn:
            for m in module.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    val_loader = eval_loader(val_set, cfg.eval_batch_size or int(1.5 * cfg.batch_size), cfg.workers, info)

    def check_resume(ckpt: dict, path: Path) -> None:
        if ckpt.get("model_name", cfg.model) != cfg.model:
            raise CheckpointReadError(
                f"cannot resume from {path}: it trains {ckpt.get('model_name')}, not {cfg.model}; use another "
                "--output or the model the run was started with"
            )
        if list(ckpt.get("class_names", class_names)) != class_names:
            raise CheckpointReadError(
                f"cannot resume from {path}: it was trained on other classes; use another --output"
            )

    plan = Plan(
        task=Task(
            name="classify",
            model=model,
            optimizer=optimizer,
            step=step,
            batches=batches,
            evaluate=lambda m: classification_metrics(m, val_loader, device, cfg.eval_amp),
            config=cfg,
            seed=cfg.seed,
            amp=amp,
            ema=ema,
            ema_warmup=cfg.ema_warmup,
            compile=cfg.compile,
            train_mode=train_mode,
            new_step=mixer.new_step if mixer is not None else None,
            meta={
                "class_names": class_names,
                "model_name": cfg.model,
                "precision": {"amp": amp, "channels_last": channels_last},
            },
            check_resume=check_resume,
        ),
        schedule=Schedule(
            steps_per_epoch=steps_per_epoch,
            total_steps=steps_per_epoch * cfg.epochs,
            grad_accum=cfg.grad_accum,
            epoch_scheduler=scheduler,
            clip_grad=cfg.clip_grad,
            clip_mode=cfg.clip_mode,
            eval_every=cfg.eval_every,
            eval_unit="epoch",
            checkpoint_every=cfg.checkpoint_every,
            checkpoint_minutes=cfg.checkpoint_minutes,
            stop_signals=cfg.stop_signals,
            resume=cfg.resume,
        ),
        reporting=Reporting(
            log_every=cfg.log_every,
            best_metric="val_top1",
            metric_names=("val_top1", "val_top5", "ema_top1"),
            describe=_describe,
            progress=cfg.progress,
            trackers=cfg.log or cfg.tensorboard,
        ),
        output=out,
        info=info,
    )
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", dump_yaml(cfg))
    n_params = sum(p.numel() for p in model.parameters())
    _log(
        info,
        f"training {cfg.model} ({n_params / 1e6:.2f} M params) on {dataset_name}: {len(train_set)} train / "
        f"{len(val_set)} val images, {num_classes} classes, {info.world} process(es) on {device}, global batch "
        f"{cfg.effective_batch(info.world)}{_accumulation(cfg)}, lr {lr:.2e}, distillation {cfg.distillation}, "
        f"precision {_precision(amp, channels_last)}; eval: "
        f"{describe_eval_transform(cfg.img_size, cfg.eval_resize)}; output {out}",
    )
    state = fit(plan)

    last_eval = next((h for h in reversed(state.history) if h.get("val_top1") is not None), state.metrics)
    summary = {
        "model": cfg.model,
        "dataset": dataset_name,
        "val_top1": last_eval.get("val_top1"),
        "val_top5": last_eval.get("val_top5"),
        "ema_top1": last_eval.get("ema_top1"),
        "best_top1": state.best,
        "val_images": last_eval.get("val_count"),
        "epochs": len(state.history),
        "seconds": sum(h.get("epoch_seconds", 0.0) for h in state.history),
        "checkpoint": str(out / "last.pth"),
        "best_checkpoint": str(out / "best.pth") if (out / "best.pth").exists() else None,
        "world_size": info.world,
        "eval_preprocessing": describe_eval_transform(cfg.img_size, cfg.eval_resize),
    }
    if info.is_main:
        atomic_write_json(out / "summary.json", summary)
        if summary["val_top1"] is not None:
            print(
                f"done: held-out top-1 {summary['val_top1']:.2f}% (best {state.best:.2f}%) after "
                f"{len(state.history)} epochs; checkpoint {out / 'last.pth'}",
                flush=True,
            )
    return summary


def _accumulation(cfg: TrainConfig) -> str:
    return f" ({cfg.batch_size} x {cfg.grad_accum} accumulated per process)" if cfg.grad_accum > 1 else ""


def _describe(r: dict) -> str:
    text = f"epoch {r['epoch']} lr {r['lr']:.2e} loss {r['train_loss']:.4f}"
    if r.get("val_top1") is not None:
        text += f" val top-1 {r['val_top1']:.2f}% top-5 {r['val_top5']:.2f}%"
        if r.get("ema_top1") is not None:
            text += f" (EMA {r['ema_top1']:.2f}%)"
    text += f" | {r['images_per_s']:.0f} img/s, {r['epoch_seconds']:.1f} s"
    if r.get("train_skipped") or r.get("val_skipped"):
        text += f" | skipped unreadable images: {r.get('train_skipped', 0)} train, {r.get('val_skipped', 0)} val"
    return text


__all__ = ["train", "classification_metrics", "train_transform", "NonFiniteLossError"]


def __getattr__(name: str) -> Any:
    # evaluate was defined for each task (classification, detection, segmentation); each now names its task
    if name == "evaluate":
        warnings.warn(
            "efficientformer.train.engine.evaluate is deprecated; "
            "use efficientformer.train.engine.classification_metrics",
            DeprecationWarning,
            stacklevel=2,
        )
        return classification_metrics
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
