"""The bundled default dataset: scikit-learn's handwritten digits written once as an ImageNet-style folder.

1797 real 8x8 greyscale scans of the digits 0-9 ship inside the scikit-learn wheel, so training runs with no
download. They are upscaled (bicubic) to RGB PNGs and split into ``train/`` and ``val/`` with a fixed seed,
stratified per class (20% held out).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

CLASS_NAMES = [str(i) for i in range(10)]
VAL_FRACTION = 0.2
SPLIT_SEED = 0


def default_cache_dir() -> Path:
    base = os.environ.get("EFFICIENTFORMER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "efficientformer"
    )
    return Path(base)


def prepare_digits(cache_dir: str | Path | None = None, size: int = 64) -> Path:
    """Write the digits folder (once) and return its root, which holds ``train/`` and ``val/``."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    target = root / f"digits-{size}px"
    if (target / "DONE").is_file():
        return target
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError(
            "the bundled digits dataset needs scikit-learn: pip install scikit-learn (or pass --data DIR)"
        ) from None
    from PIL import Image

    digits = load_digits()
    images, labels = digits.images, digits.target  # (1797, 8, 8) values 0..16
    rng = np.random.default_rng(SPLIT_SEED)
    root.mkdir(parents=True, exist_ok=True)
    # Build in a temporary folder and rename, so an interrupted first run never leaves half a dataset behind.
    tmp = Path(tempfile.mkdtemp(prefix=".digits-", dir=root))
    try:
        for cls in range(10):
            idx = np.flatnonzero(labels == cls)
            rng.shuffle(idx)
            n_val = round(len(idx) * VAL_FRACTION)
            for split, part in (("val", idx[:n_val]), ("train", idx[n_val:])):
                folder = tmp / split / CLASS_NAMES[cls]
                folder.mkdir(parents=True, exist_ok=True)
                for i in part:
                    pixels = (images[i] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
                    img = Image.fromarray(pixels, mode="L").resize((size, size), Image.BICUBIC).convert("RGB")
                    img.save(folder / f"{int(i):04d}.png")
        (tmp / "DONE").write_text(json.dumps({"source": "sklearn.datasets.load_digits", "size": size}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
