"""Supernet training (the sandwich rule) on the project's training runtime, and subnet scoring for the search.

:class:`SandwichModel` puts one step of the sandwich rule into one ``forward``: the largest, the smallest and
``num_random`` random subnets run on the batch and their losses are summed; the largest learns from the labels
(and, optionally, an external teacher), the others from the largest's predictions of the same batch (in-place
distillation, as in slimmable networks / BigNAS). One forward and one backward per step is what DDP expects, so
:func:`train_supernet` hands it to :func:`efficientformer.runtime.loop.fit` like any other task: the same
optimiser factory, clipping, checkpoints, exact resume and DDP. The random subnets are drawn from a seed of
``(seed, step)`` with the step counter kept as a buffer, so every rank draws the same subnets and a resumed run
draws the ones a straight run would.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..data.constants import IMAGENET_MEAN, IMAGENET_STD
from ..data.images import read_rgb
from ..data.samplers import TrainSampler
from ..models.base import ModelSpec
from ..runtime.config import param
from ..runtime.distributed import DistInfo, process_group
from ..runtime.loop import Plan, Reporting, Schedule, Step, Task, fit
from ..runtime.optim import build_optimizer
from ..runtime.schedule import epoch_scheduler
from ..runtime.signals import DEFAULT_STOP_SIGNALS, PREEMPTED_EXIT_CODE, check_stop_signals
from ..runtime.trackers import parse_trackers
from ..utils.seeding import derive_seed
from .space import V2Space
from .supernet import V2Supernet, recalibrate_bn


def _logits(out) -> torch.Tensor:
    """Two-head training outputs train through their mean (as the eval output is)."""
    if isinstance(out, tuple | list):
        return (out[0] + out[1]) / 2
    return out


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against class indices or against a (B, classes) probability target."""
    if target.ndim == 1:
        return F.cross_entropy(logits, target)
    return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()


class SandwichModel(nn.Module):
    """The sandwich rule as one module: ``forward(images, targets)`` returns the summed loss of the largest, the
    smallest and ``num_random`` random subnets (see the module docstring). ``teacher``: an external model whose
    soft predictions (temperature ``tau``) are mixed into the largest subnet's loss with weight ``teacher_weight``.
    After each forward, ``last_losses`` holds the detached loss of every subnet."""

    def __init__(
        self,
        supernet: V2Supernet,
        *,
        num_random: int = 2,
        inplace_distillation: bool = True,
        teacher: nn.Module | None = None,
        teacher_weight: float = 0.5,
        tau: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if num_random < 0:
            raise ValueError(f"num_random must be >= 0, got {num_random}")
        self.supernet, self.num_random, self.inplace_distillation = supernet, num_random, inplace_distillation
        # Held outside the module tree: never trained, switched to train mode, checkpointed or wrapped by DDP.
        self._teacher = (teacher.eval().requires_grad_(False),) if teacher is not None else ()
        self.teacher_weight, self.tau, self.seed = teacher_weight, tau, seed
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self.last_losses: dict[str, torch.Tensor] = {}

    def subnets(self, step: int) -> list[tuple[str, ModelSpec]]:
        space, rng = self.supernet.space, random.Random(derive_seed(self.seed, step))
        out = [("largest", space.largest()), ("smallest", space.smallest())]
        return out + [(f"random{k}", space.sample(rng)) for k in range(self.num_random)]

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        net = self.supernet
        teacher_probs = None
        if self._teacher:
            with torch.no_grad():
                teacher_probs = F.softmax(_logits(self._teacher[0](images)).float() / self.tau, dim=-1)
        total, soft, self.last_losses = images.new_zeros((), dtype=torch.float32), None, {}
        try:
            for name, spec in self.subnets(int(self.steps)):
                net.set_subnet(spec)
                logits = _logits(net(images)).float()
                if soft is None:  # the largest subnet: labels (+ teacher)
                    loss = soft_cross_entropy(logits, targets)
                    if teacher_probs is not None:
                        kd = soft_cross_entropy(logits / self.tau, teacher_probs) * self.tau**2
                        loss = (1 - self.teacher_weight) * loss + self.teacher_weight * kd
                    soft = F.softmax(logits.detach(), dim=-1)
                else:
                    loss = soft_cross_entropy(logits, soft if self.inplace_distillation else targets)
                self.last_losses[name] = loss.detach()
                total = total + loss
        finally:
            net.set_subnet(None)
        if self.training:
            self.steps += 1
        return total


@dataclasses.dataclass
class SupernetConfig:
    """Supernet training on an ImageNet-style folder held in memory (the proxy task: ``data="proxy"``)."""

    data: str = param("proxy", help="'proxy' (bundled) or a folder with train/ (and val/)")
    output: str = param("runs/search/supernet")
    img_size: int = param(32, ge=32)
    steps: int = param(600, ge=1, help="optimisation steps in all")
    batch_size: int = param(64, ge=1, help="per process")
    lr: float = param(2e-3, gt=0.0)
    min_lr: float = param(1e-5, ge=0.0)
    weight_decay: float = param(0.05, ge=0.0)
    warmup_epochs: int = param(0, ge=0)
    num_random: int = param(2, ge=0)
    inplace_distillation: bool = param(True)
    clip_grad: float | None = param(5.0, gt=0.0, help="max gradient norm; None: no clipping")
    eval_images: int = param(512, ge=0, help="held-out images scored at every evaluation (0: none)")
    eval_every: int = param(0, ge=0, help="epochs between evaluations (0: only at the end)")
    seed: int = param(0, ge=0)
    threads: int | None = param(None, ge=1)
    device: str = param("auto")
    checkpoint_every: int = param(0, ge=0, help="optimiser steps between mid-epoch checkpoints (0: epoch ends only)")
    checkpoint_minutes: float = param(0.0, ge=0.0, help="minutes between mid-epoch checkpoints (0: off)")
    stop_signals: tuple[str, ...] = param(
        DEFAULT_STOP_SIGNALS, help=f"on these, finish the step, checkpoint and exit {PREEMPTED_EXIT_CODE}"
    )
    resume: bool = param(True)
    progress: bool = param(True)
    log: str | None = param(None, help="experiment trackers beside log.jsonl: tensorboard,wandb,mlflow (any of them)")

    def check(self) -> None:
        parse_trackers(self.log)  # an unknown tracker name: one line naming log, before any work
        check_stop_signals(self.stop_signals)


def train_supernet(cfg: SupernetConfig, space: V2Space, root: Path) -> tuple[V2Supernet, dict[str, Any]]:
    """Train a V2 supernet of ``space`` on ``root/train`` with the sandwich rule on the runtime's loop (resumes
    from ``<output>/last.pth``); returns the supernet and the final metrics (largest/smallest held-out top-1)."""
    with process_group(cfg.device) as info:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        images, labels = load_split(root / "train", cfg.img_size)
        val = root / "val"
        held_out = load_split(val, cfg.img_size, limit=cfg.eval_images) if cfg.eval_images and val.is_dir() else None
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        net = V2Supernet(space, num_classes=int(labels.max()) + 1, img_size=cfg.img_size).to(info.device)
        model = SandwichModel(
            net, num_random=cfg.num_random, inplace_distillation=cfg.inplace_distillation, seed=cfg.seed
        )
        plan = _plan(cfg, info, model, images, labels, held_out)
        torch.manual_seed(cfg.seed + info.rank)
        state = fit(plan)
    return net, state.metrics


def _plan(
    cfg: SupernetConfig,
    info: DistInfo,
    model: SandwichModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    held_out: tuple[torch.Tensor, torch.Tensor] | None,
) -> Plan:
    sampler = TrainSampler(len(labels), info.rank, info.world, seed=cfg.seed)
    per_epoch = len(sampler) // cfg.batch_size
    if per_epoch == 0:
        raise ValueError(
            f"{len(labels)} training images over {info.world} process(es) is fewer than one batch of "
            f"{cfg.batch_size}; lower batch_size"
        )
    epochs = -(-cfg.steps // per_epoch)
    optimizer = build_optimizer(model.supernet, "adamw", cfg.lr, cfg.weight_decay)
    scheduler = epoch_scheduler(
        optimizer, "cosine", epochs, warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.min_lr, min_lr=cfg.min_lr
    )

    def step(train_model: nn.Module, batch) -> Step:
        x, y = batch[0].to(info.device), batch[1].to(info.device)
        return Step(train_model(x, y), x.shape[0])

    def evaluate(m: nn.Module) -> dict[str, float]:
        if held_out is None:
            return {}
        scorer = SubnetEvaluator(m.supernet, held_out[0], held_out[1], images[: min(len(images), 256)])
        space = m.supernet.space
        return {"val_top1": scorer(space.largest()), "val_top1_smallest": scorer(space.smallest())}

    return Plan(
        task=Task(
            name="search-supernet",
            model=model,
            optimizer=optimizer,
            step=step,
            batches=memory_batches(images, labels, sampler, cfg.batch_size, cfg.seed),
            evaluate=evaluate,
            config=cfg,
            seed=cfg.seed,
            meta={"space": model.supernet.space.to_dict()},
        ),
        schedule=Schedule(
            steps_per_epoch=per_epoch,
            total_steps=cfg.steps,
            epoch_scheduler=scheduler,
            clip_grad=cfg.clip_grad,
            clip_mode="norm",
            eval_every=cfg.eval_every,
            eval_unit="epoch",
            checkpoint_every=cfg.checkpoint_every,
            checkpoint_minutes=cfg.checkpoint_minutes,
            stop_signals=cfg.stop_signals,
            resume=cfg.resume,
        ),
        reporting=Reporting(
            log_every=20,
            best_metric=None,
            metric_names=("val_top1", "val_top1_smallest"),
            progress=cfg.progress,
            describe=lambda r: (
                f"epoch {r['epoch']} loss {r['train_loss']:.4f}"
                + (f" | largest {r['val_top1']:.2f}% smallest {r['val_top1_smallest']:.2f}%" if "val_top1" in r else "")
            ),
            trackers=cfg.log or False,
        ),
        output=Path(cfg.output),
        info=info,
    )


# ---------------------------------------------------------------------------------------------------------------
# In-memory data for the search
# ---------------------------------------------------------------------------------------------------------------
def memory_batches(images: torch.Tensor, labels: torch.Tensor, sampler: TrainSampler, batch_size: int, seed: int):
    """``(epoch, first batch) -> batches`` of a split held in memory: this rank's share of the seeded permutation,
    normalised, randomly translated with a generator seeded by ``(seed, epoch, batch)`` (so resumable exactly)."""

    def batches(epoch: int, start: int):
        sampler.set_epoch(epoch, start * batch_size)
        order = torch.tensor(sampler.indices()[start * batch_size :], dtype=torch.long)
        for b in range(len(order) // batch_size):
            idx = order[b * batch_size : (b + 1) * batch_size]
            gen = torch.Generator().manual_seed(derive_seed(seed, epoch) * 10_007 + start + b)
            yield normalise(augment(images[idx], gen)), labels[idx]

    return batches


def load_split(folder: str | Path, size: int, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of an ImageNet-style split folder as a uint8 (N, 3, size, size) tensor, and the labels (read
    through the one image reader; unreadable files are refused by name)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"split folder not found: {folder}")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise FileNotFoundError(f"{folder} has no class subfolders")
    images, labels = [], []
    for c, name in enumerate(classes):
        for f in sorted((folder / name).iterdir()):
            arr = np.asarray(read_rgb(f).resize((size, size), Image.Resampling.BICUBIC))
            images.append(torch.from_numpy(arr.copy()).permute(2, 0, 1))
            labels.append(c)
    x, y = torch.stack(images), torch.tensor(labels)
    if limit is not None and limit < len(y):
        idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:limit]
        x, y = x[idx], y[idx]
    return x, y


_MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def normalise(images: torch.Tensor) -> torch.Tensor:
    return (images.float() / 255.0 - _MEAN) / _STD


def augment(images: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random translation by up to ``pad`` pixels (reflect padding), per image. Digits are not flipped."""
    b, _, h, w = images.shape
    padded = F.pad(images.float(), (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])


# ---------------------------------------------------------------------------------------------------------------
# Scoring subnets
# ---------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def held_out_accuracy(
    model: nn.Module,
    calib: list[torch.Tensor],
    eval_images: torch.Tensor,
    eval_labels: torch.Tensor,
    eval_batch: int = 256,
) -> float:
    """Top-1 (%) of ``model`` on uint8 ``eval_images`` after re-estimating its BatchNorm statistics on the uint8
    ``calib`` batches (:func:`~.supernet.recalibrate_bn`). The one evaluator of both searches: V2 subnets (an
    extracted standalone model) and V1 hard paths (a copy of the MetaPath supernet)."""
    recalibrate_bn(model, (normalise(x) for x in calib))
    correct = 0
    for i in range(0, len(eval_labels), eval_batch):
        logits = _logits(model(normalise(eval_images[i : i + eval_batch])))
        correct += int((logits.argmax(-1) == eval_labels[i : i + eval_batch]).sum())
    return 100.0 * correct / len(eval_labels)


class SubnetEvaluator:
    """Held-out accuracy (%) of a V2 subnet on shared weights: the subnet is extracted (a standalone model holding
    copies of the supernet's sliced weights, so scoring never disturbs the supernet), its BatchNorm statistics
    re-estimated on ``calib_images`` and its top-1 measured (:func:`held_out_accuracy`)."""

    def __init__(
        self,
        supernet: V2Supernet,
        eval_images: torch.Tensor,
        eval_labels: torch.Tensor,
        calib_images: torch.Tensor,
        calib_batch: int = 64,
        eval_batch: int = 256,
    ) -> None:
        self.supernet = supernet
        self.eval_images, self.eval_labels = eval_images, eval_labels
        self.calib = [calib_images[i : i + calib_batch] for i in range(0, len(calib_images), calib_batch)]
        self.eval_batch = eval_batch

    @torch.no_grad()
    def __call__(self, spec: ModelSpec) -> float:
        self.supernet.space.check(spec)
        model = self.supernet.extract(spec).to(self.eval_images.device)
        return held_out_accuracy(model, self.calib, self.eval_images, self.eval_labels, self.eval_batch)
