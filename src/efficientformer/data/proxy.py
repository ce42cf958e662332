"""A harder bundled task for telling architectures apart: digits on photos (MNIST-M style), with more variation.

Each image is one of scikit-learn's 1797 real 8x8 digit scans, scaled (60-90% of the image side), rotated
(+-15 degrees) and placed at a random position, then blended onto a random crop (up to twice the image side) of
one of the 16 photos that ship inside scikit-image (astronaut, cat, coffee, rocket, Hubble deep field, IHC stain,
colour wheel, camera, coins, moon, brick, grass, gravel, text, page, clock), with random flips and channel
order. Two blends:
MNIST-M's absolute difference ``|photo - digit|``, or the digit alpha-composited (alpha 0.6-1) in a colour
drawn around the complement of the photo under it. Gaussian noise (sigma 0-10 grey levels) on top.

Splits are by source scan (stratified per class, fixed seed), so no digit drawn by the same hand-scan appears in
two splits: ``train/`` (70% of scans, ``train_renders`` renderings each), ``search/`` (15%, held out from
training: the architecture search scores subnets here) and ``val/`` (15%: final comparisons). Written once as an
ImageNet-style folder (``train/<class>/*.png``) that every command reads like ImageNet.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..utils.optional import require
from .cache import digit_scans, written_once
from .digits import CLASS_NAMES

SPLIT_SEED = 0
RENDER_SEED = 1
FRACTIONS = {"train": 0.70, "search": 0.15, "val": 0.15}
PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "colorwheel",
    "camera",
    "coins",
    "moon",
    "brick",
    "grass",
    "gravel",
    "text",
    "page",
    "clock",
)
VERSION = 3  # 3: larger, less rotated, more opaque digits in a contrasting colour, smoother crops, less noise


def _photos() -> list[np.ndarray]:
    data = require("skimage.data")
    out = []
    for name in PHOTOS:
        img = np.asarray(getattr(data, name)())
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        out.append(img[..., :3].astype(np.uint8))
    return out


def render(
    digit: np.ndarray, photos: list[np.ndarray], rng: np.random.Generator, size: int
) -> np.ndarray:  # (size, size, 3) uint8
    """One proxy image of an 8x8 digit scan (values 0..16)."""
    # the digit: scaled, rotated, placed
    side = int(round(size * rng.uniform(0.6, 0.9)))
    glyph = Image.fromarray((digit * (255.0 / 16.0)).clip(0, 255).astype(np.uint8), mode="L")
    glyph = glyph.resize((side, side), Image.BICUBIC).rotate(rng.uniform(-15, 15), Image.BILINEAR, expand=True)
    canvas = Image.new("L", (size, size))
    gw, gh = glyph.size
    x0 = int(rng.integers(min(0, size - gw), max(1, size - gw + 1)))
    y0 = int(rng.integers(min(0, size - gh), max(1, size - gh + 1)))
    canvas.paste(glyph, (x0, y0))
    mask = np.asarray(canvas, dtype=np.float32)[..., None] / 255.0
    # the background: a random crop of a random photo
    photo = photos[int(rng.integers(len(photos)))]
    h, w = photo.shape[:2]
    crop = int(rng.integers(min(size, h, w) // 2, min(2 * size, h, w) + 1))
    top, left = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
    bg = Image.fromarray(photo[top : top + crop, left : left + crop]).resize((size, size), Image.BILINEAR)
    bg = np.asarray(bg, dtype=np.float32)
    if rng.random() < 0.5:
        bg = bg[:, ::-1]
    if rng.random() < 0.5:
        bg = bg[::-1]
    bg = bg[..., rng.permutation(3)]
    if rng.random() < 0.5:  # MNIST-M: absolute difference
        out = np.abs(bg - mask * 255.0)
    else:  # a coloured digit over the photo
        # a colour away from the photo under the digit, so the digit stays visible (but varies)
        under = (bg * mask).sum(axis=(0, 1)) / max(float(mask.sum()), 1.0)
        colour = np.clip(255.0 - under + rng.normal(0, 40, size=3), 0, 255).astype(np.float32)
        alpha = mask * rng.uniform(0.6, 1.0)
        out = bg * (1 - alpha) + colour * alpha
    out = out + rng.normal(0, rng.uniform(0, 10), size=out.shape)
    return out.clip(0, 255).astype(np.uint8)


def prepare_proxy(
    cache_dir: str | Path | None = None, size: int = 64, train_renders: int = 4, eval_renders: int = 2
) -> Path:
    """Write the proxy folder (once) and return its root, which holds ``train/``, ``search/`` and ``val/``."""
    name = f"proxy-v{VERSION}-{size}px-r{train_renders}x{eval_renders}"
    return written_once(name, cache_dir, lambda folder: _write_proxy(folder, size, train_renders, eval_renders))


def _write_proxy(folder: Path, size: int, train_renders: int, eval_renders: int) -> dict[str, object]:
    photos = _photos()
    images, labels = digit_scans()
    split_rng = np.random.default_rng(SPLIT_SEED)
    render_rng = np.random.default_rng(RENDER_SEED)
    counts = {s: 0 for s in FRACTIONS}
    for cls in range(10):
        idx = np.flatnonzero(labels == cls)
        split_rng.shuffle(idx)
        n_search = round(len(idx) * FRACTIONS["search"])
        n_val = round(len(idx) * FRACTIONS["val"])
        parts = {"val": idx[:n_val], "search": idx[n_val : n_val + n_search], "train": idx[n_val + n_search :]}
        for split, part in parts.items():
            out = folder / split / CLASS_NAMES[cls]
            out.mkdir(parents=True, exist_ok=True)
            renders = train_renders if split == "train" else eval_renders
            for i in part:
                for r in range(renders):
                    Image.fromarray(render(images[i], photos, render_rng, size)).save(out / f"{int(i):04d}_{r}.png")
                    counts[split] += 1
    return {
        "source": "sklearn digits on scikit-image photos",
        "size": size,
        "version": VERSION,
        "images": counts,
        "photos": list(PHOTOS),
    }
