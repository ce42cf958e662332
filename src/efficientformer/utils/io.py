"""Crash-safe file writing shared by training, dense tasks and deployment."""

from __future__ import annotations

import csv
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def atomic_write_bytes(path: str | Path, write_fn) -> Path:
    """Call ``write_fn(file_object)`` on a temporary file beside ``path``, fsync it, then rename over ``path``.

    A process killed at any moment leaves either the old file or the new one, never a torn one; the temporary
    files such a kill leaves behind are removed by :func:`remove_stale_temporaries`. The file gets the mode a
    plain ``open()`` would give it (0666 less the umask), not ``mkstemp``'s 0600. A full disk or a missing write
    permission is an ``OSError`` with a one-line message naming the path; the old file is left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as err:
        raise _write_error(path, err) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) or _is_disk_error(err):
            raise _write_error(path, err) from None
        raise
    return path


TEMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _is_disk_error(err: BaseException) -> bool:
    # torch.save reports a failed write as RuntimeError("... unexpected pos ...") instead of the OSError beneath
    return isinstance(err, RuntimeError) and ("unexpected pos" in str(err) or "write" in str(err).lower())


def _write_error(path: Path, err: BaseException) -> OSError:
    code = getattr(err, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT) or (code is None and _is_disk_error(err)):
        why = "the disk is full (or over quota); free space or choose another --output"
        code = code or errno.ENOSPC
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "permission denied; choose a writable --output"
    elif code == errno.ENOTDIR or code == errno.EEXIST:
        why = "a file stands where a folder is needed; choose another --output"
    else:
        why = str(getattr(err, "strerror", None) or err).splitlines()[0]
    return OSError(code or errno.EIO, f"cannot write {path}: {why}; the previous file (if any) is unchanged")


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete the temporary files of interrupted atomic writes in ``folder``; returns how many were removed.

    Call it only when no other process writes into the folder (at the start of a run, on the main process)."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for tmp in folder.glob(f".*{TEMP_SUFFIX}"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def check_writable_dir(folder: str | Path) -> Path:
    """Create ``folder`` if needed and prove a file can be written there; one-line ``OSError`` otherwise."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OSError(errno.ENOTDIR, f"output {folder} is a file, not a folder; choose another --output")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check.", suffix=TEMP_SUFFIX, dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        why = err.strerror or str(err)
        raise OSError(err.errno, f"output folder {folder} is not writable ({why}); choose another --output") from None
    return folder


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` through :func:`atomic_write_bytes`. Save only tensors and plain containers, so that the
    file loads back with ``torch.load(weights_only=True)``."""
    return atomic_write_bytes(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def safe_torch_load(path: str | Path) -> Any:
    """Load a file this toolkit wrote; never unpickles code."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)


#: First characters that make a spreadsheet read a cell as a formula (OWASP "CSV injection"): = + - @, and tab and
#: carriage return, which some programs skip before looking.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def csv_safe_cell(value: Any) -> Any:
    """A CSV cell that no spreadsheet runs as a formula: text starting with = + - @ tab or CR gets a leading
    apostrophe (OWASP's advice; spreadsheets hide it and show the text). Numbers, and text that is a plain number
    such as ``-0.5``, are left as they are."""
    if not isinstance(value, str) or not value.startswith(FORMULA_PREFIXES):
        return value
    try:
        float(value)
        return value  # "-0.5", "+1e3": a number, not a formula
    except ValueError:
        return "'" + value


class SafeCsvWriter:
    """``csv.writer`` whose every cell goes through :func:`csv_safe_cell`: THE way this toolkit writes CSV."""

    def __init__(self, out: Any, **kwargs: Any) -> None:
        self._writer = csv.writer(out, **kwargs)

    def writerow(self, row: Any) -> Any:
        return self._writer.writerow([csv_safe_cell(v) for v in row])

    def writerows(self, rows: Any) -> None:
        for row in rows:
            self.writerow(row)
