"""The training loop: data, model, optimiser, EMA, distillation, evaluation, checkpoints and logs."""

from __future__ import annotations

import contextlib
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data.folder import build_datasets, collate_skip
from ..data.samplers import EvalSampler, TrainSampler
from ..data.transforms import describe_eval_transform, eval_transform, train_transform
from ..utils.io import atomic_torch_save, atomic_write_json, atomic_write_text, safe_torch_load
from . import distributed
from .config import TrainConfig, config_to_dict, dump_yaml
from .distill import DistillationLoss, build_teacher
from .ema import ModelEMA
from .mixup import MixupCutmix
from .optim import EpochScheduler, build_optimizer, clip_gradients


class NonFiniteLossError(ValueError):
    """The loss became NaN or infinite; the run stops and the last good checkpoint is kept."""


def autocast(device: torch.device, amp: str):
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_data(cfg: TrainConfig, info: distributed.DistInfo) -> tuple[Path, str]:
    if cfg.data:
        return Path(cfg.data).expanduser(), Path(cfg.data).expanduser().resolve().name
    from ..data.digits import prepare_digits

    if info.is_main:
        root = prepare_digits(cfg.cache_dir, cfg.digits_size)
    distributed.barrier()
    root = prepare_digits(cfg.cache_dir, cfg.digits_size)  # other ranks: already written, returns at once
    return root, "digits"


def default_output(cfg: TrainConfig, dataset_name: str) -> Path:
    return Path("runs") / f"{cfg.model}-{dataset_name}"


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "python": list(random.getstate()[1]),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    random.setstate((3, tuple(state["python"]), None))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, amp: str = "none") -> dict:
    """Top-1/top-5 (percent) and mean loss over the whole (possibly distributed) validation set, counting every
    image exactly once; unreadable images are skipped and counted."""
    model.eval()
    sums = torch.zeros(5, dtype=torch.float64)  # correct1, correct5, loss sum, count, skipped
    for images, targets, skipped in loader:
        sums[4] += skipped
        if images is None:
            continue
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top.eq(targets.unsqueeze(1))
        sums[0] += hit[:, 0].sum().item()
        sums[1] += hit.any(dim=1).sum().item()
        sums[2] += nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        sums[3] += targets.numel()
    distributed.all_reduce_sum(sums)
    n = max(sums[3].item(), 1.0)
    return {
        "top1": 100.0 * sums[0].item() / n,
        "top5": 100.0 * sums[1].item() / n,
        "loss": sums[2].item() / n,
        "count": int(sums[3].item()),
        "skipped": int(sums[4].item()),
    }


def _set_train_mode(model: nn.Module, freeze_bn: bool) -> None:
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def train_one_epoch(model, loader, criterion, optimizer, scaler, mixer, ema, cfg, info, epoch, lr, out_dir):
    _set_train_mode(model, cfg.freeze_bn)
    device = info.device
    total_steps = len(loader) if cfg.max_steps is None else min(len(loader), cfg.max_steps)
    bar = None
    if info.is_main and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True)
    loss_sum, seen, skipped, steps = 0.0, 0, 0, 0
    start = time.perf_counter()
    for images, targets, n_skipped in loader:
        if steps >= total_steps:
            break
        skipped += n_skipped
        if images is None:
            continue
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        images, soft_targets = mixer(images, targets)
        with autocast(device, cfg.amp):
            outputs = model(images)
            loss = criterion(images, outputs, soft_targets)
        finite = torch.tensor([float(torch.isfinite(loss).item())])
        if distributed.all_reduce_sum(finite).item() < info.world:
            raise NonFiniteLossError(
                f"loss is {loss.item()} at epoch {epoch + 1} step {steps + 1}; stopped. The last good checkpoint is "
                f"kept in {out_dir / 'last.pth'} (completed epochs only); lower lr, enable clip_grad, or check the data"
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.clip_grad:
            scaler.unscale_(optimizer)
            clip_gradients(model.parameters(), cfg.clip_mode, cfg.clip_grad)
        scaler.step(optimizer)
        scaler.update()
        if ema is not None:
            ema.update(unwrap(model))
        steps += 1
        loss_sum += loss.item() * images.shape[0]
        seen += images.shape[0]
        if bar is not None:
            rate = seen * info.world / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.0f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - start
    stats = torch.tensor([loss_sum, seen, skipped], dtype=torch.float64)
    distributed.all_reduce_sum(stats)
    return {
        "train_loss": stats[0].item() / max(stats[1].item(), 1),
        "images_per_s": stats[1].item() / max(seconds, 1e-9),
        "train_skipped": int(stats[2].item()),
        "epoch_seconds": seconds,
        "steps": steps,
    }


def _load_resume(path: Path, model, ema, optimizer, scheduler, scaler, sampler, cfg) -> dict:
    ckpt = safe_torch_load(path)
    try:
        unwrap(model).load_state_dict(ckpt["model"])
        if ema is not None and ckpt.get("model_ema") is not None:
            ema.load_state_dict(ckpt["model_ema"], int(ckpt.get("ema_updates", 0)))
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise ValueError(
            f"cannot resume from {path}: the checkpoint does not fit {cfg.model} ({first}); "
            "use another --output or the model the run was started with"
        ) from None
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    sampler.load_state_dict(ckpt["sampler"])
    return ckpt


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) a training run; returns the summary written to ``<output>/summary.json``."""
    cfg.validate()
    info = distributed.setup(cfg.device)
    try:
        return _train(cfg, info)
    finally:
        distributed.cleanup()


def _log(info: distributed.DistInfo, msg: str) -> None:
    if info.is_main:
        print(msg, flush=True)


def _train(cfg: TrainConfig, info: distributed.DistInfo) -> dict:
    from ..models import create_model, load_checkpoint

    t0 = time.perf_counter()
    device = info.device
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed + info.rank)
    np.random.seed(cfg.seed + info.rank)
    random.seed(cfg.seed + info.rank)

    data_root, dataset_name = resolve_data(cfg, info)
    out_dir = Path(cfg.output) if cfg.output else default_output(cfg, dataset_name)
    cfg.output = str(out_dir)

    if cfg.no_aug:
        train_tf = eval_transform(cfg.img_size, cfg.eval_resize)
    else:
        train_tf = train_transform(
            cfg.img_size, scale=(cfg.crop_scale_min, 1.0), hflip=cfg.hflip, randaugment=cfg.randaugment,
            random_erasing=cfg.reprob,
        )  # fmt: skip
    eval_tf = eval_transform(cfg.img_size, cfg.eval_resize)
    train_set, val_set = build_datasets(data_root, train_tf, eval_tf)
    class_names = list(train_set.classes)
    num_classes = len(class_names)

    repeats = cfg.repeats if cfg.repeated_aug else 1
    sampler = TrainSampler(len(train_set), info.rank, info.world, seed=cfg.seed, repeats=repeats)
    if len(sampler) < cfg.batch_size:
        raise ValueError(
            f"{len(train_set)} training images over {info.world} process(es) is fewer than one batch of "
            f"{cfg.batch_size}; lower batch_size"
        )
    loader_kw = dict(num_workers=cfg.workers, collate_fn=collate_skip, pin_memory=device.type == "cuda")
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, drop_last=True, **loader_kw)
    eval_bs = cfg.eval_batch_size or int(1.5 * cfg.batch_size)
    val_loader = DataLoader(val_set, batch_size=eval_bs, sampler=EvalSampler(len(val_set), info.rank, info.world),
                            **loader_kw)  # fmt: skip

    distill = cfg.distillation != "none"
    model = create_model(
        cfg.model, num_classes=num_classes, img_size=cfg.img_size, distillation=distill, drop_path_rate=cfg.drop_path
    )
    if cfg.finetune:
        report = load_checkpoint(model, cfg.finetune, strict=False, use_ema=False)
        _log(info, f"fine-tuning from {report}")
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    ema = ModelEMA(model, cfg.ema_decay, cfg.ema_warmup) if cfg.ema else None
    if info.enabled and device.type == "cuda" and cfg.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # SyncBN needs CUDA; CPU/gloo runs keep plain BN
    train_model: nn.Module = model
    if info.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        train_model = torch.compile(train_model)

    lr = cfg.global_lr(info.world)
    optimizer = build_optimizer(model, cfg.opt, lr, cfg.weight_decay, cfg.opt_eps)
    scheduler = EpochScheduler(optimizer, lr, cfg.epochs, cfg.warmup_epochs, cfg.warmup_lr, cfg.min_lr, cfg.sched)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    mixer = MixupCutmix(num_classes, cfg.mixup, cfg.cutmix, cfg.mixup_prob, cfg.mixup_switch_prob, cfg.smoothing)
    teacher = None
    if distill:
        teacher = build_teacher(cfg.teacher, cfg.teacher_checkpoint, num_classes, cfg.img_size).to(device)
    criterion = DistillationLoss(cfg.distillation, teacher, cfg.distillation_alpha, cfg.distillation_tau)

    start_epoch, history, best_top1 = 0, [], -1.0
    last_path, best_path = out_dir / "last.pth", out_dir / "best.pth"
    if cfg.resume and last_path.is_file():
        ckpt = _load_resume(last_path, model, ema, optimizer, scheduler, scaler, sampler, cfg)
        if list(ckpt.get("class_names", class_names)) != class_names:
            raise ValueError(f"cannot resume from {last_path}: it was trained on other classes; use another --output")
        start_epoch, history = int(ckpt["epoch"]) + 1, list(ckpt.get("history", []))
        best_top1 = float(ckpt.get("best_top1", -1.0))
        if info.is_main:
            _set_rng_state(ckpt["rng"])
        else:
            torch.manual_seed(cfg.seed + info.rank + 1000 * start_epoch)
        _log(info, f"resuming from {last_path}: epoch {start_epoch} of {cfg.epochs} already done")

    tb = None
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "config.yaml", dump_yaml(cfg))
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                tb = SummaryWriter(str(out_dir / "tensorboard"))
            except ImportError:
                _log(info, "tensorboard is not installed (pip install tensorboard); continuing without it")
    n_params = sum(p.numel() for p in model.parameters())
    _log(
        info,
        f"training {cfg.model} ({n_params / 1e6:.2f} M params) on {dataset_name}: {len(train_set)} train / "
        f"{len(val_set)} val images, {num_classes} classes, {info.world} process(es) on {device}, global batch "
        f"{cfg.batch_size * info.world}, lr {lr:.2e}, distillation {cfg.distillation}; eval: "
        f"{describe_eval_transform(cfg.img_size, cfg.eval_resize)}; output {out_dir}",
    )

    for epoch in range(start_epoch, cfg.epochs):
        epoch_lr = scheduler.step(epoch)
        sampler.set_epoch(epoch)
        stats = train_one_epoch(
            train_model, train_loader, criterion, optimizer, scaler, mixer, ema, cfg, info, epoch, epoch_lr, out_dir
        )
        record = {"epoch": epoch + 1, "lr": epoch_lr, **stats}
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            val = evaluate(model, val_loader, device, cfg.amp)
            record.update(val_top1=val["top1"], val_top5=val["top5"], val_loss=val["loss"], val_count=val["count"],
                          val_skipped=val["skipped"])  # fmt: skip
            if ema is not None:
                ev = evaluate(ema.module, val_loader, device, cfg.amp)
                record.update(ema_top1=ev["top1"], ema_top5=ev["top5"])
        history.append(record)
        improved = record.get("val_top1") is not None and record["val_top1"] > best_top1
        if improved:
            best_top1 = record["val_top1"]
        if info.is_main:
            ckpt = {
                "model": unwrap(model).state_dict(),
                "model_ema": ema.state_dict() if ema is not None else None,
                "ema_updates": ema.updates if ema is not None else 0,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "sampler": sampler.state_dict(),
                "epoch": epoch,
                "rng": _rng_state(),
                "config": config_to_dict(cfg),
                "class_names": class_names,
                "model_name": cfg.model,
                "history": history,
                "best_top1": best_top1,
            }
            atomic_torch_save(ckpt, last_path)
            if improved:
                atomic_torch_save(ckpt, best_path)
            atomic_write_text(out_dir / "log.jsonl", "".join(json.dumps(h) + "\n" for h in history))
            if tb is not None:
                for key, value in record.items():
                    if isinstance(value, (int, float)) and key != "epoch":
                        tb.add_scalar(key, value, epoch + 1)
            msg = f"epoch {epoch + 1}/{cfg.epochs} lr {epoch_lr:.2e} loss {stats['train_loss']:.4f}"
            if "val_top1" in record:
                msg += f" val top-1 {record['val_top1']:.2f}% top-5 {record['val_top5']:.2f}%"
                if "ema_top1" in record:
                    msg += f" (EMA {record['ema_top1']:.2f}%)"
            msg += f" | {stats['images_per_s']:.0f} img/s, {stats['epoch_seconds']:.1f} s"
            if stats["train_skipped"] or record.get("val_skipped"):
                msg += (
                    f" | skipped unreadable images: {stats['train_skipped']} train, {record.get('val_skipped', 0)} val"
                )
            print(msg, flush=True)
        distributed.barrier()

    seconds = time.perf_counter() - t0
    last_eval = next((h for h in reversed(history) if h.get("val_top1") is not None), {})
    summary = {
        "model": cfg.model,
        "dataset": dataset_name,
        "val_top1": last_eval.get("val_top1"),
        "val_top5": last_eval.get("val_top5"),
        "ema_top1": last_eval.get("ema_top1"),
        "best_top1": best_top1 if best_top1 >= 0 else None,
        "val_images": last_eval.get("val_count"),
        "epochs": len(history),
        "seconds": seconds,
        "checkpoint": str(last_path),
        "best_checkpoint": str(best_path) if best_path.exists() else None,
        "world_size": info.world,
        "eval_preprocessing": describe_eval_transform(cfg.img_size, cfg.eval_resize),
    }
    if info.is_main:
        if tb is not None:
            tb.close()
        from .plot import plot_curves

        if history:
            plot_curves(history, out_dir / "curves.png")
        atomic_write_json(out_dir / "summary.json", summary)
        top1 = summary["val_top1"]
        print(
            f"done: held-out top-1 {top1:.2f}% (best {best_top1:.2f}%) after {len(history)} epochs in {seconds:.0f} s; "
            f"checkpoint {last_path}",
            flush=True,
        ) if top1 is not None else print(f"done in {seconds:.0f} s; checkpoint {last_path}", flush=True)
    sys.stdout.flush()
    return summary


__all__ = ["train", "evaluate", "NonFiniteLossError", "math"]
