"""The published evaluation preprocessing: a torchvision transform mapping a PIL image to a normalised float
tensor (C, H, W). The training augmentation is timm's ``create_transform`` (see ``train/engine.py``)."""

from __future__ import annotations

from collections.abc import Sequence

from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from .constants import IMAGENET_MEAN, IMAGENET_STD

_INTERPOLATIONS = {
    "bicubic": InterpolationMode.BICUBIC,
    "bilinear": InterpolationMode.BILINEAR,
    "nearest": InterpolationMode.NEAREST,
}


def interpolation_mode(name: str) -> InterpolationMode:
    try:
        return _INTERPOLATIONS[name]
    except KeyError:
        raise ValueError(f"unknown interpolation {name!r}; use one of {sorted(_INTERPOLATIONS)}") from None


def eval_transform(
    img_size: int = 224,
    resize: int | None = None,
    interpolation: str = "bicubic",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> T.Compose:
    """Published evaluation: resize the short side to ``resize`` (default ``round(img_size / 0.875)``, i.e. 256 for
    224), centre-crop ``img_size``, convert to RGB tensor and normalise."""
    resize = round(img_size / 0.875) if resize is None else resize
    return T.Compose(
        [
            T.Resize(resize, interpolation=interpolation_mode(interpolation)),
            T.CenterCrop(img_size),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def describe_eval_transform(img_size: int = 224, resize: int | None = None, interpolation: str = "bicubic") -> str:
    resize = round(img_size / 0.875) if resize is None else resize
    return f"resize short side {resize} ({interpolation}), centre crop {img_size}, ImageNet mean/std"
