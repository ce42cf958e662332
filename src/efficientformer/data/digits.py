"""The bundled default dataset: scikit-learn's handwritten digits written once as an ImageNet-style folder.

1797 real 8x8 greyscale scans of the digits 0-9 ship inside the scikit-learn wheel, so training runs with no
download. They are upscaled (bicubic) to RGB PNGs and split into ``train/`` and ``val/`` with a fixed seed,
stratified per class (20% held out).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .cache import default_cache_dir, digit_scans, written_once

__all__ = ["CLASS_NAMES", "default_cache_dir", "prepare_digits"]

CLASS_NAMES = [str(i) for i in range(10)]
VAL_FRACTION = 0.2
SPLIT_SEED = 0


def prepare_digits(cache_dir: str | Path | None = None, size: int = 64) -> Path:
    """Write the digits folder (once) and return its root, which holds ``train/`` and ``val/``."""
    return written_once(f"digits-{size}px", cache_dir, lambda folder: _write_digits(folder, size))


def _write_digits(folder: Path, size: int) -> dict[str, object]:
    images, labels = digit_scans()  # (1797, 8, 8) values 0..16
    rng = np.random.default_rng(SPLIT_SEED)
    for cls in range(10):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        n_val = round(len(idx) * VAL_FRACTION)
        for split, part in (("val", idx[:n_val]), ("train", idx[n_val:])):
            out = folder / split / CLASS_NAMES[cls]
            out.mkdir(parents=True, exist_ok=True)
            for i in part:
                pixels = (images[i] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
                img = Image.fromarray(pixels, mode="L").resize((size, size), Image.BICUBIC).convert("RGB")
                img.save(out / f"{int(i):04d}.png")
    return {"source": "sklearn.datasets.load_digits", "size": size}
