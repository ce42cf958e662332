"""One run per output folder: an OS-level lock on ``<output>/.lock`` that dies with the process.

``fcntl.flock`` is released by the kernel when the process exits, however it exits (SIGKILL included), so a folder
left by a killed run is taken over without a prompt; the lock file also records the holder's host, PID and start
time, for the one-line refusal a second run into a live folder gets. Under DDP only rank 0 locks (the folder is one
run, whatever its number of processes). A process may take the same folder's lock more than once (the engine takes
it before writing ``config.yaml``, :func:`~efficientformer.runtime.loop.fit` again): the lock is re-entrant.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"


class RunFolderLocked(OSError):
    """Another live run writes into this output folder."""


_held: dict[Path, list] = {}  # folder -> [open lock file, how many holders in this process]


def _drop_inherited_locks() -> None:
    """In a forked child (DataLoader workers): close the inherited lock descriptors. A flock belongs to the open
    file, which the child shares; without this a worker outliving the run (an iterator still referenced after an
    exception) would keep the folder locked. Closing the child's copy leaves the parent's lock in place."""
    for handle, _ in _held.values():
        handle.close()
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_locks)


def _describe_holder(text: str) -> str:
    try:
        info = json.loads(text)
        return f"host {info['host']}, PID {info['pid']}, started {info['started']}"
    except (ValueError, KeyError, TypeError):
        return "a process that left no details"


def acquire(folder: str | Path) -> None:
    """Lock ``folder`` for this process (creating it); raises :class:`RunFolderLocked` naming the live holder."""
    folder = Path(folder).resolve()
    if folder in _held:
        _held[folder][1] += 1
        return
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK_NAME, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the run's lifetime
    if fcntl is not None:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = _describe_holder(handle.read())
            handle.close()
            raise RunFolderLocked(
                f"another run is writing to {folder} ({holder}); wait for it to finish, stop it, "
                "or choose another --output"
            ) from None
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": started}) + "\n")
    handle.flush()
    _held[folder] = [handle, 1]


def release(folder: str | Path) -> None:
    folder = Path(folder).resolve()
    entry = _held.get(folder)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] == 0:
        del _held[folder]
        entry[0].close()  # closing the descriptor releases the flock


@contextlib.contextmanager
def run_folder_lock(folder: str | Path, enabled: bool = True) -> Iterator[None]:
    """Hold ``folder``'s lock for a ``with`` block (``enabled=False``: the non-zero ranks of a DDP run)."""
    if not enabled:
        yield
        return
    acquire(folder)
    try:
        yield
    finally:
        release(folder)


__all__ = ["LOCK_NAME", "RunFolderLocked", "run_folder_lock", "acquire", "release"]
