"""The optimiser through timm's factory (as the official ``main.py``), with the official no-decay rule."""

from __future__ import annotations

import torch
from timm.optim import create_optimizer_v2
from torch import nn

from ..models.efficientformer_v2 import EfficientFormerV2
from ..models.layers import LayerScale


def official_multi_dim(model: nn.Module) -> set[int]:
    """Ids of the parameters we store 1-D that the official code stores with more dimensions: V2's layer scales,
    (C, 1, 1) there (V1's are 1-D in both)."""
    ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, EfficientFormerV2):
            ids.update(id(m.scale) for m in module.modules() if isinstance(m, LayerScale))
    return ids


def param_groups(model: nn.Module, weight_decay: float, no_decay_scales: bool = False) -> list[dict]:
    """Two groups, decayed and not, by the official rule: timm's factory (``param_groups_weight_decay``) exempts
    every parameter with ``ndim <= 1`` and every ``.bias``, nothing else, and the official models define no
    ``no_weight_decay()``. So the official code decays the attention-bias tables, (heads, N), and V2's layer scales,
    which it stores as (C, 1, 1) (we store them 1-D: :func:`official_multi_dim`). ``no_decay_scales=True`` (ours,
    not the official recipe) exempts the layer scales and attention-bias tables of both families."""
    multi_dim = official_multi_dim(model)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exempt = (p.ndim <= 1 and id(p) not in multi_dim) or name.endswith(".bias")
        if no_decay_scales:
            exempt = exempt or name.endswith("pos_bias.table") or name.endswith(".scale")
        (no_decay if exempt else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(
    model: nn.Module,
    opt: str,
    lr: float,
    weight_decay: float,
    eps: float | None = 1e-8,
    no_decay_scales: bool = False,
    **kwargs,
) -> torch.optim.Optimizer:
    """timm's ``create_optimizer_v2`` over :func:`param_groups` (``opt``: adamw, sgd, lamb, ... as in timm)."""
    if eps is not None and opt not in ("sgd", "momentum"):
        kwargs["eps"] = eps
    groups = param_groups(model, weight_decay, no_decay_scales)
    return create_optimizer_v2(groups, opt=opt, lr=lr, weight_decay=weight_decay, **kwargs)
