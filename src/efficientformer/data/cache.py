"""Datasets the toolkit writes itself from data bundled in its dependencies (the default digits, the proxy task):
where they live, and how each is written once, atomically."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def default_cache_dir() -> Path:
    """``$EFFICIENTFORMER_CACHE``, else ``$XDG_CACHE_HOME/efficientformer`` (``~/.cache/efficientformer``)."""
    base = os.environ.get("EFFICIENTFORMER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "efficientformer"
    )
    return Path(base)


def written_once(name: str, cache_dir: str | Path | None, write: Callable[[Path], dict[str, Any]]) -> Path:
    """Return the folder ``cache_dir/name``, calling ``write(folder)`` first unless a complete copy exists.

    ``write`` fills an empty folder and returns the facts to record in its ``DONE`` marker. It writes into a
    temporary sibling that is renamed into place only when complete, so an interrupted first run never leaves half a
    dataset behind, and a later run starts over.
    """
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    target = root / name
    if (target / "DONE").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        info = write(tmp)
        (tmp / "DONE").write_text(json.dumps(info))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def digit_scans() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 real 8x8 greyscale digit scans (values 0..16) and their labels 0-9."""
    # Imported here, not at the top: scikit-learn takes about a second to import, and only these writers need it.
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError(
            "the bundled datasets need scikit-learn: pip install scikit-learn (or pass --data DIR)"
        ) from None

    digits = load_digits()
    return digits.images, digits.target
