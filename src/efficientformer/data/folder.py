"""ImageNet-style folders (``train/`` and ``val/``, one subfolder per class) with clear errors and tolerant loading."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from torchvision.datasets import DatasetFolder

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class TolerantImageFolder(DatasetFolder):
    """torchvision ``DatasetFolder`` of images that returns ``None`` for an unreadable image instead of raising;
    :func:`collate_skip` drops those samples and counts them, so one corrupt file never stops a long run."""

    def __init__(self, root: str | Path, transform: Callable | None = None) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"data folder not found: {root}")
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise FileNotFoundError(f"{root} has no class subfolders; expected {root}/<class_name>/<image files>")
        try:
            super().__init__(str(root), loader=_load_rgb, extensions=IMG_EXTENSIONS, transform=transform)
        except FileNotFoundError as err:  # torchvision: a class folder without images
            raise FileNotFoundError(f"{root}: {str(err).splitlines()[0]}") from None

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        try:
            img = self.loader(path)
            if self.transform is not None:
                img = self.transform(img)
        except (OSError, ValueError, SyntaxError):  # PIL raises these for truncated / non-image files
            return None, target
        return img, target


def _load_rgb(path: str) -> Image.Image:
    with open(path, "rb") as f:
        img = Image.open(f)
        return img.convert("RGB")


def collate_skip(batch):
    """Stack the readable samples; returns ``(images, targets, n_skipped)``."""
    good = [(x, y) for x, y in batch if x is not None]
    skipped = len(batch) - len(good)
    if not good:
        return None, None, skipped
    images = torch.stack([x for x, _ in good])
    targets = torch.tensor([y for _, y in good], dtype=torch.long)
    return images, targets, skipped


def build_datasets(root: str | Path, train_tf: Callable, eval_tf: Callable):
    """Return ``(train_set, val_set)`` after checking the layout; one-line errors name the problem."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root} (expected {root}/train/<class>/... and {root}/val/)")
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise FileNotFoundError(f"{root} has no {split}/ folder; expected {root}/train/<class>/ and {root}/val/")
    train_set = TolerantImageFolder(root / "train", train_tf)
    val_set = TolerantImageFolder(root / "val", eval_tf)
    if train_set.classes != val_set.classes:
        only_train = sorted(set(train_set.classes) - set(val_set.classes))
        only_val = sorted(set(val_set.classes) - set(train_set.classes))
        raise ValueError(
            f"train/ and val/ have different class folders (only in train: {only_train[:5]}, only in val: "
            f"{only_val[:5]}); both must hold the same class subfolders"
        )
    return train_set, val_set
