"""What a run shows and keeps: a progress bar, a JSON-lines log, optional TensorBoard, and the curves plot.

Only the main process writes. The log is append-only; a resumed run first drops the records written after the
checkpoint it resumes from, so ``log.jsonl`` always describes the run the checkpoints hold.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..utils.io import atomic_write_text
from .plot import plot_curves


class RunLog:
    def __init__(self, out: Path, enabled: bool, tensorboard: bool = False) -> None:
        self.path, self.enabled, self.tb = out / "log.jsonl", enabled, None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # optional dependency

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except ImportError:
                print("tensorboard is not installed (pip install tensorboard); continuing without it", flush=True)

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
        if self.tb is not None:
            step = int(record.get("iteration", 0))
            prefix = record.get("kind", "train")
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("time", "iteration"):
                    self.tb.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def progress_bar(total: int, initial: int, enabled: bool, desc: str) -> tqdm:
    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True, file=sys.stderr,
                leave=False)  # fmt: skip


__all__ = ["RunLog", "progress_bar", "plot_curves"]
