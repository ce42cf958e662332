"""ImageNet-style folders (``train/`` and ``val/``, one subfolder per class) with clear errors and tolerant loading.

Images are decoded by :func:`efficientformer.data.images.read_rgb`, the reader every other path uses. A file that
cannot be read (corrupt, truncated, not an image, a decompression bomb, an absurd aspect ratio) is skipped,
counted by :func:`collate_skip` and named once in a warning; a transform that fails on a readable image is an
:class:`AugmentationError` naming the op (never a skipped file); a class folder's subfolder that cannot be listed is
named in a warning when the data set is built. Neither stops a long run.
"""

from __future__ import annotations

import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torchvision.datasets import DatasetFolder

from .images import IMAGE_EXTENSIONS, ImageLoadError, SkippedImageWarning, read_rgb, walk_image_files


class AugmentationError(RuntimeError):
    """A training transform failed on a readable image: an error naming the op, not a skipped file."""


def failing_op(err: BaseException) -> str:
    """The innermost transform object in ``err``'s traceback: its class, and its ``name`` when it has one (timm's
    RandAugment ops: ``AugmentOp(PosterizeIncreasing)``)."""
    found = "(unknown op)"
    for frame, _ in traceback.walk_tb(err.__traceback__):
        obj = frame.f_locals.get("self")
        if obj is not None and callable(obj) and type(obj).__module__.split(".")[0] in ("timm", "torchvision"):
            name = getattr(obj, "name", None)
            found = f"{type(obj).__name__}({name})" if isinstance(name, str) else type(obj).__name__
    return found


class TolerantImageFolder(DatasetFolder):
    """torchvision ``DatasetFolder`` of images that returns ``None`` for an unreadable image instead of raising;
    :func:`collate_skip` drops those samples and counts them, so one bad file never stops a long run.

    ``scan_problems`` lists the folders that could not be listed (one line each); ``max_pixels`` is the reader's
    decompression-bomb limit."""

    def __init__(self, root: str | Path, transform: Callable | None = None, max_pixels: int | None = None) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"data folder not found: {root}")
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise FileNotFoundError(f"{root} has no class subfolders; expected {root}/<class_name>/<image files>")
        self.max_pixels = max_pixels
        self.scan_problems: list[str] = []
        self._warned: set[str] = set()
        try:
            super().__init__(str(root), loader=self._read, extensions=tuple(IMAGE_EXTENSIONS), transform=transform)
        except FileNotFoundError as err:  # torchvision: a class folder without images
            raise FileNotFoundError(f"{root}: {str(err).splitlines()[0]}") from None
        for line in self.scan_problems:
            warnings.warn(line, SkippedImageWarning, stacklevel=2)

    def make_dataset(self, directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        """torchvision's scan without its silent ``os.walk``: unlistable folders are recorded, not dropped."""
        samples: list[tuple[str, int]] = []
        empty = []

        def report(err: OSError) -> None:
            why = err.strerror or err
            self.scan_problems.append(f"{err.filename}: cannot list folder ({why}); its images are skipped")

        for name in sorted(class_to_idx):
            files = walk_image_files(Path(directory) / name, report)
            samples += [(str(f), class_to_idx[name]) for f in files]
            if not files:
                empty.append(name)
        if empty and not allow_empty:
            raise FileNotFoundError(
                f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in class folder(s) {', '.join(empty[:5])}"
            )
        return samples

    def _read(self, path: str):
        return read_rgb(path, max_pixels=self.max_pixels)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        try:
            img = self.loader(path)
        except ImageLoadError as err:  # only reading errors skip an image; a failing augmentation is a bug to fix
            self._skip(path, err.reason)
            return None, target
        if self.transform is not None:
            try:
                img = self.transform(img)
            except Exception as err:  # noqa: BLE001 - any failure: name the op, never skip the file
                raise AugmentationError(
                    f"augmentation {failing_op(err)} failed on {path}: {type(err).__name__}: "
                    f"{str(err).splitlines()[0] if str(err) else ''}"
                ) from err
        return img, target

    def _skip(self, path: str, reason: str) -> None:
        if path not in self._warned:  # once per file and process, not once per epoch
            self._warned.add(path)
            warnings.warn(f"skipped {path}: {reason}", SkippedImageWarning, stacklevel=3)


def collate_skip(batch):
    """Stack the readable samples; returns ``(images, targets, n_skipped)``."""
    good = [(x, y) for x, y in batch if x is not None]
    skipped = len(batch) - len(good)
    if not good:
        return None, None, skipped
    images = torch.stack([x for x, _ in good])
    targets = torch.tensor([y for _, y in good], dtype=torch.long)
    return images, targets, skipped


def build_datasets(root: str | Path, train_tf: Callable, eval_tf: Callable, *, max_pixels: int | None = None):
    """Return ``(train_set, val_set)`` after checking the layout; one-line errors name the problem. Images over
    ``max_pixels`` pixels are skipped like any unreadable image (default: the reader's limit)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root} (expected {root}/train/<class>/... and {root}/val/)")
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise FileNotFoundError(f"{root} has no {split}/ folder; expected {root}/train/<class>/ and {root}/val/")
    train_set = TolerantImageFolder(root / "train", train_tf, max_pixels=max_pixels)
    val_set = TolerantImageFolder(root / "val", eval_tf, max_pixels=max_pixels)
    if train_set.classes != val_set.classes:
        only_train = sorted(set(train_set.classes) - set(val_set.classes))
        only_val = sorted(set(val_set.classes) - set(train_set.classes))
        raise ValueError(
            f"train/ and val/ have different class folders (only in train: {only_train[:5]}, only in val: "
            f"{only_val[:5]}); both must hold the same class subfolders"
        )
    if len(train_set.classes) == 1:
        warnings.warn(
            f"{root / 'train'} has one class ({train_set.classes[0]!r}): every prediction is that class, so "
            "accuracy will be 100% and mean nothing; add one subfolder per class",
            OneClassWarning,
            stacklevel=2,
        )
    return train_set, val_set


class OneClassWarning(UserWarning):
    """A training set with a single class: it trains to a meaningless 100%."""
