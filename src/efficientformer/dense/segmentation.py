"""Semantic FPN with an EfficientFormer backbone: ADE20K-format data, augmentation, mIoU evaluation, overlays.

Label maps follow ADE20K: PNGs where 0 means "other / unlabelled" and 1..150 are the classes. With
``reduce_zero_label`` (the default, as in MMSegmentation's ADE20K configs) value 0 becomes the ignore index 255 and
every class value v becomes v - 1, so the network predicts classes 0..num_classes-1 and unlabelled pixels are
neither trained on nor scored. Data sets that already store 0-based class ids set ``reduce_zero_label=false``.
"""

from __future__ import annotations

import json
import math
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance
from torch import nn

from ..data.constants import IMAGENET_MEAN, IMAGENET_STD
from ..data.images import IMAGE_EXTENSIONS, SkippedImageWarning, SkipsUnreadable, probe_image, read_rgb
from ..models.registry import family_of
from ..runtime.config import param
from ..runtime.distributed import all_reduce_sum, shard
from .backbone import FPN
from .config import DenseConfig


@dataclass
class SegmentConfig(DenseConfig):
    """Defaults are the official Semantic FPN 40k-iteration ADE20K recipe."""

    RENAMED: ClassVar[dict[str, str]] = {**DenseConfig.RENAMED, "iters": "steps"}

    data: str = param("", help="ADE20K-format root: images/<split>/*.jpg|png and annotations/<split>/*.png")
    train_split: str = param("training")
    val_split: str = param("validation")
    output: str = param("runs/segment")
    img_size: int = param(0, ge=0, help="grid the attention-bias tables are stored for; 0 = crop_size")
    num_classes: int = param(150, ge=1)
    reduce_zero_label: bool = param(True, help="label 0 is 'other': ignored, the rest shifted down by one")
    ignore_index: int = param(255, ge=0, le=255)
    head_channels: int = param(128, ge=1)
    dropout: float = param(0.1, ge=0.0, lt=1.0)
    steps: int = param(40000, ge=1, help="optimiser steps of the run")
    lr: float = param(2e-4, gt=0.0)
    weight_decay: float = param(1e-4, ge=0.0)
    poly_power: float = param(0.9, ge=0.0, help="0: constant rate")
    min_lr: float | None = param(None, ge=0.0, help="None = 0 for V1, 1e-6 for V2 (official)")
    warmup_steps: int = param(0, ge=0, help="optimiser steps of linear warm-up")
    crop_size: int = param(512, ge=32)
    scale: tuple[int, ...] = param((2048, 512), ge=1, help="(long, short) bound of the keep-ratio resize")
    ratio_range: tuple[float, ...] = param((0.5, 2.0), gt=0.0, help="(low, high) jitter of the resize scale")
    cat_max_ratio: float = param(0.75, gt=0.0, le=1.0, help="retry crops where one class covers more (up to 10x)")
    hflip: float = param(0.5, ge=0.0, le=1.0, help="horizontal flip probability")
    photometric: bool = param(True)
    batch_size: int = param(4, ge=1, help="images per process")
    eval_every: int = param(4000, ge=0, help="optimiser steps between evaluations (0 = only at the end)")
    checkpoint_every: int = param(4000, ge=0, help="optimiser steps between mid-epoch checkpoints (0: epoch ends only)")
    log_every: int = param(50, ge=1)
    overlay_alpha: float = param(0.5, ge=0.0, le=1.0, help="predict: weight of the class colours in the overlay")

    def check(self) -> None:
        super().check()
        if len(self.scale) != 2 or self.scale[0] < self.scale[1]:
            raise ValueError(f"config key 'scale' is (long, short) with long >= short, got {list(self.scale)}")
        if len(self.ratio_range) != 2 or self.ratio_range[0] > self.ratio_range[1]:
            raise ValueError(f"config key 'ratio_range' is (low, high) with low <= high, got {list(self.ratio_range)}")

    def resolved_min_lr(self) -> float:
        if self.min_lr is not None:
            return self.min_lr
        return 1e-6 if family_of(self.model) == "v2" else 0.0


# -- data --------------------------------------------------------------------------------------------------------
def ade_pairs(root: str | Path, split: str) -> list[tuple[Path, Path]]:
    """Matching ``(image, label)`` paths for a split of an ADE20K-format root (see :func:`find_ade_pairs`); images
    without a label PNG are named in a warning and left out."""
    pairs, problems = find_ade_pairs(root, split)
    if problems:
        warnings.warn("; ".join(problems), SkippedImageWarning, stacklevel=2)
    return pairs


def find_ade_pairs(root: str | Path, split: str) -> tuple[list[tuple[Path, Path]], list[str]]:
    """``(pairs, problems)``: every image of ``images/<split>/`` (the one extension list) with its label PNG of
    the same stem in ``annotations/<split>/``; each image without a label file is one problem line."""
    if not root:
        raise ValueError("no data set given; pass --data DIR (an ADE20K-format root, e.g. from `segment synth`)")
    root = Path(root)
    img_dir, ann_dir = root / "images" / split, root / "annotations" / split
    if not img_dir.is_dir() or not ann_dir.is_dir():
        raise FileNotFoundError(
            f"no ADE20K split {split!r} under {root}: expected images/{split}/ and annotations/{split}/"
        )
    labels = {p.stem: p for p in ann_dir.iterdir() if p.suffix.lower() == ".png"}
    images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    if not images:
        raise FileNotFoundError(f"no images in {img_dir}")
    pairs = [(p, labels[p.stem]) for p in images if p.stem in labels]
    problems = [
        f"{p}: no label file {ann_dir / (p.stem + '.png')}; image left out" for p in images if p.stem not in labels
    ]
    if not pairs:
        raise FileNotFoundError(f"none of the {len(images)} images in {img_dir} has a label PNG in {ann_dir}")
    return pairs, problems


def read_label(path: Path) -> np.ndarray:
    """A label map as a 2-D uint8 array (palette PNGs give their indices); one-line ``ValueError`` otherwise."""
    try:
        with Image.open(path) as im:
            label = np.asarray(im)
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{path}: unreadable label PNG ({str(err).splitlines()[0] if str(err) else err})") from None
    if label.ndim != 2:
        raise ValueError(f"label map {path} must be a single-channel PNG, got shape {label.shape}")
    if label.dtype != np.uint8:
        if label.size and (label.min() < 0 or label.max() > 255):
            raise ValueError(f"label map {path} has values outside 0..255")
        label = label.astype(np.uint8)
    return label


def check_ade(
    pairs: list[tuple[Path, Path]],
    num_classes: int,
    reduce_zero_label: bool,
    ignore_index: int,
    max_pixels: int | None = None,
) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Check every pair up front: the image is readable (header and structure, :func:`probe_image`), the label
    is a single-channel PNG of the image's size whose values fit ``num_classes``. Returns ``(good pairs,
    problems)``; each problem names the file."""
    good, problems = [], []
    for img_path, lbl_path in pairs:
        try:
            w, h = probe_image(img_path, max_pixels=max_pixels)
            label = read_label(lbl_path)
        except ValueError as err:
            problems.append(str(err))
            continue
        if label.shape != (h, w) and label.shape != (w, h):  # (w, h): an EXIF-rotated photo, checked at load
            problems.append(f"{lbl_path}: label is {label.shape[1]}x{label.shape[0]}, image {img_path} is {w}x{h}")
            continue
        values = np.unique(reduce_zero(label) if reduce_zero_label else label)
        bad = [int(v) for v in values if v != ignore_index and v >= num_classes]
        if bad:
            shown = [v + 1 for v in bad] if reduce_zero_label else bad
            problems.append(
                f"{lbl_path}: label value(s) {shown[:5]} do not fit num_classes={num_classes}"
                + (" (with reduce_zero_label, values 1..num_classes are classes)" if reduce_zero_label else "")
            )
            continue
        good.append((img_path, lbl_path))
    return good, problems


def reduce_zero(label: np.ndarray) -> np.ndarray:
    """ADE20K convention: 0 (other) -> 255 (ignore), v -> v - 1."""
    out = label.astype(np.int64) - 1
    out[label == 0] = 255
    out[label == 255] = 255
    return out.astype(np.uint8)


def _photometric(img: Image.Image, rng: random.Random) -> Image.Image:
    """MMSeg-style photometric distortion: brightness, contrast, saturation, hue, each with probability 0.5."""
    if rng.random() < 0.5:
        arr = np.asarray(img, np.float32) + rng.uniform(-32, 32)
        img = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    if rng.random() < 0.5:
        img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.5, 1.5))
    if rng.random() < 0.5:
        img = ImageEnhance.Color(img).enhance(rng.uniform(0.5, 1.5))
    if rng.random() < 0.5:
        hsv = np.asarray(img.convert("HSV")).copy()
        hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(rng.uniform(-18, 18) * 256 / 180)) % 256
        img = Image.fromarray(hsv, "HSV").convert("RGB")
    return img


def _fit_scale(w: int, h: int, scale: tuple[int, ...]) -> float:
    long_side, short_side = max(scale), min(scale)
    return min(long_side / max(w, h), short_side / min(w, h))


def to_tensor(img: Image.Image) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(img, np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((x - mean) / std).contiguous()


class ADESegmentation(SkipsUnreadable, torch.utils.data.Dataset):
    """ADE20K-format pairs. Training: random rescale, crop (with ``cat_max_ratio``), flip, photometric distortion,
    pad to the crop size with the ignore index. Evaluation: the whole image at its original size (the model pads
    and crops internally), label untouched apart from ``reduce_zero_label``."""

    def __init__(
        self, root: str | Path, split: str, cfg: SegmentConfig, train: bool = False, max_pixels: int | None = None
    ) -> None:
        pairs, problems = find_ade_pairs(root, split)
        self.pairs, label_problems = check_ade(
            pairs, cfg.num_classes, cfg.reduce_zero_label, cfg.ignore_index, max_pixels
        )
        self.problems = problems + label_problems
        if label_problems and any("num_classes" in p for p in label_problems):
            # A class count that does not fit the data is a configuration mistake, not a bad file: stop here.
            raise ValueError(
                f"{len(label_problems)} label file(s) do not fit the configuration: "
                + "; ".join(p for p in label_problems if "num_classes" in p)
            )
        if self.problems:
            warnings.warn(
                f"{len(self.problems)} problem(s) in {root} ({split}), left out: " + "; ".join(self.problems),
                SkippedImageWarning,
                stacklevel=2,
            )
        if not self.pairs:
            raise ValueError(f"no usable image/label pairs in {root} ({split}): {len(self.problems)} problems")
        self.cfg, self.train, self.max_pixels = cfg, train, max_pixels
        self.skipped = 0
        names_file = Path(root) / "classes.json"
        self.class_names = json.loads(names_file.read_text()) if names_file.is_file() else None

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[Image.Image, np.ndarray]:
        img_path, lbl_path = self.pairs[index]
        img = read_rgb(img_path, max_pixels=self.max_pixels)
        label = read_label(lbl_path)
        if label.shape != (img.height, img.width):
            raise ValueError(f"label {lbl_path} is {label.shape[::-1]}, image is {img.size}; they must match")
        if self.cfg.reduce_zero_label:
            label = reduce_zero(label)
        return img, label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        img, label = self.first_readable(self.load, index, len(self))
        if self.train:
            img, label = self._augment(img, label, random.Random(torch.randint(0, 2**31, ()).item()))
        return to_tensor(img), torch.from_numpy(label.astype(np.int64))

    def _augment(self, img: Image.Image, label: np.ndarray, rng: random.Random) -> tuple[Image.Image, np.ndarray]:
        cfg = self.cfg
        ratio = rng.uniform(*cfg.ratio_range)
        s = _fit_scale(img.width, img.height, tuple(int(v * ratio) for v in cfg.scale))
        size = (max(1, round(img.width * s)), max(1, round(img.height * s)))
        img = img.resize(size, Image.BILINEAR)
        label = np.asarray(Image.fromarray(label).resize(size, Image.NEAREST))
        crop = cfg.crop_size
        ch, cw = min(crop, label.shape[0]), min(crop, label.shape[1])
        for _ in range(10):
            y0 = rng.randint(0, label.shape[0] - ch)
            x0 = rng.randint(0, label.shape[1] - cw)
            window = label[y0 : y0 + ch, x0 : x0 + cw]
            counts = np.bincount(window[window != cfg.ignore_index].ravel())
            if len(counts) > 1 and counts.max() / counts.sum() < cfg.cat_max_ratio:
                break
        img = img.crop((x0, y0, x0 + cw, y0 + ch))
        label = label[y0 : y0 + ch, x0 : x0 + cw]
        if rng.random() < cfg.hflip:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
            label = label[:, ::-1]
        if cfg.photometric:
            img = _photometric(img, rng)
        if ch < crop or cw < crop:  # pad to a fixed size so crops batch; padding is ignored by the loss
            canvas = Image.new("RGB", (crop, crop), tuple(int(255 * m) for m in IMAGENET_MEAN))
            canvas.paste(img, (0, 0))
            padded = np.full((crop, crop), cfg.ignore_index, np.uint8)
            padded[:ch, :cw] = label
            img, label = canvas, padded
        return img, np.ascontiguousarray(label)


# -- model -------------------------------------------------------------------------------------------------------
class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SemanticFPNHead(nn.Module):
    """Panoptic-FPN style semantic head: each level goes through (conv, 2x upsample) steps down to stride 4, the
    levels are summed, then dropout and a 1x1 classifier. Upsampling uses explicit target sizes, so odd map sizes
    from non-multiple-of-32 inputs line up."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, strides: list[int], dropout: float) -> None:
        super().__init__()
        self.strides = strides
        base = min(strides)
        self.scale_heads = nn.ModuleList()
        for s in strides:
            steps = max(1, int(math.log2(s // base)))
            self.scale_heads.append(
                nn.ModuleList([ConvBNReLU(in_channels if k == 0 else channels, channels) for k in range(steps)])
            )
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        target = feats[0].shape[-2:]
        out = None
        for x, s, convs in zip(feats, self.strides, self.scale_heads, strict=True):
            for k, conv in enumerate(convs):
                x = conv(x)
                if s > self.strides[0]:
                    # Upsample after each conv, the last step straight to the finest map's exact size.
                    size = target if k == len(convs) - 1 else (x.shape[-2] * 2, x.shape[-1] * 2)
                    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            out = x if out is None else out + x
        return self.classifier(self.dropout(out))


class SemanticFPN(nn.Module):
    """EfficientFormer backbone -> FPN (4 levels) -> semantic head; logits are returned at the input size."""

    def __init__(self, cfg: SegmentConfig) -> None:
        super().__init__()
        if cfg.num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {cfg.num_classes}")
        self.backbone = cfg.build_backbone(cfg.crop_size)
        self.neck = FPN(self.backbone.channels, cfg.fpn_channels, extra_pool=False)
        self.head = SemanticFPNHead(
            cfg.fpn_channels, cfg.head_channels, cfg.num_classes, self.backbone.strides, cfg.dropout
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = list(self.neck(self.backbone(x)).values())
        logits = self.head(feats)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


# -- evaluation --------------------------------------------------------------------------------------------------
class SegMetric:
    """Confusion-matrix accumulator: per-class IoU, mIoU (classes present in prediction or label), pixel accuracy."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        valid = label != self.ignore_index
        p, t = pred[valid].flatten().cpu().long(), label[valid].flatten().cpu().long()
        if t.numel() and (t.max() >= self.num_classes or t.min() < 0):
            raise ValueError(
                f"label value {int(t.max())} is outside 0..{self.num_classes - 1}; set num_classes (and "
                "reduce_zero_label) to match the data set"
            )
        self.confusion += torch.bincount(t * self.num_classes + p, minlength=self.num_classes**2).view(
            self.num_classes, self.num_classes
        )

    def compute(self) -> dict:
        cm = self.confusion.double()
        tp = cm.diag()
        union = cm.sum(0) + cm.sum(1) - tp
        gt = cm.sum(1)
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
        acc = torch.where(gt > 0, tp / gt.clamp(min=1), torch.full_like(tp, float("nan")))
        total = cm.sum()
        return {
            "mIoU": float(iou.nanmean()) if (union > 0).any() else 0.0,
            "mAcc": float(acc.nanmean()) if (gt > 0).any() else 0.0,
            "aAcc": float(tp.sum() / total) if total > 0 else 0.0,
            "IoU": [None if math.isnan(v) else round(float(v), 6) for v in iou.tolist()],
        }


@torch.no_grad()
def predict_logits(model: nn.Module, img: Image.Image, cfg: SegmentConfig, device: torch.device) -> torch.Tensor:
    """Whole-image inference: keep-ratio resize to the test scale, forward, logits resized back to the image."""
    s = _fit_scale(img.width, img.height, cfg.scale)
    size = (max(32, round(img.width * s)), max(32, round(img.height * s)))
    x = to_tensor(img.resize(size, Image.BILINEAR)).unsqueeze(0).to(device)
    logits = model(x)
    return F.interpolate(logits, size=(img.height, img.width), mode="bilinear", align_corners=False)[0]


@torch.no_grad()
def segmentation_metrics(
    model: nn.Module,
    dataset: ADESegmentation,
    cfg: SegmentConfig,
    device: torch.device,
    *,
    rank: int = 0,
    world_size: int = 1,
) -> dict:
    """mIoU, mAcc and pixel accuracy on ``dataset``. With ``world_size > 1`` (an initialised process group) each
    rank scores a share of the images and the confusion matrices are summed, so every rank returns the same."""
    model.eval()
    metric = SegMetric(cfg.num_classes, cfg.ignore_index)
    for i in shard(list(range(len(dataset))), rank, world_size):
        img, label = dataset.load(i)
        pred = predict_logits(model, img, cfg, device).argmax(0)
        metric.update(pred, torch.from_numpy(label.astype(np.int64)))
    # Integer counts: the sum over ranks is exact, whatever the split.
    all_reduce_sum(metric.confusion)
    return metric.compute()


def palette(num_classes: int) -> np.ndarray:
    """A fixed, well-spread colour per class (deterministic)."""
    rng = np.random.default_rng(12345)
    colours = rng.integers(40, 256, (max(num_classes, 1), 3))
    base = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180]])
    colours[: min(len(base), num_classes)] = base[: min(len(base), num_classes)]
    return colours.astype(np.uint8)


def overlay(img: Image.Image, pred: np.ndarray, num_classes: int, alpha: float = 0.5) -> Image.Image:
    colours = palette(num_classes)[pred]
    blend = (1 - alpha) * np.asarray(img.convert("RGB"), np.float32) + alpha * colours.astype(np.float32)
    return Image.fromarray(blend.clip(0, 255).astype(np.uint8))


def __getattr__(name: str) -> Any:
    # evaluate was defined for each task (classification, detection, segmentation); each now names its task
    if name == "evaluate":
        warnings.warn(
            "efficientformer.dense.segmentation.evaluate is deprecated; "
            "use efficientformer.dense.segmentation.segmentation_metrics",
            DeprecationWarning,
            stacklevel=2,
        )
        return segmentation_metrics
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
