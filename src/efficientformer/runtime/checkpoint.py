"""The training checkpoint: one schema for every task, one writer and one reader.

A checkpoint holds only tensors and plain containers, so it loads with ``torch.load(weights_only=True)``, and it
is written atomically (a run killed at any moment resumes from the last complete one). Its keys:

``format``, ``task``; ``model`` (and ``model_ema``, ``ema_updates``); ``optimizer``, ``scheduler``, ``scaler``;
``progress`` (``iteration`` and ``epoch_iter``: optimiser steps in all and in this epoch; ``epoch``;
``epoch_batches``: the batches of this epoch already consumed, where the resumable sampler restarts;
``data_seed``: the seed of the data order; ``grad_accum``); ``rng`` (one entry
per rank, so every rank of a resumed run continues its own random stream); ``world_size``; ``config``;
``history`` (the per-epoch records); ``best`` (metric name and value); plus the task's metadata (class names...).
"""

from __future__ import annotations

import json
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..utils.io import atomic_torch_save
from .distributed import DistInfo, all_gather_objects

FORMAT = "efficientformer-train/2"
#: the file a run resumes from (rewritten at epoch ends, mid-epoch checkpoints and stops) and the best one
CHECKPOINT_NAME, BEST_NAME = "last.pth", "best.pth"


class CheckpointReadError(ValueError):
    """A checkpoint file exists but cannot be used; the message says what to do."""


# -- random state ------------------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """This process's torch, CUDA, numpy and Python RNG states, as tensors and plain values."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": json.dumps(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def seed_all(seed: int) -> None:
    """Seed the torch, numpy and Python RNGs of this process."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    npy = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            npy["keys"].numpy().astype(np.uint32),
            int(npy["pos"]),
            int(npy.get("has_gauss", 0)),
            float(npy.get("cached_gaussian", 0.0)),
        )
    )
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def gather_rng_states() -> list[dict[str, Any]]:
    """Every rank's RNG state in rank order (a collective: every rank must call it)."""
    return all_gather_objects(rng_state())


def restore_rng(saved: Any, info: DistInfo, seed: int, epoch: int) -> bool:
    """Restore this rank's stream from ``saved`` (a per-rank list, or one state from older checkpoints).

    Returns False, after a deterministic reseed, when the checkpoint has no state for this rank (the run was
    started with another number of processes): the run continues, but is no longer bit-identical to a straight one.
    """
    if isinstance(saved, list) and len(saved) == info.world:
        set_rng_state(saved[info.rank])
        return True
    if isinstance(saved, dict) and info.world == 1:
        set_rng_state(saved)
        return True
    seed_all(seed + info.rank + 1000 * epoch)
    return False


# -- files -------------------------------------------------------------------------------------------------------
def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    return atomic_torch_save({"format": FORMAT, **state}, path)


def read_checkpoint(path: str | Path, what: str = "resume from") -> dict[str, Any]:
    """Read a checkpoint this toolkit wrote (weights only: no code is unpickled). Every failure is one line that
    names the file and what to do."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    advice = "move it away (or delete it) to start afresh, or choose another --output"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "unpickling refused"
        raise CheckpointReadError(
            f"cannot {what} {path}: it holds objects other than tensors and plain values, "
            f"which are never unpickled ({first[:160]}); {advice}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointReadError(
            f"cannot {what} {path}: the file is damaged or not a checkpoint ({first[:160]}); {advice}"
        ) from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointReadError(
            f"cannot {what} {path}: it is not a training checkpoint of this toolkit (no 'model' entry); {advice}"
        )
    return state


def load_state(target: Any, state: Any, name: str, path: Path) -> None:
    """``target.load_state_dict(state)`` with a one-line error naming the part that does not fit."""
    try:
        target.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError) as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else (lines[0] if lines else type(err).__name__)
        raise CheckpointReadError(
            f"cannot resume from {path}: its {name} does not fit this run ({detail[:200]}); "
            "use the settings the run was started with, or another --output"
        ) from None


__all__ = [
    "FORMAT",
    "CHECKPOINT_NAME",
    "BEST_NAME",
    "CheckpointReadError",
    "rng_state",
    "seed_all",
    "set_rng_state",
    "gather_rng_states",
    "restore_rng",
    "save_checkpoint",
    "read_checkpoint",
    "load_state",
]
