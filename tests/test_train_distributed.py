"""torchrun (gloo) DDP against one process, and the submitit path through its LocalExecutor."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image
from test_train import REPO, TINY, colour_folder, run_cli

from efficientformer.utils.io import safe_torch_load

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _ddp_args(data, out, batch_size: int, extra=()) -> list[str]:
    # Exact comparison settings: deterministic inputs (no_aug: the eval transform), no mixup/drop path/dropout,
    # and BatchNorm on running statistics (freeze_bn). With BN in batch-statistics mode each process normalises
    # with the statistics of its own half batch, so DDP and one process legitimately differ; everything else
    # (sampler split, gradient averaging, AdamW, AGC clipping) must agree to float tolerance: fp32, since bf16
    # autocast (amp=auto on AMX/AVX512-BF16 CPUs) rounds each half batch's activations differently.
    cfg = {
        **TINY,
        "no_aug": "true",
        "freeze_bn": "true",
        "ema": "false",
        "max_steps": 3,
        "epochs": 1,
        "batch_size": batch_size,
        "lr": 1e-3,
        "drop_path": 0.0,
        "amp": "none",
    }
    return ["train", "--data", str(data), "--output", str(out), *[f"{k}={v}" for k, v in cfg.items()], *extra]


def test_ddp_two_processes_match_one_process(tmp_path):
    data = colour_folder(tmp_path / "data", n_train=16, n_val=5)
    Image.open(data / "val" / "dark" / "0.png").save(data / "val" / "dark" / "extra.png")  # 11 val images: odd
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    res = subprocess.run(
        [sys.executable, "-m", "efficientformer", *_ddp_args(data, single, 8)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    # 2 processes x 2 accumulated batches of 2 = one step of 8: the first batch of each step runs under DDP's
    # no_sync (no all-reduce), the second all-reduces the summed gradients
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "efficientformer",
        *_ddp_args(data, ddp, 2, ["grad_accum=2"]),
    ]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 process(es)" in res.stdout and "global batch 8 (2 x 2 accumulated per process)" in res.stdout
    a, b = safe_torch_load(single / "last.pth"), safe_torch_load(ddp / "last.pth")
    assert a["history"][0]["steps"] == b["history"][0]["steps"] == 3
    worst = max(
        (a["model"][k].double() - b["model"][k].double()).abs().max().item()
        for k in a["model"]
        if a["model"][k].is_floating_point()
    )
    print(f"DDP (2 x 2 accumulated) vs single: max abs weight difference after 3 AdamW steps = {worst:.3g}")
    assert worst < 1e-5, worst
    # distributed evaluation counted each of the 11 validation images exactly once
    assert b["history"][0]["val_count"] == a["history"][0]["val_count"] == 11
    assert b["history"][0]["val_top1"] == pytest.approx(a["history"][0]["val_top1"])
    assert abs(b["history"][0]["train_loss"] - a["history"][0]["train_loss"]) < 1e-4


def test_accumulated_micro_batches_skip_the_gradient_all_reduce(tmp_path):
    """The loop's DDP path of gradient accumulation: with grad_accum=4 the gradients are all-reduced once per
    optimiser step (the first 3 batches run under no_sync), counted by a DDP communication hook on a one-process
    gloo group, and the step is the one of the mean loss over the 4 batches, as without DDP."""
    import torch.distributed as dist
    from torch import nn

    from efficientformer.runtime import loop
    from efficientformer.runtime.distributed import DistInfo
    from efficientformer.runtime.precision import Precision

    def run(grad_accum: int, ddp: bool):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        calls = []
        train_model = model
        if ddp:
            train_model = nn.parallel.DistributedDataParallel(model)

            def hook(state, bucket):
                calls.append(1)
                done = torch.futures.Future()
                done.set_result(bucket.buffer())
                return done

            train_model.register_comm_hook(None, hook)
        task = loop.Task(
            name="t",
            model=model,
            optimizer=optimizer,
            batches=None,
            evaluate=None,
            config=None,
            step=lambda m, b: loop.Step(m(b).square().mean(), b.shape[0]),
        )
        plan = loop.Plan(
            task=task,
            schedule=loop.Schedule(steps_per_epoch=2, total_steps=2, grad_accum=grad_accum),
            output=tmp_path,
            info=DistInfo(),
        )
        gen = torch.Generator().manual_seed(1)
        batches = iter([torch.randn(2, 4, generator=gen) for _ in range(8)])
        state, meters = loop.RunState(), loop.Meters(torch.device("cpu"), 0.1)
        for _ in range(8 // grad_accum):
            assert loop._optimizer_step(
                plan, train_model, batches, Precision("none", torch.device("cpu")), state, meters
            )
        return model.state_dict(), len(calls), state.epoch_batches

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        accumulated, reduces, consumed = run(4, ddp=True)
        _, every_batch, _ = run(1, ddp=True)
    finally:
        dist.destroy_process_group()
    plain, _, _ = run(4, ddp=False)
    assert consumed == 8 and every_batch == 8  # without accumulation: one all-reduce per batch
    assert reduces == 2  # 2 optimiser steps of 4 batches: 2 all-reduces, not 8
    assert all(torch.allclose(accumulated[k], plain[k], atol=1e-7) for k in plain)


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


def _torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    res = subprocess.run([*TORCHRUN, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.mark.slow
def test_ddp_ema_identical_reported_metrics_are_the_checkpoints_and_resume_is_exact(tmp_path):
    """2 gloo processes with EMA, augmentation and BatchNorm in batch-statistics mode (no SyncBN on CPU):
    (1) the EMA is the same on both ranks; (2) the top-1/loss reported for the model and the EMA equal what
    ``eval`` (and ``eval --ema``) give on the saved checkpoint; (3) a run stopped after epoch 1 and resumed ends
    bit-identical to a straight run (model, EMA, optimizer)."""
    data = colour_folder(tmp_path / "data", n_train=16, n_val=5)
    common = [
        *[f"{k}={v}" for k, v in TINY.items()],
        "ema_decay=0.5",
        "crop_scale_min=0.5",
        "drop_path=0.1",
        "batch_size=4",
    ]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _torchrun(str(REPO / "tests" / "ddp_probe.py"), "--data", str(data), "--output", str(straight), *common, "epochs=2")
    ranks = json.loads((straight / "ema_ranks.json").read_text())
    assert ranks["differing"] == 0 and ranks["max_diff"] == 0.0, ranks

    a = safe_torch_load(straight / "last.pth")
    last = a["history"][-1]
    for flag, top1_key in (("", "val_top1"), ("--ema", "ema_top1")):
        extra = [flag] if flag else []
        res = run_cli(
            "eval",
            "--model",
            "efficientformerv2_s0",
            "--checkpoint",
            str(straight / "last.pth"),
            "--data",
            str(data),
            "--img-size",
            "32",
            "--json",
            "--workers",
            "0",
            *extra,
        )
        assert res.returncode == 0, res.stderr
        got = json.loads(res.stdout)
        assert got["top1"] == pytest.approx(last[top1_key], abs=1e-9), (flag, got, last)
        if not flag:
            assert got["loss"] == pytest.approx(last["val_loss"], rel=1e-5)

    for epochs in (1, 2):
        _torchrun(
            "-m", "efficientformer", "train", "--data", str(data), "--output", str(resumed), *common, f"epochs={epochs}"
        )
    b = safe_torch_load(resumed / "last.pth")
    assert len(b["rng"]) == 2  # every rank's random state is saved
    for part in ("model", "model_ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]


def test_cuda_runs_get_one_group_for_nccl_and_gloo(monkeypatch):
    """NCCL reduces only CUDA tensors: on GPU machines the group must carry both backends."""
    import torch.distributed as dist

    from efficientformer.runtime import distributed

    seen = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: seen.setdefault("device", device))
    monkeypatch.setattr(dist, "init_process_group", lambda backend: seen.setdefault("backend", backend))
    monkeypatch.setattr(distributed, "active", lambda: False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = distributed.setup("auto")
    assert seen["backend"] == "cpu:gloo,cuda:nccl" and info.device == torch.device("cuda", 1)
    assert distributed.backend_for(torch.device("cpu")) == "gloo"


def test_unwrap_strips_ddp_and_compile_wrappers():
    from efficientformer.runtime.distributed import unwrap

    net = torch.nn.Linear(2, 2)
    compiled = torch.compile(net, backend="eager")
    assert unwrap(compiled) is net and set(unwrap(compiled).state_dict()) == {"weight", "bias"}


@pytest.mark.slow
def test_ddp_segmentation_resume_exact_and_metrics_equal_eval(tmp_path):
    from efficientformer.dense.synthetic import make_ade

    data = make_ade(tmp_path / "ade", train=8, val=3, size=64, seed=2)
    common = [
        "--data",
        str(data),
        "--model",
        "efficientformerv2_s0",
        "num_classes=4",
        "crop_size=64",
        "scale=128,64",
        "batch_size=2",
        "workers=0",
        "threads=1",
        "fpn_channels=16",
        "head_channels=8",
        "poly_power=0",
        "eval_every=0",
        "checkpoint_every=1",
    ]
    straight, resumed = tmp_path / "a", tmp_path / "b"
    _torchrun("-m", "efficientformer", "segment", "train", "--output", str(straight), *common, "steps=4")
    _torchrun("-m", "efficientformer", "segment", "train", "--output", str(resumed), *common, "steps=2")
    _torchrun("-m", "efficientformer", "segment", "train", "--output", str(resumed), *common, "steps=4")
    a, b = safe_torch_load(straight / "last.pth"), safe_torch_load(resumed / "last.pth")
    assert len(b["rng"]) == 2 and b["progress"]["iteration"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    reported = json.loads((straight / "metrics.json").read_text())
    res = run_cli("segment", "eval", "--checkpoint", str(straight / "last.pth"), "--device", "cpu")
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["mIoU"] == pytest.approx(reported["mIoU"], abs=1e-9)


@pytest.mark.slow
def test_ddp_detection_resume_exact_and_metrics_equal_eval(tmp_path):
    """Mask R-CNN on 2 gloo processes: stopped inside epoch 2 and resumed, it ends bit-identical to a straight run;
    the AP it reports is what ``detect eval`` gives on the saved checkpoint."""
    pytest.importorskip("pycocotools")
    from efficientformer.dense.synthetic import make_coco

    data = make_coco(tmp_path / "coco", train=8, val=3, size=64, seed=2)
    common = [
        "--data",
        str(data),
        "--model",
        "efficientformerv2_s0",
        "min_size=64",
        "max_size=96",
        "anchor_sizes=8,16,32,64,128",
        "fpn_channels=16",
        "box_head_dim=32",
        "mask_head_channels=8",
        "box_batch_size=32",
        "rpn_batch_size=32",
        "batch_size=2",
        "workers=0",
        "threads=1",
        "epochs=2",
        "lr_steps=1",
        "warmup_steps=2",
        "eval_every=0",
        "checkpoint_every=0",
    ]
    straight, resumed = tmp_path / "a", tmp_path / "b"
    _torchrun("-m", "efficientformer", "detect", "train", "--output", str(straight), *common)
    _torchrun("-m", "efficientformer", "detect", "train", "--output", str(resumed), *common, "steps=3")
    mid = safe_torch_load(resumed / "last.pth")["progress"]
    assert (mid["iteration"], mid["epoch"], mid["epoch_iter"]) == (3, 1, 1)
    _torchrun("-m", "efficientformer", "detect", "train", "--output", str(resumed), *common)
    a, b = safe_torch_load(straight / "last.pth"), safe_torch_load(resumed / "last.pth")
    assert a["progress"]["iteration"] == b["progress"]["iteration"] == 4 and len(b["rng"]) == 2
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert [h["train_loss"] for h in a["history"]] == pytest.approx([h["train_loss"] for h in b["history"]])
    reported = json.loads((straight / "metrics.json").read_text())
    res = run_cli("detect", "eval", "--checkpoint", str(straight / "last.pth"), "--device", "cpu")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["bbox_AP"] == pytest.approx(reported["bbox_AP"], abs=1e-9)
