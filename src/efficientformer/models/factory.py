"""``create_model``: build a registered model by name, check every argument, and load weights if asked.

Every argument is checked here, where it is parsed, with a one-line error that names it and the accepted range, so a
bad value fails at once instead of deep inside the network or at the first training step.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..utils.optional import require
from .arch import arch_spec, build_from_arch, is_arch_path
from .base import EfficientFormerBase, ModelSpec
from .checkpoint import CheckpointError, load_checkpoint, read_state_dict, variant_of
from .facts import EVAL_CROP_PCT, EVAL_INTERPOLATION, FACTS, HUB_LICENCE, IMAGENET_MEAN, IMAGENET_STD
from .hub import hub_id, hub_model, hub_weights, is_hub_name, pretrained_path
from .layers import check_activation, check_img_size
from .registry import get_spec, resolve_name, with_activation

#: What ``create_model`` builds when neither the caller nor a Hub config says otherwise.
DEFAULT_NUM_CLASSES, DEFAULT_IMG_SIZE, DEFAULT_DISTILLATION = 1000, 224, True


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
    check_img_size(tuple(sides) if len(sides) == 2 else sides[0])
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
    num_classes: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    distillation: bool | None = None,
    drop_path_rate: float | None = None,
    pretrained: bool = False,
    checkpoint: str | Path | dict | None = None,
    features_only: bool = False,
    out_indices: tuple[int, ...] = (0, 1, 2, 3),
    act: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build an EfficientFormer model by name.

    ``name`` is one of :func:`list_models`, a tagged name (``efficientformerv2_s0.snap_dist_in1k``), an
    mmpretrain name (``efficientformer-l1_3rdparty_8xb128_in1k``) or a Hugging Face Hub repository
    (``hf-hub:ORG/REPO[@revision]``, in our, timm's or transformers' layout: its ``config.json`` says the variant,
    class count, resolution and preprocessing; ``pretrained=True`` loads its weights). ``num_classes`` (default
    1000, or the Hub config's) is an integer >= 0; **0 builds the network without a classifier**: ``forward`` then
    returns the pooled features (``num_features`` wide). ``img_size`` (default 224, or the Hub config's; sides
    multiples of 32) sets the grid the attention-bias tables are stored for; the model still runs at any input
    whose sides are multiples of 32. ``distillation`` defaults to True (or the Hub config's). ``drop_path_rate`` is
    in [0, 1) (None: the variant's default). The model's preprocessing (resolution, crop, mean/std, class names)
    is on ``model.pretrained_cfg``; :func:`model_preprocessing` reads it.
    ``checkpoint`` (a path or a state dict in any supported layout) or ``pretrained=True`` loads weights through
    :func:`efficientformer.load_checkpoint`; with another class count the heads are dropped, with another
    resolution the bias tables are resampled.

    ``timm:NAME`` builds timm's model ``NAME`` (e.g. ``timm:mobilenetv2_100``) with the same arguments, so a
    baseline from another family trains, evaluates and exports through the same code (:func:`_create_timm`).

    A searched architecture builds the same way: ``name`` may be an architecture file (``.yaml``/``.yml``/
    ``.json``, as ``efficientformer search`` writes), or ``arch=`` may hold the file or its mapping (``name`` is
    then free text, e.g. ``"efficientformerv2_custom"``); such models have no published weights.

    ``act`` (``"gelu"``, ``"relu"`` or ``"hardswish"``; None: what the name or architecture says, GELU for the
    published names) replaces every GELU; the result is named ``<variant>_<act>`` (``efficientformerv2_s0_relu``
    builds the same model). ReLU and Hardswish fold into INT8 convolutions; the weights are those of the GELU
    model (same keys), which need fine-tuning to recover the accuracy (see ``docs/notes/int8_activation.md``).
    """
    if is_timm_name(name):
        return _create_timm(
            name,
            arch=arch,
            num_classes=num_classes,
            img_size=img_size,
            distillation=distillation,
            drop_path_rate=drop_path_rate,
            pretrained=pretrained,
            checkpoint=checkpoint,
            features_only=features_only,
            out_indices=out_indices,
            act=act,
            **kwargs,
        )
    if is_hub_name(name):
        if arch is not None:
            raise ValueError("a Hub repository says its own architecture; pass either hf-hub:... or arch=, not both")
        return _create_from_hub(
            name,
            num_classes=num_classes,
            img_size=img_size,
            distillation=distillation,
            pretrained=pretrained,
            checkpoint=checkpoint,
            act=act,
            drop_path_rate=drop_path_rate,
            features_only=features_only,
            out_indices=out_indices,
            **kwargs,
        )
    num_classes = DEFAULT_NUM_CLASSES if num_classes is None else num_classes
    img_size = DEFAULT_IMG_SIZE if img_size is None else img_size
    distillation = DEFAULT_DISTILLATION if distillation is None else distillation
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
    model.pretrained_cfg = default_pretrained_cfg(model)
    if pretrained:
        checkpoint = pretrained_path(model_name, tag)
        model.pretrained_cfg.update(hf_hub_id=hub_id(model_name, tag), license=HUB_LICENCE)
    if checkpoint is not None:
        # non-strict only to drop heads of another class count: the model named here must match the activation
        # a training checkpoint records
        load_checkpoint(model, checkpoint, strict=args["num_classes"] == 1000, change_activation=False)
    return model


def named_spec(name: str | Path) -> ModelSpec:
    """The spec behind a published model name (any spelling :func:`resolve_name` takes, ``_relu``/``_hardswish``
    variants included) or an architecture file (``.yaml``/``.yml``/``.json``); one-line errors for either."""
    return arch_spec(name) if is_arch_path(name) else get_spec(resolve_name(str(name))[0])


#: ``create_model("timm:NAME")``: timm's model ``NAME``, e.g. a baseline trained with our recipe.
TIMM_PREFIX = "timm:"


def is_timm_name(name: Any) -> bool:
    return isinstance(name, str) and name.startswith(TIMM_PREFIX)


def _create_timm(
    name: str,
    *,
    arch: Any,
    num_classes: int | None,
    img_size: int | tuple[int, int] | None,
    distillation: bool | None,
    drop_path_rate: float | None,
    pretrained: bool,
    checkpoint: str | Path | dict | None,
    features_only: bool,
    out_indices: tuple[int, ...],
    act: str | None,
    **kwargs: Any,
) -> nn.Module:
    """``create_model("timm:NAME")``: timm's model with our argument checks. Such a model has one head (no
    distillation head), no activation swap and no deploy form (it is exported as it is); ``img_size`` is the
    resolution it is fed (recorded in ``pretrained_cfg``; timm's convolutional networks run at any size);
    ``drop_path_rate`` goes to the models that support it; ``checkpoint`` is a training checkpoint of ours or a
    state dict in timm's keys."""
    timm = require("timm")
    model_name = name[len(TIMM_PREFIX) :]
    if not model_name or not timm.is_model(model_name):
        raise ValueError(f"{name!r}: timm has no model {model_name!r}; list them with timm.list_models('*mobilenet*')")
    if arch is not None:
        raise ValueError("a timm: model is timm's architecture; pass either timm:NAME or arch=, not both")
    if distillation:
        raise ValueError(f"{name} has one classifier head: train it with distillation=none")
    if act is not None:
        raise ValueError(f"{name}: act= swaps the activations of our models only; drop it for timm models")
    if pretrained and checkpoint is not None:
        raise ValueError("pass either pretrained=True or checkpoint=..., not both")
    args = check_model_args(
        DEFAULT_NUM_CLASSES if num_classes is None else num_classes,
        DEFAULT_IMG_SIZE if img_size is None else img_size,
        False,
        drop_path_rate,
        features_only,
        out_indices,
    )
    build: dict[str, Any] = {"num_classes": args["num_classes"], **kwargs}
    if args["drop_path_rate"] is not None:
        build["drop_path_rate"] = args["drop_path_rate"]
    if features_only:
        build.update(features_only=True, out_indices=args["out_indices"])
    try:
        model = timm.create_model(model_name, pretrained=pretrained, **build)
    except TypeError as err:  # e.g. drop_path_rate on a model without drop path
        raise ValueError(f"{name} does not take these arguments ({err})") from None
    height, width = _grid(args["img_size"])
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    cfg.update(architecture=name, input_size=(3, height, width), num_classes=args["num_classes"], source="timm")
    cfg.setdefault("label_names", None)
    model.pretrained_cfg = cfg
    model.img_size = args["img_size"]
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, strict=args["num_classes"] == 1000)
    return model


def _create_from_hub(
    name: str,
    *,
    num_classes: int | None,
    img_size: int | tuple[int, int] | None,
    distillation: bool | None,
    pretrained: bool,
    checkpoint: str | Path | dict | None,
    **kwargs: Any,
) -> nn.Module:
    """``create_model("hf-hub:ORG/REPO")``: the repository's config says what to build (the caller's arguments
    win); ``pretrained=True`` loads its weights, with heads dropped when the caller asks for another class count."""
    if pretrained and checkpoint is not None:
        raise ValueError("pass either pretrained=True or checkpoint=..., not both")
    repo = hub_model(name)
    if repo.layout == "weights":  # no config.json: the weights' shapes say the variant
        state, _, _ = read_state_dict(hub_weights(repo))
        repo.model_name = variant_of(state)
        if repo.model_name is None:
            raise CheckpointError(f"{repo.source} has no config.json and its weights are no published variant")
    build = dict(repo.build_args)
    for key, value in (("num_classes", num_classes), ("img_size", img_size), ("distillation", distillation)):
        if value is not None:
            build[key] = value
    target = str(repo.arch_file) if repo.arch_file is not None else repo.model_name
    model = create_model(target, **build, **kwargs)
    same_head = build.get("num_classes", DEFAULT_NUM_CLASSES) == repo.build_args.get(
        "num_classes", build.get("num_classes", DEFAULT_NUM_CLASSES)
    )
    cfg = dict(model.pretrained_cfg)
    cfg.update({k: v for k, v in repo.pretrained_cfg.items() if k in PREPROCESSING_KEYS or k == "license"})
    if same_head and repo.pretrained_cfg.get("label_names"):
        cfg["label_names"] = list(repo.pretrained_cfg["label_names"])
    cfg.update(hf_hub_id=repo.source[len("hf-hub:") :], source="hf-hub", layout=repo.layout)
    if not cfg.get("input_size") or tuple(cfg["input_size"][1:]) != tuple(_grid(model.img_size)):
        cfg["input_size"] = (3, *_grid(model.img_size))
    model.pretrained_cfg = cfg
    weights = hub_weights(repo) if pretrained else checkpoint
    if weights is not None:
        load_checkpoint(model, weights, strict=same_head, change_activation=False)
    return model


# -- the model's own preprocessing -------------------------------------------------------------------------------
#: Fields of ``model.pretrained_cfg`` that say how an image becomes the model's input (timm's names).
PREPROCESSING_KEYS = ("input_size", "crop_pct", "interpolation", "mean", "std")


def _grid(img_size: Any) -> tuple[int, int]:
    return (img_size, img_size) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[1]))


def default_pretrained_cfg(model: nn.Module) -> dict[str, Any]:
    """The published evaluation at the resolution the model was built for, timm's key names."""
    height, width = _grid(getattr(model, "img_size", 224))
    spec = getattr(model, "spec", None)
    name = getattr(spec, "name", None)
    facts = FACTS.get(name) if name else None
    return {
        "architecture": name,
        "input_size": (3, height, width),
        "crop_pct": facts.eval_crop_pct if facts else EVAL_CROP_PCT,
        "interpolation": facts.eval_interpolation if facts else EVAL_INTERPOLATION,
        "mean": tuple(IMAGENET_MEAN),
        "std": tuple(IMAGENET_STD),
        "num_classes": int(getattr(model, "num_classes", 0) or 0),
        "label_names": None,
    }


@dataclass(frozen=True)
class ModelPreprocessing:
    """How images become this model's input, and what its outputs are called (None: not recorded)."""

    img_size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str] | None


def model_preprocessing(model: nn.Module) -> ModelPreprocessing:
    """The model's own preprocessing: its ``pretrained_cfg`` (set by :func:`create_model` from the build
    arguments, the Hub config or the published protocol), else the published evaluation at ``model.img_size``.
    A non-square model is fed square crops of its shorter side."""
    cfg = {**default_pretrained_cfg(model), **(getattr(model, "pretrained_cfg", None) or {})}
    side = min(int(v) for v in cfg["input_size"][1:])
    names = cfg.get("label_names")
    return ModelPreprocessing(
        img_size=side,
        crop_pct=float(cfg["crop_pct"]),
        interpolation=str(cfg["interpolation"]),
        mean=tuple(float(v) for v in cfg["mean"]),
        std=tuple(float(v) for v in cfg["std"]),
        class_names=list(names) if isinstance(names, Sequence) and not isinstance(names, str) and names else None,
    )
