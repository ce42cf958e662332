"""The optimiser through timm's factory (as the official ``main.py``), with the project's one no-decay rule."""

from __future__ import annotations

import torch
from timm.optim import create_optimizer_v2
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed weights, and the no-decay list: every parameter with ndim <= 1 and every bias (timm's
    rule), plus attention-bias tables and layer scales. The official code decays V2's (C,1,1) layer scales and the
    attention biases only because its models define no ``no_weight_decay()``; we exclude them on purpose (see the
    deviations table in docs/training.md)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or name.endswith("pos_bias.table") or name.endswith(".scale"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, opt: str, lr: float, weight_decay: float, eps: float | None = 1e-8,
                    **kwargs) -> torch.optim.Optimizer:  # fmt: skip
    """timm's ``create_optimizer_v2`` over :func:`param_groups` (``opt``: adamw, sgd, lamb, ... as in timm)."""
    if eps is not None and opt not in ("sgd", "momentum"):
        kwargs["eps"] = eps
    return create_optimizer_v2(param_groups(model, weight_decay), opt=opt, lr=lr, weight_decay=weight_decay, **kwargs)
