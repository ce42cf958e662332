"""Learning-rate schedules: timm's per-epoch schedulers for classification (the official recipe) and the
per-iteration warm-up + step/poly schedule of the MMDetection / MMSegmentation recipes for dense tasks."""

from __future__ import annotations

from typing import Any

import torch
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler

EPOCH_SCHEDULES = ("cosine", "tanh", "step", "multistep", "poly", "constant")


def epoch_scheduler(
    optimizer: torch.optim.Optimizer,
    sched: str,
    epochs: int,
    *,
    warmup_epochs: int,
    warmup_lr: float,
    min_lr: float,
    decay_epochs: float = 30,
    decay_rate: float = 0.1,
) -> Scheduler:
    """timm's scheduler as the official ``main.py`` builds it (``create_scheduler``): per-epoch, warm-up from
    ``warmup_lr``, cosine (or another timm schedule) to ``min_lr`` at ``epochs``.

    The official loop calls ``step(epoch)`` after each epoch, so epoch ``e >= 1`` trains with the rate of
    ``e - 1``; :func:`efficientformer.runtime.loop.fit` does the same."""
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=sched,
        num_epochs=epochs,
        decay_epochs=decay_epochs,
        decay_rate=decay_rate,
        min_lr=min_lr,
        warmup_lr=warmup_lr,
        warmup_epochs=warmup_epochs,
        cooldown_epochs=0,
    )
    return scheduler


class WarmupSchedule:
    """Learning rate per iteration: linear warm-up (factor from ``warmup_ratio`` to 1), then steps (``milestones``
    in iterations) or poly decay to ``min_lr``. Keeps only numbers in its state (``weights_only`` checkpoints)."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_iters: int,
        *,
        warmup_iters: int = 0,
        warmup_ratio: float = 1e-6,
        milestones: tuple[int, ...] = (),
        gamma: float = 0.1,
        poly_power: float | None = None,
        min_lr: float = 0.0,
    ) -> None:
        self.optimizer = optimizer
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.total_iters = max(1, total_iters)
        self.warmup_iters, self.warmup_ratio = warmup_iters, warmup_ratio
        self.milestones, self.gamma = tuple(milestones), gamma
        self.poly_power, self.min_lr = poly_power, min_lr
        self.iteration = 0
        self._apply()

    def lr_at(self, base: float, it: int) -> float:
        if self.poly_power is not None:
            lr = (base - self.min_lr) * (1 - min(it, self.total_iters) / self.total_iters) ** self.poly_power
            lr += self.min_lr
        else:
            lr = base * self.gamma ** sum(it >= m for m in self.milestones)
        if it < self.warmup_iters:
            k = it / self.warmup_iters
            lr *= self.warmup_ratio + (1 - self.warmup_ratio) * k
        return lr

    def _apply(self) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = self.lr_at(base, self.iteration)

    def step(self) -> None:
        self.iteration += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration = int(state["iteration"])
        self.base_lrs = list(state["base_lrs"])
        self._apply()
