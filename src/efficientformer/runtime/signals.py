"""Stopping a run on a signal without losing work: preemption on Slurm, Kubernetes and spot instances.

Slurm sends SIGTERM (or the ``--signal`` the user chose, usually SIGUSR1) some time before it kills a job;
Kubernetes and spot instances send SIGTERM. While :func:`~efficientformer.runtime.loop.fit` runs, the stop signals
only *note* the request (:class:`StopSignals`); the loop checks the note after each optimiser step, all ranks agree
on it in one collective, every rank finishes the same step, one mid-epoch checkpoint is written atomically, and the
process exits with :data:`PREEMPTED_EXIT_CODE` (:class:`Preempted`). The same command resumes exactly; under
submitit the job requeues itself, under ``torchrun --max-restarts`` the agent restarts the workers, which resume
from the newest checkpoint. A second signal during the save only notes the request again, so it cannot interrupt
(and corrupt) anything; a SIGKILL cannot corrupt the checkpoint either, which is written atomically.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Sequence
from typing import Any

from ..data.samplers import seed_worker

#: the exit status of a run stopped by a signal after writing its checkpoint (BSD's EX_TEMPFAIL: "try again")
PREEMPTED_EXIT_CODE = 75

DEFAULT_STOP_SIGNALS = ("SIGTERM", "SIGUSR1")


def signal_number(name: str) -> int:
    """``SIGTERM``, ``TERM``, ``sigusr1``, ``15`` -> the signal number; one-line error for an unknown name."""
    text = str(name).strip().upper()
    if text.isdigit():
        return int(text)
    text = text if text.startswith("SIG") else "SIG" + text
    number = getattr(signal, text, None)
    if not isinstance(number, int) or text.startswith("SIG_"):
        raise ValueError(f"unknown signal {name!r}; use names such as SIGTERM, SIGUSR1, SIGUSR2")
    return int(number)


def check_stop_signals(names: Sequence[str], key: str = "stop_signals") -> None:
    """A config check: every name is a signal this platform has (one line naming the key otherwise)."""
    for name in names:
        try:
            signal_number(name)
        except ValueError as err:
            raise ValueError(f"config key {key!r}: {err}") from None


class Preempted(SystemExit):
    """A run stopped by a signal after its checkpoint was written; exits with :data:`PREEMPTED_EXIT_CODE`."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(PREEMPTED_EXIT_CODE)
        self.signum, self.message = signum, message

    def __str__(self) -> str:
        return self.message


class StopSignals:
    """While entered, the given signals set :attr:`received` (the first one's number) instead of killing the
    process; the previous handlers come back on exit. Only the main thread can install handlers: elsewhere (a
    notebook's worker thread) it does nothing and the signals keep their usual effect."""

    def __init__(self, names: Sequence[str] = DEFAULT_STOP_SIGNALS) -> None:
        self.numbers = tuple(dict.fromkeys(signal_number(n) for n in names))
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def note(self, signum: int, frame: Any = None) -> None:
        if self.received is None:
            self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for number in self.numbers:
                self._previous[number] = signal.signal(number, self.note)
        return self

    def __exit__(self, *exc: Any) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def previous_handler(self, signum: int) -> Any:
        """The handler the signal had before (e.g. submitit's requeue hook), while entered."""
        return self._previous.get(signum)


def ignore_stop_signals_in_worker() -> None:
    """For DataLoader workers: a signal sent to the whole process group (Slurm, torchrun) must not kill them
    mid-epoch: the main process decides when to stop, and its workers exit with it."""
    for name in ("SIGTERM", "SIGUSR1", "SIGUSR2"):
        number = getattr(signal, name, None)
        if number is not None:
            signal.signal(number, signal.SIG_IGN)


def loader_worker_init(worker_id: int) -> None:
    """The training loaders' ``worker_init_fn``: stop signals ignored (above), numpy and Python seeded as torch."""
    ignore_stop_signals_in_worker()
    seed_worker(worker_id)


__all__ = [
    "PREEMPTED_EXIT_CODE",
    "DEFAULT_STOP_SIGNALS",
    "Preempted",
    "StopSignals",
    "signal_number",
    "ignore_stop_signals_in_worker",
    "loader_worker_init",
    "check_stop_signals",
]
