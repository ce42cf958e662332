"""Experiment trackers beside ``log.jsonl``: TensorBoard, Weights & Biases and MLflow, behind one interface.

``--log tensorboard,wandb,mlflow`` (config key ``log``; the older ``tensorboard: true`` still means TensorBoard)
picks them; each is an optional extra (``pip install efficientformer[trackers]``), none is required, and a
missing one is said in one line and skipped. They receive exactly the records :class:`~.logging.RunLog` writes to
``log.jsonl`` (numbers only, named ``<kind>/<key>``, at the record's iteration), from the main process only, for
every task that runs on the runtime (classification, dense tasks, the supernet).

* TensorBoard: event files in ``<run>/tensorboard``.
* Weights & Biases: ``<run>/wandb``, in offline mode unless ``WANDB_MODE`` says otherwise (no network, no
  account; ``wandb sync <run>/wandb/offline-run-*`` uploads later), with the run's config.
* MLflow: a local file store in ``<run>/mlruns`` (``mlflow ui --backend-store-uri <run>/mlruns``) unless
  ``MLFLOW_TRACKING_URI`` points elsewhere; the run's config as parameters. MLflow 3 keeps its file store in
  maintenance mode behind ``MLFLOW_ALLOW_FILE_STORE``, which is set for this local store only when unset.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

#: The trackers ``--log`` accepts.
TRACKERS = ("tensorboard", "wandb", "mlflow")
#: The pip package each needs (the ``trackers`` extra installs all three).
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow-skinny"}
_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


class Tracker(Protocol):
    def log(self, metrics: Mapping[str, float], step: int) -> None: ...

    def close(self) -> None: ...


def parse_trackers(value: bool | str | Sequence[str] | None) -> list[str]:
    """``True`` (the old ``tensorboard`` key) -> ``["tensorboard"]``; ``"tensorboard,wandb"`` -> both; one-line
    error for a name that is not a tracker."""
    if value is None or value is False or value == "":
        return []
    if value is True:
        return ["tensorboard"]
    names = [v.strip().lower() for v in (value.split(",") if isinstance(value, str) else value) if str(v).strip()]
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ValueError(
            f"log: unknown tracker {', '.join(unknown)} (config key log / --log); choose from {', '.join(TRACKERS)}"
        )
    return list(dict.fromkeys(names))


def numeric_metrics(record: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """The numbers of a ``log.jsonl`` record as ``<prefix>/<key>`` (time and iteration are the axes, not metrics)."""
    return {
        f"{prefix}/{key}": float(value)
        for key, value in record.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("time", "iteration")
    }


class TensorBoardTracker:
    def __init__(self, out: Path, config: Mapping[str, Any] | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 - optional dependency

        self.writer = SummaryWriter(str(out / "tensorboard"))

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, out: Path, config: Mapping[str, Any] | None = None) -> None:
        import wandb  # noqa: PLC0415 - optional dependency

        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "efficientformer"),
            name=out.name,
            dir=str(out),
            config=dict(config or {}),
            mode=os.environ.get("WANDB_MODE", "offline"),
            reinit="finish_previous",
        )

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    def __init__(self, out: Path, config: Mapping[str, Any] | None = None) -> None:
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # our own local store, see the module doc
            uri = (out / "mlruns").resolve().as_uri()
        from mlflow.entities import Param  # noqa: PLC0415 - optional dependency
        from mlflow.tracking import MlflowClient  # noqa: PLC0415

        self.client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "efficientformer")
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        self.run_id = self.client.create_run(experiment_id, run_name=out.name).info.run_id
        params = [Param(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in (config or {}).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(
                self.run_id, params=[Param(p.key, p.value[:6000]) for p in params[start : start + 100]]
            )

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric  # noqa: PLC0415 - optional dependency

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


_CLASSES = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MlflowTracker}


def open_trackers(names: Sequence[str], out: Path, config: Mapping[str, Any] | None = None) -> list[Tracker]:
    """Start the named trackers for the run folder ``out``; one that is not installed is skipped with one line."""
    opened: list[Tracker] = []
    for name in names:
        if importlib.util.find_spec(_MODULES[name]) is None:
            print(
                f"{name} is not installed (pip install {PACKAGES[name]}, or efficientformer[trackers]); "
                "continuing without it",
                flush=True,
            )
            continue
        opened.append(_CLASSES[name](out, config))
    return opened


__all__ = ["TRACKERS", "Tracker", "numeric_metrics", "open_trackers", "parse_trackers"]
