"""What a run shows and keeps: a progress bar, a JSON-lines log, optional trackers (TensorBoard, Weights & Biases,
MLflow: :mod:`.trackers`), and the curves plot.

Only the main process writes. The log is append-only; a resumed run first drops the records written after the
checkpoint it resumes from, so ``log.jsonl`` always describes the run the checkpoints hold.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..utils.io import atomic_write_text
from .plot import plot_curves
from .trackers import numeric_metrics, open_trackers, parse_trackers


class RunLog:
    """``log.jsonl`` and the experiment trackers (``trackers``: the ``log`` / old ``tensorboard`` config value,
    see :mod:`.trackers`), which receive the same records; ``config`` is what the trackers store with the run."""

    def __init__(
        self, out: Path, enabled: bool, trackers: bool | str | Sequence[str] | None = False, config: Any = None
    ) -> None:
        self.path, self.enabled = out / "log.jsonl", enabled
        names = parse_trackers(trackers)  # a bad name fails on every rank, before any work
        if dataclasses.is_dataclass(config) and not isinstance(config, type):
            config = dataclasses.asdict(config)
        self.trackers = open_trackers(names, out, config) if enabled and names else []

    def truncate_after(self, iteration: int) -> None:
        """Keep only records up to ``iteration`` (the checkpoint a resumed run starts from)."""
        if not (self.enabled and self.path.is_file()):
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line torn by a kill
                continue
            if int(record.get("iteration", 0)) <= iteration:
                kept.append(line + "\n")
        atomic_write_text(self.path, "".join(kept))

    def write(self, **record: Any) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.trackers:
            metrics = numeric_metrics(record, str(record.get("kind", "train")))
            for tracker in self.trackers:
                tracker.log(metrics, int(record.get("iteration", 0)))

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []


def progress_bar(total: int, initial: int, enabled: bool, desc: str) -> tqdm:
    return tqdm(
        total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True, file=sys.stderr, leave=False
    )


__all__ = ["RunLog", "progress_bar", "plot_curves"]
