"""Mixup / CutMix on a batch with label smoothing (the recipe: alpha 0.8 / 1.0, switch probability 0.5)."""

from __future__ import annotations

import numpy as np
import torch


def smooth_one_hot(target: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    off = smoothing / num_classes
    out = torch.full((target.shape[0], num_classes), off, device=target.device)
    return out.scatter_(1, target.unsqueeze(1), 1.0 - smoothing + off)


class MixupCutmix:
    """Mixes the whole batch with its reverse. Returns images and soft targets (always soft, so one criterion,
    soft-target cross-entropy, serves every setting). With both alphas 0 it only applies label smoothing."""

    def __init__(self, num_classes: int, mixup: float = 0.8, cutmix: float = 1.0, prob: float = 1.0,
                 switch_prob: float = 0.5, smoothing: float = 0.1) -> None:  # fmt: skip
        self.num_classes, self.mixup, self.cutmix = num_classes, mixup, cutmix
        self.prob, self.switch_prob, self.smoothing = prob, switch_prob, smoothing

    @property
    def active(self) -> bool:
        return (self.mixup > 0 or self.cutmix > 0) and self.prob > 0

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = smooth_one_hot(target, self.num_classes, self.smoothing)
        if not self.active or np.random.rand() >= self.prob:
            return x, y
        use_cutmix = self.cutmix > 0 and (self.mixup <= 0 or np.random.rand() < self.switch_prob)
        if use_cutmix:
            lam = float(np.random.beta(self.cutmix, self.cutmix))
            h, w = x.shape[-2:]
            cut = np.sqrt(1.0 - lam)
            ch, cw = int(h * cut), int(w * cut)
            cy, cx = np.random.randint(h), np.random.randint(w)
            y0, y1 = np.clip(cy - ch // 2, 0, h), np.clip(cy + ch // 2, 0, h)
            x0, x1 = np.clip(cx - cw // 2, 0, w), np.clip(cx + cw // 2, 0, w)
            x = x.clone()
            x[:, :, y0:y1, x0:x1] = x.flip(0)[:, :, y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)  # the area actually pasted
        else:
            lam = float(np.random.beta(self.mixup, self.mixup))
            x = x * lam + x.flip(0) * (1.0 - lam)
        return x, y * lam + y.flip(0) * (1.0 - lam)


def soft_target_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.sum(-target * torch.log_softmax(logits.float(), dim=-1), dim=-1).mean()
