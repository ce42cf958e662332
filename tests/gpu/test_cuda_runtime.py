"""The training runtime on a CUDA GPU (skipped without one; run by scripts/gpu_check.sh on a GPU machine).

A process group of world size 1 is started by hand on ``cpu:gloo,cuda:nccl``, so every collective of the loop
(the loss window, the epoch statistics, evaluation sums, buffer broadcasts, RNG gathering) really runs through
NCCL for CUDA tensors, as on an 8-GPU node; then a classification run with bf16 autocast, channels_last,
``torch.compile`` and the EMA trains, evaluates, checkpoints and resumes, and a few dense steps run.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_train import TINY, colour_folder  # noqa: E402

from efficientformer.train.config import build_config  # noqa: E402
from efficientformer.train.engine import train  # noqa: E402
from efficientformer.utils.io import safe_torch_load  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def nccl_group():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.cuda.set_device(0)
    dist.init_process_group("cpu:gloo,cuda:nccl", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_nccl_collectives_on_cuda_tensors(nccl_group):
    from efficientformer.runtime.distributed import all_reduce_sum, setup

    info = setup("cuda")
    t = torch.ones(3, device=info.device, dtype=torch.float64)
    assert all_reduce_sum(t).device.type == "cuda" and t.tolist() == [1.0, 1.0, 1.0]
    assert dist.get_backend() in ("cpu:gloo,cuda:nccl", "nccl")


def test_classification_bf16_channels_last_compile_ema_resume(nccl_group, tmp_path):
    data = colour_folder(tmp_path / "data", n_train=32, n_val=8, size=64)
    out = tmp_path / "run"
    base = {
        **TINY,
        "data": str(data),
        "output": str(out),
        "device": "cuda",
        "img_size": 64,
        "amp": "bf16",
        "channels_last": True,
        "compile": True,
        "ema_decay": 0.9,
        "log_every": 2,
    }
    first = train(build_config(None, {**base, "epochs": 1}))
    summary = train(build_config(None, {**base, "epochs": 2}))
    ckpt = safe_torch_load(out / "last.pth")
    assert summary["epochs"] == 2 and ckpt["progress"]["epoch"] == 2 and first["epochs"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert ckpt["history"][-1]["ema_top1"] is not None
    print(json.dumps({k: ckpt["history"][-1][k] for k in ("train_loss", "val_top1", "ema_top1", "images_per_s")}))


def test_segmentation_steps_on_cuda(nccl_group, tmp_path):
    from efficientformer.dense import loops
    from efficientformer.dense.segmentation import SegmentConfig
    from efficientformer.dense.synthetic import make_ade

    data = make_ade(tmp_path / "ade", train=4, val=2, size=64, seed=1)
    cfg = SegmentConfig(
        data=str(data),
        output=str(tmp_path / "seg"),
        model="efficientformerv2_s0",
        num_classes=4,
        crop_size=64,
        scale=(128, 64),
        steps=4,
        batch_size=2,
        workers=0,
        fpn_channels=16,
        head_channels=8,
        eval_every=0,
        device="cuda",
    )
    metrics = loops.train_segmentation(cfg)
    assert 0.0 <= metrics["mIoU"] <= 1.0
