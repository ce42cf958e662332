"""THE image reader: whatever the user hands us becomes an 8-bit RGB PIL image, or a one-line error naming it.

Every path that decodes pixels goes through here: training and evaluation folders (``data.folder``), ``predict``
and ``inference_model``, ``quantize`` calibration, and the detection / segmentation data sets and their ``predict``
(:func:`read_rgb`). So the same file gives the same pixels everywhere.

Accepted: a path (any format Pillow decodes), a PIL image, a NumPy array (HW or HWC with 1, 3 or 4 channels;
uint8, uint16, bool, or float in [0, 1]) and a tensor (CHW, same dtypes; float in [0, 1] like ``ToTensor`` output).

Conversions, decided once here so that every entry point agrees:

* EXIF orientation is applied (a phone photo taken in portrait is classified upright).
* Greyscale (``1``, ``L``), palette (``P``), ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` go through Pillow's ``convert``.
  CMYK uses Pillow's plain formula; an embedded ICC profile is not applied.
* Transparency (``RGBA``, ``LA``, ``PA``, palette images with a transparent colour) is **composited on white**, the
  way a viewer shows the image on a white page. Dropping alpha instead would surface whatever colour happens to sit
  under fully transparent pixels (often black), which the image's author never meant to be seen.
* 16-bit and 32-bit integer images (``I;16``, ``I;16B``, ``I``) are rescaled from 0..65535 to 0..255 (Pillow's own
  ``convert("L")`` clips instead, turning most 16-bit photos white). Float images (``F``) are taken as 0..1 when
  their maximum is at most 1, else as 0..255.
* Decompression bombs: an image whose header announces more than ``max_pixels`` pixels is refused before its pixel
  data is decoded (default: Pillow's ``Image.MAX_IMAGE_PIXELS``, about 89.5 MP). A larger ``max_pixels`` really
  raises the limit (Pillow's own check is lifted for that one call).
* Absurd aspect ratios (long side over ``max_aspect`` times the short side, default 100): refused, because the
  short-side resize of evaluation would blow a 1x300000 strip of a few hundred bytes up to gigabytes.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image, ImageOps

T = TypeVar("T")

#: THE list of extensions picked up when a folder is scanned, for every data set and command (files named
#: explicitly on the command line are tried whatever their extension).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".jfif"}
)

#: Longest side over shortest side above which an image is refused (see the module docstring).
MAX_ASPECT = 100.0

#: Pillow's default bomb threshold, captured at import so a library that raises the global does not silently
#: disable our guard.
DEFAULT_MAX_PIXELS: int = int(Image.MAX_IMAGE_PIXELS or 89_478_485)

WHITE = (255, 255, 255)


class SkippedImageWarning(UserWarning):
    """An image (or a folder of them, or an annotation) left out of a data set; the message names it and says why."""


class ImageLoadError(ValueError):
    """An input that is not a usable image. ``str(err)`` is one line naming the input and the problem."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")


class SkipsUnreadable:
    """For data sets that train on: an unreadable sample is skipped (named once in a :class:`SkippedImageWarning`,
    counted in ``skipped``) and the next one is used; outside training the error propagates."""

    train: bool = False
    skipped: int = 0

    def first_readable(self, load: Callable[[int], T], index: int, count: int) -> T:
        warned: set[str] = self.__dict__.setdefault("_warned", set())
        for attempt in range(count):
            i = (index + attempt) % count
            try:
                return load(i)
            except ImageLoadError as err:
                if not self.train:
                    raise
                self.skipped += 1
                if err.source not in warned:
                    warned.add(err.source)
                    warnings.warn(f"skipped {err} (the next image is used)", SkippedImageWarning, stacklevel=3)
        raise ValueError(f"none of the {count} images of this data set can be read")


def describe(obj: Any, index: int | None = None) -> str:
    """How an input is named in error messages: the path for files, the type and position otherwise."""
    if isinstance(obj, (str, os.PathLike)):
        return str(obj)
    where = f"input #{index} " if index is not None else "input "
    return f"{where}({type(obj).__module__}.{type(obj).__name__})"


# -- files -------------------------------------------------------------------------------------------------------
#: Pillow's bomb limit is a module global; lifting it for one call must not race another thread's call.
_PILLOW_LIMIT_LOCK = threading.Lock()


def read_rgb(
    path: str | os.PathLike, *, max_pixels: int | None = None, max_aspect: float | None = MAX_ASPECT
) -> Image.Image:
    """Decode ``path`` into an 8-bit RGB image with EXIF orientation applied.

    Raises :class:`ImageLoadError` (a ``ValueError``) for a missing, empty, truncated, corrupt or non-image file,
    for images over ``max_pixels`` pixels (default :data:`DEFAULT_MAX_PIXELS`) and for aspect ratios over
    ``max_aspect`` (``None``: no limit).
    """
    with _opened_checked(path, max_pixels, max_aspect) as img:
        img.load()  # decode now, inside the checked block: truncated data fails here, not later
        return to_rgb(img)


def probe_image(
    path: str | os.PathLike, *, max_pixels: int | None = None, max_aspect: float | None = MAX_ASPECT
) -> tuple[int, int]:
    """Cheap up-front check of an image file without decoding its pixels: it exists, is an image Pillow can
    identify, passes the size and aspect limits, and its structure checks out (``Image.verify``: for PNG the CRC
    of every chunk, so a truncated PNG is caught). Returns ``(width, height)`` as stored (before EXIF rotation);
    raises :class:`ImageLoadError` for the same files :func:`read_rgb` refuses."""
    with _opened_checked(path, max_pixels, max_aspect) as img:
        size = img.size
        img.verify()
        return size


@contextlib.contextmanager
def _opened_checked(path: str | os.PathLike, max_pixels: int | None, max_aspect: float | None) -> Iterator[Image.Image]:
    """The one open-and-check of an image file, shared by :func:`read_rgb` and :func:`probe_image`: the file
    exists and is not empty, its header passes the pixel and aspect limits, and any failure of Pillow inside the
    ``with`` block (decoding, verifying) becomes an :class:`ImageLoadError` naming the file."""
    name = str(path)
    p = Path(path)
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    if limit < 1:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    if not p.exists():
        raise ImageLoadError(name, "no such file")
    if p.is_dir():
        raise ImageLoadError(name, "is a folder, not an image file")
    if not p.is_file():
        raise ImageLoadError(name, "is not a regular file")
    try:
        size = p.stat().st_size
    except OSError as err:
        raise ImageLoadError(name, f"cannot read file ({err.strerror or err})") from None
    if size == 0:
        raise ImageLoadError(name, "empty file (0 bytes)")
    try:
        # Pillow's own bomb check warns at MAX_IMAGE_PIXELS and raises at twice that; we enforce our limit on the
        # header size ourselves, and turn Pillow's warning into an error so nothing slips through.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with _open_with_limit(p, limit) as img:
                _check_pixels(name, img.size, limit)
                _check_aspect(name, img.size, max_aspect)
                yield img
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageLoadError(name, f"refused as a possible decompression bomb ({_first_line(err)})") from None
    except Image.UnidentifiedImageError:
        raise ImageLoadError(name, "not an image file, or an image format Pillow cannot decode") from None
    except OSError as err:
        raise ImageLoadError(name, f"corrupt or truncated image ({_first_line(err)})") from None
    except Exception as err:  # noqa: BLE001 - decoders raise many types (SyntaxError, struct.error, ...) on bad data
        raise ImageLoadError(name, f"corrupt image ({type(err).__name__}: {_first_line(err)})") from None


#: The earlier name of :func:`read_rgb`.
load_image = read_rgb


def _open_with_limit(p: Path, limit: int) -> Image.Image:
    """``Image.open`` with Pillow's own bomb check set to ``limit`` (it refuses at twice its global on its own)."""
    if limit <= DEFAULT_MAX_PIXELS:
        return Image.open(p)
    with _PILLOW_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = limit  # our own check on the header size (_check_pixels) enforces the same number
        try:
            return Image.open(p)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _check_aspect(name: str, size: tuple[int, int], max_aspect: float | None) -> None:
    w, h = size
    if max_aspect is None or min(w, h) == 0:
        return
    if max(w, h) / min(w, h) > max_aspect:
        raise ImageLoadError(
            name,
            f"{w}x{h} has an aspect ratio over {max_aspect:g}:1; resizing its short side would take unbounded "
            "memory and time, so it is refused (crop it into normal images)",
        )


def _check_pixels(name: str, size: tuple[int, int], limit: int) -> None:
    w, h = size
    if w * h > limit:
        raise ImageLoadError(
            name,
            f"{w}x{h} = {w * h:,} pixels is over the limit of {limit:,} (a possible decompression bomb); "
            "if you trust the file, raise the limit (max_pixels= / --max-pixels)",
        )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# -- mode conversion ---------------------------------------------------------------------------------------------
def to_rgb(img: Image.Image) -> Image.Image:
    """EXIF orientation, then any Pillow mode to 8-bit RGB (see the module docstring for the rules)."""
    img = _apply_exif_orientation(img)
    mode = img.mode
    if mode == "RGB":
        return img.copy() if img.readonly else img
    if (mode == "P" and "transparency" in img.info) or mode == "PA":
        return _composite_on_white(img.convert("RGBA"))
    if mode in ("RGBA", "LA", "RGBa", "La"):
        return _composite_on_white(img.convert("RGBA"))
    if mode.startswith("I") or mode == "F":
        return _high_depth_to_rgb(img)
    return img.convert("RGB")


def _apply_exif_orientation(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a malformed EXIF block should not cost the image; keep it as stored
        return img


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, WHITE + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _high_depth_to_rgb(img: Image.Image) -> Image.Image:
    arr = np.asarray(img)
    return Image.fromarray(_scale_to_uint8(arr, float_range="auto")).convert("RGB")


def _scale_to_uint8(arr: np.ndarray, float_range: str = "unit") -> np.ndarray:
    """Map integer or float pixel data to uint8. ``float_range``: ``"unit"`` (floats must be in [0, 1]) or
    ``"auto"`` (0..1 when the maximum is at most 1, else 0..255, clipped)."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ValueError(f"integer pixel values must lie in 0..65535, got {arr.min()}..{arr.max()}")
        # 16-bit data (uint16, or Pillow's 32-bit "I" holding a 16-bit PNG): 0..65535 -> 0..255.
        if arr.dtype == np.uint16 or (arr.size and arr.max() > 255):
            return np.round(arr.astype(np.float64) / 257.0).astype(np.uint8)
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
        if arr.size and not np.isfinite(arr).all():
            raise ValueError("float pixel values contain NaN or infinity")
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if float_range == "auto" and hi > 1.0:
            return np.clip(np.round(arr), 0, 255).astype(np.uint8)
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"float pixel values must lie in [0, 1], got {lo:.4g}..{hi:.4g}; pass uint8 data for 0..255 values"
            )
        return np.round(arr * 255.0).astype(np.uint8)
    raise ValueError(f"unsupported pixel dtype {arr.dtype}; use uint8, uint16, bool or float in [0, 1]")


# -- in-memory arrays --------------------------------------------------------------------------------------------
def image_from_array(arr: np.ndarray) -> Image.Image:
    """HW or HWC (C = 1, 3 or 4) NumPy array to RGB. 4 channels are RGBA (composited on white)."""
    if arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4) and arr.shape[0] in (1, 3, 4):
        raise ValueError(
            f"array of shape {arr.shape} looks channels-first; NumPy images must be HWC "
            "(use arr.transpose(1, 2, 0)), or pass a torch tensor for CHW"
        )
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ValueError(f"expected an image array of shape (H, W) or (H, W, 1|3|4), got {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"image array has no pixels (shape {arr.shape})")
    data = np.ascontiguousarray(_scale_to_uint8(arr))
    img = Image.fromarray(data)  # uint8 (H, W) -> "L", (H, W, 3) -> "RGB", (H, W, 4) -> "RGBA"
    return _composite_on_white(img) if img.mode == "RGBA" else img.convert("RGB")


def image_from_tensor(t: torch.Tensor) -> Image.Image:
    """CHW (C = 1, 3 or 4) or HW tensor to RGB; float values must be in [0, 1]."""
    t = t.detach().cpu()
    if t.ndim == 3:
        if t.shape[0] not in (1, 3, 4) and t.shape[-1] in (1, 3, 4):
            raise ValueError(
                f"tensor of shape {tuple(t.shape)} looks channels-last (HWC, or NHWC for a batch); tensors must be "
                "CHW / NCHW: pass x.permute(2, 0, 1) (or x.permute(0, 3, 1, 2) for a batch)"
            )
        if t.shape[0] not in (1, 3, 4):
            raise ValueError(f"expected a CHW image tensor with 1, 3 or 4 channels, got shape {tuple(t.shape)}")
        t = t.permute(1, 2, 0)
    elif t.ndim != 2:
        raise ValueError(f"expected a CHW image tensor, got shape {tuple(t.shape)}")
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()  # NumPy has no bfloat16
    return image_from_array(t.numpy())


def as_rgb_image(obj: Any, *, index: int | None = None, max_pixels: int | None = None) -> Image.Image:
    """Dispatch any accepted input to :func:`load_image`, :func:`to_rgb`, :func:`image_from_array` or
    :func:`image_from_tensor`; every failure becomes an :class:`ImageLoadError` naming the input."""
    if isinstance(obj, (str, os.PathLike)):
        return load_image(obj, max_pixels=max_pixels)
    name = describe(obj, index)
    try:
        if isinstance(obj, Image.Image):
            _check_pixels(name, obj.size, DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels))
            _check_aspect(name, obj.size, MAX_ASPECT)
            return to_rgb(obj)
        if isinstance(obj, np.ndarray):
            img = image_from_array(obj)
        elif isinstance(obj, torch.Tensor):
            img = image_from_tensor(obj)
        else:
            img = None
        if img is not None:
            _check_aspect(name, img.size, MAX_ASPECT)
            return img
    except ImageLoadError:
        raise
    except (ValueError, TypeError, OSError) as err:
        raise ImageLoadError(name, _first_line(err)) from None
    raise ImageLoadError(
        name, "unsupported input type; pass a file path, a PIL image, a NumPy array (HWC) or a tensor (CHW)"
    )


def find_images(paths: Iterable[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """Expand files and folders (recursively, :data:`IMAGE_EXTENSIONS` only, hidden entries skipped) in a stable
    order; returns ``(files, problems)``.

    Files named explicitly are kept whatever their extension, so that a mistake is reported rather than ignored;
    a path that does not exist is kept too and fails when it is loaded. ``problems`` holds one line per folder
    that could not be listed (permissions, a vanished mount): its images are missing, and callers report that.
    """
    found: list[Path] = []
    problems: list[str] = []

    def report(err: OSError) -> None:
        problems.append(f"{err.filename}: cannot list folder ({err.strerror or err}); its images are skipped")

    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found += walk_image_files(p, report)
        else:
            found.append(p)
    return found, problems


def walk_image_files(folder: Path, onerror) -> list[Path]:
    """Image files under ``folder`` in sorted order; ``onerror(OSError)`` is called for each unlistable folder."""
    found: list[Path] = []
    for root, dirs, files in os.walk(folder, onerror=onerror, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(Path(root) / f)
    return found
