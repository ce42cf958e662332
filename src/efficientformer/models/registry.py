"""Model names, aliases and the ``create_model`` factory."""

from __future__ import annotations

import difflib
import fnmatch
from pathlib import Path
from typing import Any

from torch import nn

from .base import EfficientFormerBase, ModelSpec
from .efficientformer import V1_VARIANTS, EfficientFormer
from .efficientformer_v2 import V2_VARIANTS, EfficientFormerV2

VARIANTS: dict[str, ModelSpec] = {**V1_VARIANTS, **V2_VARIANTS}

#: Pretrained tags known for each model (timm-style ``name.tag``).
PRETRAINED_TAGS: dict[str, tuple[str, ...]] = {name: ("snap_dist_in1k",) for name in VARIANTS}

#: Other libraries' names for the same networks.
ALIASES: dict[str, str] = {
    "efficientformer-l1_3rdparty_8xb128_in1k": "efficientformer_l1",
    "efficientformer-l3_3rdparty_8xb128_in1k": "efficientformer_l3",
    "efficientformer-l7_3rdparty_8xb128_in1k": "efficientformer_l7",
}


class UnknownModelError(ValueError):
    """Raised for a model name that is not registered; the message lists close matches."""


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, optionally filtered by a shell-style pattern (``"*v2*"``)."""
    names = sorted(VARIANTS)
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names


def resolve_name(name: str) -> tuple[str, str | None]:
    """Map any accepted spelling to ``(model_name, tag)``; raise ``UnknownModelError`` with suggestions."""
    if not isinstance(name, str):
        raise UnknownModelError(f"model name must be a string, got {type(name).__name__}")
    key = name.strip()
    if key in ALIASES:
        return ALIASES[key], None
    base, _, tag = key.partition(".")
    if base in VARIANTS:
        if tag and tag not in PRETRAINED_TAGS[base]:
            raise UnknownModelError(f"unknown tag {tag!r} for {base}; known tags: {', '.join(PRETRAINED_TAGS[base])}")
        return base, tag or None
    candidates = list(VARIANTS) + list(ALIASES) + [f"{n}.{t}" for n, ts in PRETRAINED_TAGS.items() for t in ts]
    close = difflib.get_close_matches(key, candidates, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UnknownModelError(f"unknown model {name!r}{hint} (all models: {', '.join(list_models())})")


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    img_size: int | tuple[int, int] = 224,
    distillation: bool = True,
    drop_path_rate: float | None = None,
    pretrained: bool = False,
    checkpoint: str | Path | dict | None = None,
    features_only: bool = False,
    out_indices: tuple[int, ...] = (0, 1, 2, 3),
    **kwargs: Any,
) -> nn.Module:
    """Build an EfficientFormer model by name.

    ``name`` is one of :func:`list_models`, a tagged name (``efficientformerv2_s0.snap_dist_in1k``) or an
    mmpretrain name (``efficientformer-l1_3rdparty_8xb128_in1k``). ``img_size`` sets the grid the attention-bias
    tables are stored for; the model still runs at any input whose sides are multiples of 32. ``checkpoint`` (a
    path or a state dict in any supported layout) or ``pretrained=True`` loads weights through
    :func:`efficientformer.load_checkpoint`; with another class count the heads are dropped, with another
    resolution the bias tables are resampled.
    """
    model_name, tag = resolve_name(name)
    spec = VARIANTS[model_name]
    cls: type[EfficientFormerBase] = EfficientFormer if spec.family == "v1" else EfficientFormerV2
    model = cls(
        spec,
        num_classes=num_classes,
        img_size=img_size,
        distillation=distillation,
        drop_path_rate=drop_path_rate,
        features_only=features_only,
        out_indices=tuple(out_indices),
        **kwargs,
    )
    if pretrained and checkpoint is not None:
        raise ValueError("pass either pretrained=True or checkpoint=..., not both")
    if pretrained:
        from ..hub import pretrained_path

        checkpoint = pretrained_path(model_name, tag)
    if checkpoint is not None:
        from .checkpoint import load_checkpoint

        load_checkpoint(model, checkpoint, strict=False if num_classes != 1000 else True)
    return model
