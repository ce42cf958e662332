"""Image transforms: the published evaluation preprocessing and the training augmentation of the recipe.

Both return torchvision transforms mapping a PIL image to a normalised float tensor (C, H, W).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
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


class NoisyRandAugment(T.RandAugment):
    """RandAugment with the magnitude drawn per image from N(magnitude, magnitude_std), clipped to [0, 10].

    This is the "m9-mstd0.5" policy of the recipe expressed with torchvision's operations: magnitudes are on a 0-10
    scale (resolution 0.1) and ``num_ops`` operations are applied per image.
    """

    def __init__(self, num_ops: int = 2, magnitude: float = 9.0, magnitude_std: float = 0.5, fill=None):
        # 101 bins over the op's range: bin index = magnitude * 10 on the 0-10 scale.
        super().__init__(num_ops=num_ops, magnitude=round(magnitude * 10), num_magnitude_bins=101, fill=fill)
        self.mean_magnitude = magnitude
        self.magnitude_std = magnitude_std

    def forward(self, img):
        m = self.mean_magnitude
        if self.magnitude_std > 0:
            m = random.gauss(m, self.magnitude_std)
        self.magnitude = int(round(min(10.0, max(0.0, m)) * 10))
        return super().forward(img)


def train_transform(
    img_size: int = 224,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    randaugment: str | None = "m9-mstd0.5",
    random_erasing: float = 0.25,
    interpolation: str = "bicubic",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> T.Compose:
    """Training augmentation of the recipe: RandomResizedCrop (bicubic), horizontal flip, RandAugment
    (``m{magnitude}-mstd{std}[-n{ops}]``, ``None``/``""`` to disable), normalisation, random erasing with per-pixel
    normal noise (probability ``random_erasing``)."""
    ops: list = [
        T.RandomResizedCrop(img_size, scale=scale, ratio=ratio, interpolation=interpolation_mode(interpolation))
    ]
    if hflip > 0:
        ops.append(T.RandomHorizontalFlip(hflip))
    if randaugment:
        ops.append(parse_randaugment(randaugment, fill=tuple(round(255 * m) for m in mean)))
    ops += [T.ToTensor(), T.Normalize(mean, std)]
    if random_erasing > 0:
        ops.append(RandomErasingNoise(random_erasing))
    return T.Compose(ops)


def parse_randaugment(spec: str, fill=None) -> NoisyRandAugment:
    """Parse ``"m9-mstd0.5"`` / ``"m9-mstd0.5-n2"`` (``rand-`` prefix allowed)."""
    magnitude, mstd, num_ops = 9.0, 0.0, 2
    for part in spec.removeprefix("rand-").split("-"):
        try:
            if part.startswith("mstd"):
                mstd = float(part[4:])
            elif part.startswith("m"):
                magnitude = float(part[1:])
            elif part.startswith("n"):
                num_ops = int(part[1:])
            elif part:
                raise ValueError
        except ValueError:
            raise ValueError(f"bad RandAugment spec {spec!r}; expected e.g. 'm9-mstd0.5' or 'm9-mstd0.5-n2'") from None
    return NoisyRandAugment(num_ops=num_ops, magnitude=magnitude, magnitude_std=mstd, fill=fill)


class RandomErasingNoise(torch.nn.Module):
    """Random erasing on a normalised tensor, filling the box with standard-normal noise per pixel (the recipe's
    ``reprob`` with ``remode=pixel``)."""

    def __init__(self, p: float = 0.25, scale=(0.02, 1 / 3), ratio=(0.3, 3.3)):
        super().__init__()
        self.p, self.scale, self.ratio = p, scale, ratio

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if random.random() >= self.p:
            return img
        i, j, h, w, _ = T.RandomErasing.get_params(img, scale=self.scale, ratio=self.ratio, value=[0.0])
        img = img.clone()
        img[:, i : i + h, j : j + w] = torch.randn(img.shape[0], h, w, dtype=img.dtype)
        return img
