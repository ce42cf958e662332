"""Exponential moving average of the weights, evaluated beside the model."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """Keeps ``ema = decay * ema + (1 - decay) * model`` for floating parameters and buffers (integer buffers such
    as BatchNorm's step counter are copied). The EMA model is a separate module in eval mode, so attention-bias
    caches keyed on the training mode never go stale."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False) -> None:
        self.module = copy.deepcopy(model).eval()
        self.decay, self.warmup, self.updates = decay, warmup, 0
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        current = model.state_dict()
        self.updates += 1
        # Warm-up: decay (1 + n) / (10 + n) early on, so a short run is not dominated by the initial weights.
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay
        for key, ema_value in self.module.state_dict().items():
            value = current[key].detach()
            if ema_value.dtype.is_floating_point:
                ema_value.lerp_(value.to(ema_value.dtype), 1.0 - decay)
            else:
                ema_value.copy_(value)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict, updates: int = 0) -> None:
        self.module.load_state_dict(state)
        self.updates = updates
