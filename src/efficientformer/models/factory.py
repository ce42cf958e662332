"""``create_model``: build a registered model by name, check every argument, and load weights if asked.

Every argument is checked here, where it is parsed, with a one-line error that names it and the accepted range, so a
bad value fails at once instead of deep inside the network or at the first training step.
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any

from torch import nn

from .arch import arch_spec, build_from_arch, is_arch_path
from .base import EfficientFormerBase
from .checkpoint import load_checkpoint
from .hub import pretrained_path
from .layers import check_activation
from .registry import get_spec, resolve_name, with_activation


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < low:
        raise ValueError(f"{name} must be at least {low}, got {value}")
    return int(value)


def _check_img_size(value: Any) -> int | tuple[int, int]:
    sides = [value] if not isinstance(value, (tuple, list)) else list(value)
    if len(sides) not in (1, 2) or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in sides):
        raise TypeError(f"img_size must be an integer or an (height, width) pair of integers, got {value!r}")
    if any(v < 32 or v % 32 for v in sides):
        raise ValueError(f"img_size must have sides that are positive multiples of 32, got {value!r}")
    return int(sides[0]) if len(sides) == 1 else (int(sides[0]), int(sides[1]))


def check_model_args(
    num_classes: Any = 1000,
    img_size: Any = 224,
    distillation: Any = True,
    drop_path_rate: Any = None,
    features_only: Any = False,
    out_indices: Any = (0, 1, 2, 3),
) -> dict[str, Any]:
    """Validate the arguments of :func:`create_model`; returns them normalised or raises a one-line error."""
    num_classes = _check_int("num_classes", num_classes, 0)
    for flag, value in (("distillation", distillation), ("features_only", features_only)):
        if not isinstance(value, bool):
            raise TypeError(f"{flag} must be True or False, got {value!r}")
    if drop_path_rate is not None:
        if isinstance(drop_path_rate, bool) or not isinstance(drop_path_rate, numbers.Real):
            raise TypeError(f"drop_path_rate must be a number in [0, 1), got {drop_path_rate!r}")
        if not 0.0 <= float(drop_path_rate) < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1) (the chance of skipping a block), got {drop_path_rate}")
        drop_path_rate = float(drop_path_rate)
    try:
        indices = tuple(out_indices)
    except TypeError:
        raise TypeError(f"out_indices must be a sequence of stage numbers in 0..3, got {out_indices!r}") from None
    if not indices or any(
        isinstance(i, bool) or not isinstance(i, numbers.Integral) or not 0 <= i <= 3 for i in indices
    ):
        raise ValueError(f"out_indices must be stage numbers in 0..3, got {out_indices!r}")
    return {
        "num_classes": num_classes,
        "img_size": _check_img_size(img_size),
        "distillation": distillation,
        "drop_path_rate": drop_path_rate,
        "features_only": features_only,
        "out_indices": tuple(int(i) for i in indices),
    }


def create_model(
    name: str,
    *,
    arch: dict | str | Path | None = None,
    num_classes: int = 1000,
    img_size: int | tuple[int, int] = 224,
    distillation: bool = True,
    drop_path_rate: float | None = None,
    pretrained: bool = False,
    checkpoint: str | Path | dict | None = None,
    features_only: bool = False,
    out_indices: tuple[int, ...] = (0, 1, 2, 3),
    act: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build an EfficientFormer model by name.

    ``name`` is one of :func:`list_models`, a tagged name (``efficientformerv2_s0.snap_dist_in1k``) or an
    mmpretrain name (``efficientformer-l1_3rdparty_8xb128_in1k``). ``num_classes`` is an integer >= 0; **0 builds
    the network without a classifier**: ``forward`` then returns the pooled features (``num_features`` wide).
    ``img_size`` (sides multiples of 32) sets the grid the attention-bias tables are stored for; the model still runs
    at any input whose sides are multiples of 32. ``drop_path_rate`` is in [0, 1) (None: the variant's default).
    ``checkpoint`` (a path or a state dict in any supported layout) or ``pretrained=True`` loads weights through
    :func:`efficientformer.load_checkpoint`; with another class count the heads are dropped, with another
    resolution the bias tables are resampled.

    A searched architecture builds the same way: ``name`` may be an architecture file (``.yaml``/``.yml``/
    ``.json``, as ``efficientformer search`` writes), or ``arch=`` may hold the file or its mapping (``name`` is
    then free text, e.g. ``"efficientformerv2_custom"``); such models have no published weights.

    ``act`` (``"gelu"``, ``"relu"`` or ``"hardswish"``; None: what the name or architecture says, GELU for the
    published names) replaces every GELU; the result is named ``<variant>_<act>`` (``efficientformerv2_s0_relu``
    builds the same model). ReLU and Hardswish fold into INT8 convolutions; the weights are those of the GELU
    model (same keys), which need fine-tuning to recover the accuracy (see ``benchmarks/int8_activation.md``).
    """
    args = check_model_args(num_classes, img_size, distillation, drop_path_rate, features_only, out_indices)
    if act is not None:
        check_activation(act)
    if not isinstance(pretrained, bool):
        raise TypeError(f"pretrained must be True or False, got {pretrained!r}")
    if pretrained and checkpoint is not None:
        raise ValueError("pass either pretrained=True or checkpoint=..., not both")
    if arch is not None or is_arch_path(name):
        if pretrained:
            raise ValueError("a searched architecture has no published weights; pass checkpoint=... instead")
        spec = arch_spec(arch if arch is not None else name)
    else:
        model_name, tag = resolve_name(name)
        spec = get_spec(model_name)
    if act is not None and act != spec.act:
        if spec.act != "gelu":
            raise ValueError(f"{spec.name} already uses {spec.act}; pass act={spec.act!r} or build the GELU model")
        spec = with_activation(spec, act)
    if pretrained and spec.act != "gelu":
        raise ValueError(
            f"{spec.name} has no published weights; build it with checkpoint=<weights of the GELU model> "
            "(they fit) and fine-tune"
        )
    model: EfficientFormerBase = build_from_arch(spec, **args, **kwargs)
    if pretrained:
        checkpoint = pretrained_path(model_name, tag)
    if checkpoint is not None:
        # non-strict only to drop heads of another class count: the model named here must match the activation
        # a training checkpoint records
        load_checkpoint(model, checkpoint, strict=args["num_classes"] == 1000, change_activation=False)
    return model
