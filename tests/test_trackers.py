"""Experiment trackers: each writes its own files with the records log.jsonl holds (no network: W&B offline,
MLflow a local file store in the run folder)."""

import json

import pytest

from efficientformer.runtime.logging import RunLog
from efficientformer.runtime.trackers import TRACKERS, parse_trackers
from efficientformer.train.config import build_config

RECORDS = [
    {"kind": "train", "iteration": 10, "epoch": 0, "train_loss": 2.5, "lr": 0.001},
    {"kind": "eval", "iteration": 10, "epoch": 0, "val_top1": 41.5, "amp": "none"},
    {"kind": "train", "iteration": 20, "epoch": 1, "train_loss": 1.25, "lr": 0.0005},
]


def _write_run(out, trackers):
    log = RunLog(out, True, trackers, config={"model": "efficientformerv2_s0", "lr": 0.001, "epochs": 2})
    for record in RECORDS:
        log.write(**record)
    log.close()
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k != "time"} for r in lines] == RECORDS  # the same records


def test_parse_trackers_and_the_old_key():
    assert parse_trackers(True) == ["tensorboard"] and parse_trackers(False) == [] and parse_trackers(None) == []
    assert parse_trackers("wandb, mlflow,wandb") == ["wandb", "mlflow"]
    with pytest.raises(ValueError, match="unknown tracker comet.*tensorboard, wandb, mlflow"):
        parse_trackers("comet")
    assert build_config(None, {"log": "tensorboard,mlflow"}).log == "tensorboard,mlflow"
    assert set(TRACKERS) == {"tensorboard", "wandb", "mlflow"}


def test_tensorboard_writes_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _write_run(tmp_path, True)  # the old `tensorboard: true`
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train/train_loss")] == [(10, 2.5), (20, 1.25)]
    assert [e.value for e in acc.Scalars("eval/val_top1")] == [41.5]


def test_mlflow_writes_a_local_file_store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    _write_run(tmp_path, "mlflow")
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("efficientformer").experiment_id])
    history = client.get_metric_history(run.info.run_id, "train/train_loss")
    assert sorted((m.step, m.value) for m in history) == [(10, 2.5), (20, 1.25)]
    assert run.data.params["lr"] == "0.001" and run.data.params["model"] == "efficientformerv2_s0"
    assert run.info.status == "FINISHED"


def test_wandb_writes_an_offline_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline is the default: no network, no account
    monkeypatch.setenv("WANDB_SILENT", "true")
    _write_run(tmp_path, "wandb")
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    (data,) = run_dir.glob("run-*.wandb")  # what `wandb sync` uploads: protobuf records holding JSON values
    raw = data.read_bytes()
    for needle in (b"train/train_loss", b"1.25", b"eval/val_top1", b"41.5", b"efficientformerv2_s0"):
        assert needle in raw, needle
