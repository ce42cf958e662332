"""The published evaluation preprocessing on an RGB PIL image, without torchvision.

Resize the short side to ``resize`` (default ``round(img_size / 0.875)``: 256 for 224), centre-crop ``img_size``,
scale to [0, 1] and normalise with the ImageNet mean and std. The arithmetic (output size of the resize, crop
offsets) follows torchvision's ``Resize`` + ``CenterCrop`` on PIL images exactly, so results equal
``efficientformer.data.transforms.eval_transform``; the tests check that. Inference does not import torchvision,
which keeps it out of the runtime dependencies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..data.constants import EVAL_CROP, EVAL_INTERPOLATION, EVAL_RESIZE, IMAGENET_MEAN, IMAGENET_STD

INTERPOLATIONS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}

#: The published protocol's ratio of crop to resize (224 / 256).
CROP_FRACTION = EVAL_CROP / EVAL_RESIZE


@dataclass(frozen=True)
class EvalPreprocess:
    """PIL RGB image -> normalised float tensor (3, img_size, img_size)."""

    img_size: int = EVAL_CROP
    resize: int | None = None
    interpolation: str = EVAL_INTERPOLATION
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if not isinstance(self.img_size, int) or self.img_size < 32 or self.img_size % 32:
            raise ValueError(f"img_size must be a positive multiple of 32 (the network's stride), got {self.img_size}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {self.interpolation!r}; use one of {sorted(INTERPOLATIONS)}")
        if self.resize is not None and self.resize < self.img_size:
            raise ValueError(
                f"resize ({self.resize}) must be at least img_size ({self.img_size}): the crop is taken "
                "from the resized image"
            )

    @property
    def resize_to(self) -> int:
        return round(self.img_size / CROP_FRACTION) if self.resize is None else int(self.resize)

    def describe(self) -> str:
        return f"resize short side {self.resize_to} ({self.interpolation}), centre crop {self.img_size}, mean/std"

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if img.mode != "RGB":
            raise ValueError(f"expected an RGB image, got mode {img.mode}; load it through inference.images first")
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = self.resize_to, int(self.resize_to * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), INTERPOLATIONS[self.interpolation])
        top = int(round((new_h - self.img_size) / 2.0))
        left = int(round((new_w - self.img_size) / 2.0))
        img = img.crop((left, top, left + self.img_size, top + self.img_size))
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)
        mean = torch.tensor(self.mean, dtype=x.dtype).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(3, 1, 1)
        return (x - mean) / std
