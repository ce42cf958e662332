"""THE evaluation preprocessing (:class:`EvalTransform`): an RGB PIL image (from
:func:`efficientformer.data.images.read_rgb`) to a normalised float tensor (C, H, W). The training augmentation is
timm's ``create_transform`` (see ``train/engine.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..models.layers import check_img_size
from .constants import EVAL_CROP, EVAL_CROP_PCT, EVAL_INTERPOLATION, IMAGENET_MEAN, IMAGENET_STD

#: Pillow filters of the evaluation resize (torchvision's ``Resize`` on PIL images calls the same ones).
PIL_INTERPOLATIONS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}

#: Pixels the short-side resize may produce at most; with the reader's aspect-ratio limit this is never reached
#: at sane settings, and it stops a huge ``--resize`` from taking the machine's memory.
MAX_RESIZED_PIXELS = 64_000_000


def eval_resize_size(img_size: int, crop_pct: float = EVAL_CROP_PCT) -> int:
    """Short side before the centre crop, by the official rule ``int(img_size / crop_pct)`` (truncated): 256 for
    224, 292 for 256, 73 for 64."""
    return int(img_size / crop_pct)


@dataclass(frozen=True)
class EvalTransform:
    """THE evaluation preprocessing: PIL RGB image -> normalised float tensor (3, img_size, img_size).

    Resize the short side to ``resize`` (default :func:`eval_resize_size`), centre-crop ``img_size``, scale to
    [0, 1] and normalise. The arithmetic (resized size, crop offsets) is torchvision's ``Resize`` + ``CenterCrop``
    on PIL images. Training's validation, ``eval``, ``predict``, ``inference_model`` and ``quantize`` all use this
    class, so a file gives the same tensor on every path.
    """

    img_size: int = EVAL_CROP
    resize: int | None = None
    interpolation: str = EVAL_INTERPOLATION
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    crop_pct: float = EVAL_CROP_PCT

    def __post_init__(self) -> None:
        if isinstance(self.img_size, bool) or not isinstance(self.img_size, int):
            raise ValueError(f"img_size must be an integer, got {self.img_size!r}")
        check_img_size(self.img_size)
        if self.interpolation not in PIL_INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {self.interpolation!r}; use one of {sorted(PIL_INTERPOLATIONS)}")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.resize is not None and (not isinstance(self.resize, int) or self.resize < self.img_size):
            raise ValueError(
                f"resize ({self.resize}) must be an integer of at least img_size ({self.img_size}): the crop is "
                "taken from the resized image"
            )

    @property
    def resize_to(self) -> int:
        return eval_resize_size(self.img_size, self.crop_pct) if self.resize is None else int(self.resize)

    def describe(self) -> str:
        return (
            f"resize short side {self.resize_to} ({self.interpolation}), centre crop {self.img_size}, ImageNet mean/std"
        )

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """``(w, h)`` after the short-side resize (torchvision's rule: the long side is truncated)."""
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.resize_to, int(self.resize_to * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if img.mode != "RGB":
            raise ValueError(f"expected an RGB image, got mode {img.mode}; read it with data.images.read_rgb first")
        w, h = img.size
        new_w, new_h = self.resized_size(w, h)
        if new_w * new_h > MAX_RESIZED_PIXELS:
            raise ValueError(
                f"a {w}x{h} image resized to {new_w}x{new_h} is over {MAX_RESIZED_PIXELS:,} pixels; "
                "use a smaller --resize or crop the image"
            )
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), PIL_INTERPOLATIONS[self.interpolation])
        top = int(round((new_h - self.img_size) / 2.0))
        left = int(round((new_w - self.img_size) / 2.0))
        img = img.crop((left, top, left + self.img_size, top + self.img_size))
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)
        mean = torch.tensor(self.mean, dtype=x.dtype).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(3, 1, 1)
        return (x - mean) / std


def eval_transform(
    img_size: int = EVAL_CROP,
    resize: int | None = None,
    interpolation: str = EVAL_INTERPOLATION,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> EvalTransform:
    """The published evaluation preprocessing (:class:`EvalTransform`)."""
    return EvalTransform(img_size, resize, interpolation, mean, std)


def describe_eval_transform(
    img_size: int = EVAL_CROP, resize: int | None = None, interpolation: str = EVAL_INTERPOLATION
) -> str:
    return EvalTransform(img_size, resize, interpolation).describe()


def eval_transform_of(
    own, img_size: int | None = None, resize: int | None = None, interpolation: str | None = None
) -> EvalTransform:
    """:class:`EvalTransform` with a model's own resolution, crop fraction, interpolation and mean/std (``own``: a
    :class:`efficientformer.models.ModelPreprocessing`), each overridden by an argument that is not None."""
    return EvalTransform(
        img_size=own.img_size if img_size is None else img_size,
        resize=resize,
        interpolation=own.interpolation if interpolation is None else interpolation,
        mean=own.mean,
        std=own.std,
        crop_pct=own.crop_pct,
    )
