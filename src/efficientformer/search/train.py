"""Supernet training (the sandwich rule) and subnet scoring for the search.

:class:`SandwichStep` is the unit the project's training runtime plugs into its loop: given the supernet, a batch
and the optimizer it runs the largest, the smallest and ``num_random`` random subnets on the batch, accumulates
their gradients and steps once. The largest subnet learns from the labels (and, optionally, from an external
teacher); the others learn from the largest subnet's predictions of the same batch (in-place distillation), as
in slimmable networks / BigNAS.

:func:`train_supernet_minimal` is a TEMPORARY stand-in loop (in-memory data, AdamW, cosine schedule, no
checkpoints, resume or DDP) for the tests and the end-to-end demo until the runtime layer drives
:class:`SandwichStep`; it is not the project's training loop.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..data.constants import IMAGENET_MEAN, IMAGENET_STD
from ..models.base import ModelSpec
from .supernet import V2Supernet


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


class SandwichStep:
    """One optimisation step of the sandwich rule with in-place distillation.

    ``teacher``: an external model whose soft predictions (temperature ``tau``) are mixed into the largest
    subnet's loss with weight ``teacher_weight``. Returns the losses of the step (floats).
    """

    def __init__(
        self,
        supernet: V2Supernet,
        *,
        num_random: int = 2,
        inplace_distillation: bool = True,
        teacher: nn.Module | None = None,
        teacher_weight: float = 0.5,
        tau: float = 1.0,
        clip_grad: float | None = None,
        seed: int = 0,
    ) -> None:
        if num_random < 0:
            raise ValueError(f"num_random must be >= 0, got {num_random}")
        self.supernet = supernet
        self.num_random = num_random
        self.inplace_distillation = inplace_distillation
        self.teacher = teacher.eval() if teacher is not None else None
        self.teacher_weight, self.tau, self.clip_grad = teacher_weight, tau, clip_grad
        self.rng = random.Random(seed)

    def subnets(self) -> list[tuple[str, ModelSpec]]:
        space = self.supernet.space
        out = [("largest", space.largest()), ("smallest", space.smallest())]
        out += [(f"random{k}", space.sample(self.rng)) for k in range(self.num_random)]
        return out

    def __call__(self, images: torch.Tensor, targets: torch.Tensor, optimizer: torch.optim.Optimizer) -> dict:
        net = self.supernet
        net.train()
        optimizer.zero_grad(set_to_none=True)
        teacher_probs = None
        if self.teacher is not None:
            with torch.no_grad():
                teacher_probs = F.softmax(_logits(self.teacher(images)).float() / self.tau, dim=-1)
        losses: dict[str, float] = {}
        soft = None
        try:
            for name, spec in self.subnets():
                net.set_subnet(spec)
                logits = _logits(net(images)).float()
                if soft is None:  # the largest subnet: labels (+ teacher)
                    loss = soft_cross_entropy(logits, targets)
                    if teacher_probs is not None:
                        kd = soft_cross_entropy(logits / self.tau, teacher_probs) * self.tau**2
                        loss = (1 - self.teacher_weight) * loss + self.teacher_weight * kd
                    soft = F.softmax(logits.detach(), dim=-1)
                elif self.inplace_distillation:
                    loss = soft_cross_entropy(logits, soft)
                else:
                    loss = soft_cross_entropy(logits, targets)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite loss {loss.item()} on the {name} subnet; lower the lr")
                loss.backward()
                losses[name] = float(loss.item())
        finally:
            net.set_subnet(None)
        if self.clip_grad:
            nn.utils.clip_grad_norm_(net.parameters(), self.clip_grad)
        optimizer.step()
        losses["loss"] = sum(losses.values())
        return losses


# ---------------------------------------------------------------------------------------------------------------
# In-memory data for the search (and the temporary loop)
# ---------------------------------------------------------------------------------------------------------------
def load_split(folder: str | Path, size: int, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of an ImageNet-style split folder as a uint8 (N, 3, size, size) tensor, and the labels."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"split folder not found: {folder}")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise FileNotFoundError(f"{folder} has no class subfolders")
    images, labels = [], []
    for c, name in enumerate(classes):
        for f in sorted((folder / name).iterdir()):
            with Image.open(f) as img:
                arr = np.asarray(img.convert("RGB").resize((size, size), Image.BICUBIC))
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


def train_supernet_minimal(
    supernet: V2Supernet,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    weight_decay: float = 0.05,
    warmup_steps: int = 0,
    num_random: int = 2,
    clip_grad: float | None = 5.0,
    seed: int = 0,
    log: Callable[[dict], None] | None = None,
    log_every: int = 20,
) -> list[dict]:
    """TEMPORARY minimal loop (see the module docstring): AdamW + warm-up + cosine over ``steps`` sandwich steps
    on an in-memory uint8 dataset. Returns the logged rows."""
    gen = torch.Generator().manual_seed(seed)
    decay, no_decay = [], []
    for name, p in supernet.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith("table") else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay,
                            "weight_decay": 0.0}], lr=lr)  # fmt: skip
    step_fn = SandwichStep(supernet, num_random=num_random, clip_grad=clip_grad, seed=seed)
    rows, n, start = [], len(labels), time.time()
    perm, pos = torch.randperm(n, generator=gen), 0
    for step in range(steps):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos : pos + batch_size]
        pos += batch_size
        scale = (step + 1) / warmup_steps if step < warmup_steps else 0.5 * (1 + math.cos(math.pi * step / steps))
        for g in opt.param_groups:
            g["lr"] = lr * scale
        batch = normalise(augment(images[idx], gen))
        losses = step_fn(batch, labels[idx], opt)
        if log is not None and (step % log_every == 0 or step == steps - 1):
            row = {"step": step, "lr": lr * scale, "seconds": round(time.time() - start, 1), **losses}
            rows.append(row)
            log(row)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Scoring subnets
# ---------------------------------------------------------------------------------------------------------------
class SubnetEvaluator:
    """Held-out accuracy (%) of a subnet on shared weights, after re-estimating its BatchNorm statistics.

    The subnet runs on the supernet's sliced weights with *copies* of the BatchNorm buffers, which are reset and
    re-estimated (cumulative average) on ``calib_images`` before scoring, so scoring never disturbs the supernet.
    The result equals ``recalibrate_bn(supernet.extract(spec), calib)`` followed by evaluation.
    """

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
        net = self.supernet
        net.space.check(spec)
        skel = net.skeleton(spec)
        tensors = net.sliced_tensors(skel, detach=True)
        bns = [(n, m) for n, m in skel.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for name, _ in bns:
            p = f"{name}." if name else ""
            tensors[p + "running_mean"] = torch.zeros_like(tensors[p + "running_mean"])
            tensors[p + "running_var"] = torch.ones_like(tensors[p + "running_var"])
            tensors[p + "num_batches_tracked"] = torch.zeros_like(tensors[p + "num_batches_tracked"])
        saved = [m.momentum for _, m in bns]
        for _, m in bns:
            m.momentum = None
        try:
            skel.train()
            for x in self.calib:
                functional_call(skel, tensors, (normalise(x),))
        finally:
            for (_, m), mom in zip(bns, saved, strict=True):
                m.momentum = mom
        skel.eval()
        correct = 0
        for i in range(0, len(self.eval_labels), self.eval_batch):
            logits = _logits(functional_call(skel, tensors, (normalise(self.eval_images[i : i + self.eval_batch]),)))
            correct += int((logits.argmax(-1) == self.eval_labels[i : i + self.eval_batch]).sum())
        return 100.0 * correct / len(self.eval_labels)
