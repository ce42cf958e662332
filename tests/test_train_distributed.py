"""torchrun (gloo) DDP against one process, and the submitit path through its LocalExecutor."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image
from test_train import REPO, TINY, colour_folder

from efficientformer.utils.io import safe_torch_load


def _ddp_args(data, out, batch_size: int, extra=()) -> list[str]:
    # Exact comparison settings: deterministic inputs (no_aug: the eval transform), no mixup/drop path/dropout,
    # and BatchNorm on running statistics (freeze_bn). With BN in batch-statistics mode each process normalises
    # with the statistics of its own half batch, so DDP and one process legitimately differ; everything else
    # (sampler split, gradient averaging, AdamW, AGC clipping) must agree to float tolerance.
    cfg = {**TINY, "no_aug": "true", "freeze_bn": "true", "ema": "false", "max_steps": 3, "epochs": 1,
           "batch_size": batch_size, "lr": 1e-3, "drop_path": 0.0}  # fmt: skip
    return ["train", "--data", str(data), "--output", str(out), *[f"{k}={v}" for k, v in cfg.items()], *extra]


def test_ddp_two_processes_match_one_process(tmp_path):
    data = colour_folder(tmp_path / "data", n_train=16, n_val=5)
    Image.open(data / "val" / "dark" / "0.png").save(data / "val" / "dark" / "extra.png")  # 11 val images: odd
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    res = subprocess.run([sys.executable, "-m", "efficientformer", *_ddp_args(data, single, 8)], cwd=REPO,
                         capture_output=True, text=True, timeout=240)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "efficientformer", *_ddp_args(data, ddp, 4)]  # fmt: skip
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 process(es)" in res.stdout and "global batch 8" in res.stdout
    a, b = safe_torch_load(single / "last.pth"), safe_torch_load(ddp / "last.pth")
    assert a["history"][0]["steps"] == b["history"][0]["steps"] == 3
    worst = max((a["model"][k].double() - b["model"][k].double()).abs().max().item()
                for k in a["model"] if a["model"][k].is_floating_point())  # fmt: skip
    print(f"DDP vs single: max abs weight difference after 3 AdamW steps = {worst:.3g}")
    assert worst < 1e-5, worst
    # distributed evaluation counted each of the 11 validation images exactly once
    assert b["history"][0]["val_count"] == a["history"][0]["val_count"] == 11
    assert b["history"][0]["val_top1"] == pytest.approx(a["history"][0]["val_top1"])
    assert abs(b["history"][0]["train_loss"] - a["history"][0]["train_loss"]) < 1e-4


def test_submitit_local_executor_runs_and_requeues(tmp_path):
    submitit = pytest.importorskip("submitit")
    from efficientformer.train.config import build_config
    from efficientformer.train.slurm import TrainJob, submit

    data = colour_folder(tmp_path / "data")
    cfg = build_config(None, {**TINY, "data": str(data), "output": str(tmp_path / "run"), "max_steps": 2})
    job, summary = submit(cfg, local=True, wait=True, timeout_min=5)
    assert summary["epochs"] == 1 and summary["val_images"] == 12
    assert (tmp_path / "run" / "last.pth").is_file()
    again = TrainJob(cfg).checkpoint()  # the preemption hook requeues the same job, which resumes
    assert isinstance(again, submitit.helpers.DelayedSubmission) and again.function.cfg.output == cfg.output
    with pytest.raises(ValueError, match="--output is required"):
        submit(build_config(None, {**TINY, "data": str(data)}), local=True)
