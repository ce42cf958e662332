"""Small COCO-format and ADE20K-format data sets: textured shapes with exact masks pasted on real photos.

There is no COCO or ADE20K on this machine, so the learning tests and the examples train on these. Backgrounds
are crops of scikit-image's bundled photos (astronaut, coffee, chelsea, rocket, ...) when scikit-image is
installed, and procedural textures otherwise. Objects never overlap, and every pasted mask is exactly the mask
that the annotation decodes to (polygons are rasterised with pycocotools itself when it is installed), so a
perfect model can reach AP 1.0 and mIoU 1.0.

Layouts written:

* COCO: ``images/{train,val}/*.png`` and ``annotations/instances_{train,val}.json`` (polygons for squares and
  triangles, RLE for discs, ``iscrowd`` 0).
* ADE20K: ``images/{training,validation}/*.png`` and ``annotations/{training,validation}/*.png`` label maps in
  the ADE20K convention: 0 = "other" (unlabelled; here a thin band around each object), 1 = background,
  2.. = one value per shape class. Loading with ``reduce_zero_label`` turns 0 into the ignore index 255 and
  shifts the rest down by one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..data.images import image_from_array

SHAPES = ("disc", "square", "triangle")
#: Base colour per shape class (jittered per instance), so the classes differ in colour as well as shape.
SHAPE_COLORS = {"disc": (220, 40, 40), "square": (40, 200, 60), "triangle": (40, 80, 230)}
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "immunohistochemistry", "horse")


def background_photos() -> list[np.ndarray]:
    """RGB uint8 photos from scikit-image, or procedural textures when scikit-image is not installed."""
    try:
        from skimage import data as skdata
    except ImportError:
        return [_procedural_texture(np.random.default_rng(s), 256, 256) for s in range(6)]
    photos = []
    for name in SKIMAGE_PHOTOS:
        try:
            img = np.asarray(getattr(skdata, name)())
        except Exception:  # a photo missing from this scikit-image build: use the others
            continue
        photos.append(np.asarray(image_from_array(img)))  # the one reader's conversions (bool, grey, alpha)
    return photos or [_procedural_texture(np.random.default_rng(s), 256, 256) for s in range(6)]


def _procedural_texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        for _ in range(3):
            fx, fy, ph = rng.uniform(0.01, 0.08), rng.uniform(0.01, 0.08), rng.uniform(0, 2 * np.pi)
            out[..., c] += np.sin(fx * xx + fy * yy + ph)
    out = (out - out.min()) / (np.ptp(out) + 1e-6) * 200 + 25
    return out.astype(np.uint8)


def _background(rng: np.random.Generator, photos: list[np.ndarray], h: int, w: int) -> np.ndarray:
    photo = photos[int(rng.integers(len(photos)))]
    ph, pw = photo.shape[:2]
    scale = max(h / ph, w / pw) * rng.uniform(1.0, 2.0)
    img = Image.fromarray(photo).resize((max(w, round(pw * scale)), max(h, round(ph * scale))), Image.BILINEAR)
    y0 = int(rng.integers(0, img.height - h + 1))
    x0 = int(rng.integers(0, img.width - w + 1))
    crop = img.crop((x0, y0, x0 + w, y0 + h))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(crop, dtype=np.uint8).copy()


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[float]:
    n = 4 if kind == "square" else 3
    pts = []
    for k in range(n):
        a = angle + 2 * math.pi * k / n
        pts += [cx + r * math.cos(a), cy + r * math.sin(a)]
    return pts


def polygon_mask(poly: list[float], h: int, w: int) -> np.ndarray:
    """Rasterise a COCO polygon the way the loader will decode it (pycocotools if present, else PIL)."""
    try:
        from pycocotools import mask as mask_utils

        return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([poly], h, w))).astype(bool)
    except ImportError:
        img = Image.new("L", (w, h), 0)
        ImageDraw.Draw(img).polygon(poly, fill=1)
        return np.asarray(img, dtype=bool)


def _disc_mask(cx: float, cy: float, r: float, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r


def rle_encode(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE (column-major run lengths, starting with a run of zeros)."""
    flat = np.asfortranarray(mask.astype(np.uint8)).reshape(-1, order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0] == 1:
        runs = [0] + runs
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(r) for r in runs]}


def _texture_fill(rng: np.random.Generator, base: tuple[int, int, int], h: int, w: int) -> np.ndarray:
    """A class colour with per-instance jitter, stripes and noise: objects are textured, not flat."""
    colour = np.clip(np.array(base) + rng.integers(-35, 36, 3), 0, 255).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0, np.pi)
    stripes = np.sin((xx * math.cos(a) + yy * math.sin(a)) * rng.uniform(0.3, 0.8))[..., None]
    tex = colour * (0.8 + 0.2 * stripes) + rng.normal(0, 10, (h, w, 3))
    return np.clip(tex, 0, 255)


def render_scene(
    rng: np.random.Generator, photos: list[np.ndarray], h: int, w: int, max_objects: int = 4
) -> tuple[np.ndarray, list[dict]]:
    """One image and its objects: each ``{"class": i, "kind": ..., "mask": bool array, "segmentation": ...}``."""
    img = _background(rng, photos, h, w).astype(np.float32)
    occupied = np.zeros((h, w), bool)
    objects: list[dict] = []
    want = int(rng.integers(1, max_objects + 1))
    short = min(h, w)
    for _ in range(want * 10):
        if len(objects) >= want:
            break
        cls = int(rng.integers(len(SHAPES)))
        kind = SHAPES[cls]
        r = rng.uniform(0.09, 0.22) * short
        cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
        if kind == "disc":
            mask = _disc_mask(cx, cy, r, h, w)
            seg = rle_encode(mask)
        else:
            poly = _polygon(kind, cx, cy, r, rng.uniform(0, 2 * math.pi))
            mask = polygon_mask(poly, h, w)
            seg = [poly]
        if mask.sum() < 16:
            continue
        grown = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(5))) > 0
        if (grown & occupied).any():
            continue
        occupied |= grown
        tex = _texture_fill(rng, SHAPE_COLORS[kind], h, w)
        img[mask] = tex[mask]
        objects.append({"class": cls, "kind": kind, "mask": mask, "segmentation": seg})
    return img.clip(0, 255).astype(np.uint8), objects


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


def _sizes(rng: np.random.Generator, size: int | tuple[int, int], vary: bool) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else size
    if vary:  # non-square, not multiples of 32: exercises padding and keep-ratio resizing
        h = int(h * rng.uniform(0.75, 1.0))
        w = int(w * rng.uniform(0.85, 1.25))
    return h, w


def make_coco(
    root: str | Path, *, train: int = 64, val: int = 16, size: int | tuple[int, int] = 128, seed: int = 0
) -> Path:
    """Write a COCO-format instance-segmentation set (3 classes) under ``root``; returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    photos = background_photos()
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(SHAPES)]
    for split, count in (("train", train), ("val", val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            h, w = _sizes(rng, size, vary=True)
            img, objects = render_scene(rng, photos, h, w)
            file_name = f"{split}_{i:05d}.png"
            Image.fromarray(img).save(root / "images" / split / file_name)
            images.append({"id": i + 1, "file_name": file_name, "height": h, "width": w})
            for obj in objects:
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i + 1,
                        "category_id": obj["class"] + 1,
                        "segmentation": obj["segmentation"],
                        "area": float(obj["mask"].sum()),
                        "bbox": _bbox(obj["mask"]),
                        "iscrowd": 0,
                    }
                )
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        doc = {"images": images, "annotations": annotations, "categories": categories}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
    return root


def make_ade(
    root: str | Path, *, train: int = 64, val: int = 16, size: int | tuple[int, int] = 128, seed: int = 0
) -> Path:
    """Write an ADE20K-format semantic-segmentation set (background + 3 shape classes) under ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    photos = background_photos()
    for split, count in (("training", train), ("validation", val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            h, w = _sizes(rng, size, vary=True)
            img, objects = render_scene(rng, photos, h, w)
            label = np.ones((h, w), np.uint8)  # 1 = background
            for obj in objects:
                m8 = obj["mask"].astype(np.uint8) * 255
                grown = np.asarray(Image.fromarray(m8).filter(ImageFilter.MaxFilter(3))) > 0
                label[grown & ~obj["mask"]] = 0  # "other": a one-pixel unlabelled band, ignored after reduction
                label[obj["mask"]] = obj["class"] + 2
            name = f"ADE_{split}_{i:08d}"
            Image.fromarray(img).save(root / "images" / split / f"{name}.png")
            Image.fromarray(label).save(root / "annotations" / split / f"{name}.png")
    (root / "classes.json").write_text(json.dumps(["background", *SHAPES]))
    return root
