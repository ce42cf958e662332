"""Stop signals, mid-epoch checkpoints and gradient accumulation on CUDA with NCCL (skipped without a GPU; run by
scripts/gpu_check.sh). Under ``torchrun`` with one process per GPU (two when there are two GPUs, else one): the last
rank sends itself SIGUSR1 in epoch 2; every rank finishes the step, agrees through the loop's collective, the
checkpoint is written, the workers exit 75 and ``--max-restarts=1`` resumes them. The result is compared with a
straight run: CUDA kernels (cuDNN convolution backward) are not bitwise deterministic, so the test prints the
largest weight difference and asserts it is small rather than zero."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_train import REPO, TINY, colour_folder  # noqa: E402

from efficientformer.utils.io import safe_torch_load  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_signal_accumulation_and_elastic_resume_on_cuda(tmp_path):
    world = min(2, torch.cuda.device_count())
    data = colour_folder(tmp_path / "data", n_train=32, n_val=8, size=64)
    cfg = {
        **TINY,
        "device": "cuda",
        "img_size": 64,
        "amp": "bf16",
        "batch_size": 4,
        "grad_accum": 2,
        "epochs": 3,
        "mixup": 0.8,
        "cutmix": 1.0,
        "drop_path": 0.1,
        "log_every": 2,
    }
    args = [f"{k}={v}" for k, v in cfg.items()]
    per_epoch = 64 // (4 * 2 * world)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}"]
    straight, elastic = tmp_path / "straight", tmp_path / "elastic"
    res = subprocess.run(
        [*torchrun, "-m", "efficientformer", "train", "--data", str(data), "--output", str(straight), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    res = subprocess.run(
        [
            *torchrun,
            "--max-restarts=1",
            str(REPO / "tests" / "preempt_probe.py"),
            f"--probe-at={2 * (per_epoch + 1)}",
            "--probe-signal=SIGUSR1",
            f"--probe-rank={world - 1}",
            "--data",
            str(data),
            "--output",
            str(elastic),
            *args,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"stopped by SIGUSR1 after iteration {per_epoch + 2}" in res.stdout
    assert f"iteration {per_epoch + 2} of {3 * per_epoch}, epoch 1, batch 4" in res.stdout
    a, b = safe_torch_load(straight / "last.pth"), safe_torch_load(elastic / "last.pth")
    assert a["progress"]["iteration"] == b["progress"]["iteration"] == 3 * per_epoch
    worst = max(
        (a["model"][k].double() - b["model"][k].double()).abs().max().item()
        for k in a["model"]
        if a["model"][k].is_floating_point()
    )
    print(json.dumps({"processes": world, "grad_accum": 2, "max_abs_weight_difference_vs_straight": worst}))
    assert worst < 1e-2
