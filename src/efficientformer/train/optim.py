"""Optimizer with a deliberate no-decay list, adaptive gradient clipping, and the per-epoch cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed weights, and the no-decay list: norms and biases (every parameter with ndim <= 1),
    layer scales and attention-bias tables (``model.no_weight_decay()``). The official code decays V2's (C,1,1)
    layer scales and the attention biases because its models define no such list; we exclude them on purpose."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or name in skip:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, opt: str, lr: float, weight_decay: float, eps: float = 1e-8):
    groups = param_groups(model, weight_decay)
    if opt == "adamw":
        return torch.optim.AdamW(groups, lr=lr, eps=eps)
    if opt == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    raise ValueError(f"unknown optimizer {opt!r}; use adamw or sgd")


def _unitwise_norm(x: torch.Tensor) -> torch.Tensor:
    # Norm per output unit: whole tensor for vectors/scalars, over all but dim 0 otherwise.
    if x.ndim <= 1:
        return x.norm(2)
    return x.norm(2, dim=tuple(range(1, x.ndim)), keepdim=True)


@torch.no_grad()
def adaptive_clip_grad_(parameters, clip_factor: float = 0.01, eps: float = 1e-3) -> None:
    """Adaptive gradient clipping (Brock et al., 2021): scale each unit's gradient so that its norm is at most
    ``clip_factor`` times the norm of the unit's weights (weights floored at ``eps``)."""
    for p in parameters:
        if p.grad is None:
            continue
        max_norm = _unitwise_norm(p).clamp_(min=eps).mul_(clip_factor)
        grad_norm = _unitwise_norm(p.grad)
        scale = (max_norm / grad_norm.clamp(min=1e-6)).clamp(max=1.0)
        p.grad.mul_(torch.where(grad_norm > max_norm, scale, torch.ones_like(scale)))


def clip_gradients(parameters, mode: str, value: float | None) -> None:
    if not value:
        return
    params = [p for p in parameters if p.grad is not None]
    if mode == "agc":
        adaptive_clip_grad_(params, value)
    elif mode == "norm":
        torch.nn.utils.clip_grad_norm_(params, value)
    elif mode == "value":
        torch.nn.utils.clip_grad_value_(params, value)
    else:
        raise ValueError(f"unknown clip_mode {mode!r}; use agc, norm or value")


class EpochScheduler:
    """Learning rate per epoch: linear warm-up from ``warmup_lr`` over ``warmup_epochs``, then cosine from ``lr``
    to ``min_lr`` at ``epochs`` (the cosine is evaluated at the absolute epoch, as in the published schedule)."""

    def __init__(self, optimizer, lr: float, epochs: int, warmup_epochs: int, warmup_lr: float, min_lr: float,
                 kind: str = "cosine") -> None:  # fmt: skip
        self.optimizer, self.lr, self.epochs = optimizer, lr, epochs
        self.warmup_epochs, self.warmup_lr, self.min_lr, self.kind = warmup_epochs, warmup_lr, min_lr, kind
        self.last_epoch = -1

    def lr_at(self, epoch: int) -> float:
        if epoch < self.warmup_epochs:
            return self.warmup_lr + epoch * (self.lr - self.warmup_lr) / self.warmup_epochs
        if self.kind == "constant":
            return self.lr
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * epoch / self.epochs))

    def step(self, epoch: int) -> float:
        self.last_epoch = epoch
        lr = self.lr_at(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict:
        return {"last_epoch": self.last_epoch, "lr": self.lr, "epochs": self.epochs}

    def load_state_dict(self, state: dict) -> None:
        self.last_epoch = int(state["last_epoch"])
