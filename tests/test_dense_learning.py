"""Dense tasks learn, resume and predict end to end through the CLI (CPU, small synthetic data sets).

Bars (random-init efficientformerv2_s0, one CPU thread; the recipes are the YAML files in configs/dense/, so the
documented commands are the tested ones):
* detection (toy_detect.yaml, reduced heads): 64 images at ~128 px, 64 iterations (4 epochs x 16, batch 4): box AP50
  >= 0.5 and mask AP50 >= 0.5 (an untrained detector scores ~0.0);
* segmentation (toy_segment.yaml, official head sizes): 64 images, 60 iterations, crop 128: mIoU >= 0.5 and > 2x the
  all-background mIoU (~0.22).
Measured values and run times are in docs/dense.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from efficientformer.cli import dense as dense_cli
from efficientformer.utils.io import safe_torch_load

torch.set_num_threads(1)


def _cli(argv):
    parser = argparse.ArgumentParser(prog="efficientformer")
    dense_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "dense"
DET_FAST = ["--config", str(CONFIGS / "toy_detect.yaml")]
SEG_FAST = ["--config", str(CONFIGS / "toy_segment.yaml")]


@pytest.mark.slow
def test_detection_learns_evaluates_predicts(tmp_path):
    pytest.importorskip("pycocotools")
    data, out = tmp_path / "coco", tmp_path / "run"
    assert _cli(["detect", "synth", "--output", str(data), "--train", "64", "--val", "16", "--size", "128"]) == 0
    argv = ["detect", "train", "--data", str(data), "--output", str(out), "--model", "efficientformerv2_s0"]
    assert _cli(argv + DET_FAST) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["bbox_AP50"] >= 0.5, metrics
    assert metrics["segm_AP50"] >= 0.5, metrics

    ckpt = safe_torch_load(out / "last.pth")  # weights_only=True
    assert {"model", "optimizer", "scheduler", "progress", "rng", "config"} <= set(ckpt)
    assert ckpt["progress"]["iteration"] == 64 and ckpt["progress"]["epoch"] == 4
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["kind"] == "epoch" and any(r["kind"] == "train" for r in log)
    assert [r for r in log if r["kind"] == "eval"][-1]["bbox_AP50"] == pytest.approx(metrics["bbox_AP50"])

    # eval from the checkpoint reproduces the training-time evaluation
    assert _cli(["detect", "eval", "--checkpoint", str(out / "last.pth"), "--output", str(tmp_path / "m.json")]) == 0
    again = json.loads((tmp_path / "m.json").read_text())
    assert again["bbox_AP"] == pytest.approx(metrics["bbox_AP"])

    # rerunning with the same output dir resumes: nothing left to train
    assert _cli(argv + DET_FAST) == 0
    assert safe_torch_load(out / "last.pth")["progress"]["iteration"] == 64

    image = next((data / "images" / "val").iterdir())
    png = tmp_path / "pred.png"
    assert (
        _cli(["detect", "predict", "--checkpoint", str(out / "last.pth"), "--image", str(image), "--output", str(png)])
        == 0
    )
    drawn, orig = Image.open(png), Image.open(image)
    assert drawn.size == orig.size
    assert not np.array_equal(np.asarray(drawn.convert("RGB")), np.asarray(orig.convert("RGB")))


@pytest.mark.slow
def test_segmentation_learns_evaluates_predicts(tmp_path):
    data, out = tmp_path / "ade", tmp_path / "run"
    assert _cli(["segment", "synth", "--output", str(data), "--train", "64", "--val", "16", "--size", "128"]) == 0
    argv = ["segment", "train", "--data", str(data), "--output", str(out), "--model", "efficientformerv2_s0"]
    assert _cli(argv + SEG_FAST) == 0
    metrics = json.loads((out / "metrics.json").read_text())

    # all-background baseline on the same validation labels (after reduce_zero_label: background = 0)
    bg_share = []
    for p in sorted((data / "annotations" / "validation").iterdir()):
        lab = np.asarray(Image.open(p))
        bg_share.append(((lab == 1).sum(), (lab > 0).sum()))
    bg, total = map(sum, zip(*bg_share, strict=True))
    baseline = (bg / total) / 4  # IoU of background = its pixel share, the other three classes 0
    assert metrics["mIoU"] >= 0.5 and metrics["mIoU"] > 2 * baseline, (metrics, baseline)
    assert metrics["aAcc"] > bg / total

    assert _cli(["segment", "eval", "--checkpoint", str(out / "last.pth"), "--output", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["mIoU"] == pytest.approx(metrics["mIoU"])

    image = next((data / "images" / "validation").iterdir())
    png = tmp_path / "overlay.png"
    assert (
        _cli(["segment", "predict", "--checkpoint", str(out / "last.pth"), "--image", str(image), "--output", str(png)])
        == 0
    )
    assert Image.open(png).size == Image.open(image).size


def test_segmentation_resume_is_exact(tmp_path):
    """2 iterations + resume to 4 gives bit-identical weights to 4 straight iterations (constant lr)."""
    from efficientformer.dense.synthetic import make_ade

    data = make_ade(tmp_path / "ade", train=4, val=1, size=64, seed=2)
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
    assert _cli(["segment", "train", "--output", str(straight), *common, "steps=4"]) == 0
    assert _cli(["segment", "train", "--output", str(resumed), *common, "steps=2"]) == 0
    assert safe_torch_load(resumed / "last.pth")["progress"]["iteration"] == 2
    assert _cli(["segment", "train", "--output", str(resumed), *common, "steps=4"]) == 0
    a, b = safe_torch_load(straight / "last.pth"), safe_torch_load(resumed / "last.pth")
    assert b["progress"]["iteration"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_segmentation_signal_mid_epoch_then_resume_is_exact(tmp_path, monkeypatch):
    """SIGTERM during step 7 (epoch 2 of 4 steps): the dense run finishes the step, writes a mid-epoch checkpoint and
    stops with exit status 75 (the runtime's loop, as for classification); the same command resumes and ends with
    the weights, optimiser state and log of 10 straight steps (constant lr, 2 loader workers)."""
    import os
    import signal

    from efficientformer.dense import loops
    from efficientformer.dense.synthetic import make_ade
    from efficientformer.runtime.signals import PREEMPTED_EXIT_CODE, Preempted

    data = make_ade(tmp_path / "ade", train=8, val=1, size=64, seed=3)
    common = [
        "--data",
        str(data),
        "--model",
        "efficientformerv2_s0",
        "num_classes=4",
        "crop_size=64",
        "scale=128,64",
        "batch_size=2",
        "workers=2",
        "threads=1",
        "fpn_channels=16",
        "head_channels=8",
        "poly_power=0",
        "eval_every=0",
        "steps=10",
        "log_every=1",
    ]
    straight, stopped = tmp_path / "a", tmp_path / "b"
    assert _cli(["segment", "train", "--output", str(straight), *common]) == 0
    real_fit = loops.fit

    def fit(plan):
        real_step, calls = plan.task.step, []

        def step(model, batch):
            calls.append(1)
            if len(calls) == 7:
                os.kill(os.getpid(), signal.SIGTERM)
            return real_step(model, batch)

        plan.task.step = step
        return real_fit(plan)

    monkeypatch.setattr(loops, "fit", fit)
    with pytest.raises(Preempted) as preempted:
        _cli(["segment", "train", "--output", str(stopped), *common])
    assert preempted.value.code == PREEMPTED_EXIT_CODE and "stopped by SIGTERM after iteration 7 of 10" in str(
        preempted.value
    )
    mid = safe_torch_load(stopped / "last.pth")["progress"]
    assert (mid["iteration"], mid["epoch"], mid["epoch_batches"]) == (7, 1, 3)
    monkeypatch.undo()
    assert _cli(["segment", "train", "--output", str(stopped), *common]) == 0
    a, b = safe_torch_load(straight / "last.pth"), safe_torch_load(stopped / "last.pth")
    assert a["progress"]["iteration"] == b["progress"]["iteration"] == 10
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for i, group in a["optimizer"]["state"].items():
        assert all(
            torch.equal(torch.as_tensor(v), torch.as_tensor(b["optimizer"]["state"][i][n])) for n, v in group.items()
        )
    logs = [[json.loads(line) for line in (d / "log.jsonl").read_text().splitlines()] for d in (straight, stopped)]
    assert [r["loss"] for r in logs[0] if r.get("kind") == "train"] == [
        r["loss"] for r in logs[1] if r.get("kind") == "train"
    ]


def test_detection_resume_mid_epoch_is_exact(tmp_path):
    """3 iterations (stopping inside epoch 2) + resume to 4 gives the weights of 4 straight iterations."""
    pytest.importorskip("pycocotools")
    from efficientformer.dense.synthetic import make_coco

    data = make_coco(tmp_path / "coco", train=4, val=1, size=64, seed=2)
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
    assert _cli(["detect", "train", "--output", str(straight), *common]) == 0
    assert _cli(["detect", "train", "--output", str(resumed), *common, "steps=3"]) == 0
    mid = safe_torch_load(resumed / "last.pth")["progress"]
    assert (mid["iteration"], mid["epoch"], mid["epoch_iter"]) == (3, 1, 1)
    assert _cli(["detect", "train", "--output", str(resumed), *common]) == 0
    a, b = safe_torch_load(straight / "last.pth"), safe_torch_load(resumed / "last.pth")
    assert a["progress"]["iteration"] == b["progress"]["iteration"] == 4 and b["progress"]["epoch"] == 2
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_segmentation_same_data_with_loader_workers(tmp_path):
    """Augmentation is seeded per sample, so 2 loader worker processes train exactly like the main process alone."""
    from efficientformer.dense.synthetic import make_ade

    data = make_ade(tmp_path / "ade", train=4, val=1, size=64, seed=4)
    common = [
        "--data",
        str(data),
        "--model",
        "efficientformerv2_s0",
        "num_classes=4",
        "crop_size=64",
        "scale=128,64",
        "batch_size=2",
        "threads=1",
        "fpn_channels=16",
        "head_channels=8",
        "steps=2",
        "eval_every=0",
    ]
    assert _cli(["segment", "train", "--output", str(tmp_path / "w0"), *common, "workers=0"]) == 0
    assert _cli(["segment", "train", "--output", str(tmp_path / "w2"), *common, "workers=2"]) == 0
    a, b = safe_torch_load(tmp_path / "w0" / "last.pth"), safe_torch_load(tmp_path / "w2" / "last.pth")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
