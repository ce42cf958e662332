"""Dense tasks learn, resume and predict end to end through the CLI (CPU, small synthetic data sets).

Bars (random-init efficientformerv2_s0, one CPU thread):
* detection: 64 images at ~128 px, 64 iterations (4 epochs x 16, batch 4): box AP50 >= 0.5 and mask AP50 >= 0.5
  (an untrained detector scores ~0.0; measured ~0.8 here);
* segmentation: 64 images, 60 iterations, crop 128: mIoU >= 0.5 and > 2x the all-background mIoU (~0.22).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from efficientformer.dense import cli as dense_cli
from efficientformer.utils.io import safe_torch_load

torch.set_num_threads(1)


def _cli(argv):
    parser = argparse.ArgumentParser(prog="efficientformer")
    dense_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


DET_FAST = ["min_size=128", "max_size=192", "anchor_sizes=16,32,64,128,256", "fpn_channels=64", "box_head_dim=256",
            "mask_head_channels=64", "box_batch_size=64", "batch_size=4", "workers=0", "threads=1", "lr=1e-3",
            "warmup_iters=20"]  # fmt: skip
SEG_FAST = ["num_classes=4", "crop_size=128", "scale=512,128", "batch_size=4", "workers=0", "threads=1", "lr=1e-3"]


@pytest.mark.slow
def test_detection_learns_evaluates_predicts(tmp_path):
    pytest.importorskip("pycocotools")
    data, out = tmp_path / "coco", tmp_path / "run"
    assert _cli(["detect", "synth", "--output", str(data), "--train", "64", "--val", "16", "--size", "128"]) == 0
    argv = ["detect", "train", "--data", str(data), "--output", str(out), "--model", "efficientformerv2_s0"]
    assert _cli(argv + DET_FAST + ["epochs=4", "lr_steps=3", "eval_every=0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["bbox_AP50"] >= 0.5, metrics
    assert metrics["segm_AP50"] >= 0.5, metrics

    ckpt = safe_torch_load(out / "last.pth")  # weights_only=True
    assert {"model", "optimizer", "scheduler", "progress", "rng", "config"} <= set(ckpt)
    assert ckpt["progress"]["iteration"] == 64 and ckpt["progress"]["epoch"] == 4
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["kind"] == "eval" and any(r["kind"] == "train" for r in log)

    # eval from the checkpoint reproduces the training-time evaluation
    assert _cli(["detect", "eval", "--checkpoint", str(out / "last.pth"), "--output", str(tmp_path / "m.json")]) == 0
    again = json.loads((tmp_path / "m.json").read_text())
    assert again["bbox_AP"] == pytest.approx(metrics["bbox_AP"])

    # rerunning with the same output dir resumes: nothing left to train
    assert _cli(argv + DET_FAST + ["epochs=4", "lr_steps=3", "eval_every=0"]) == 0
    assert safe_torch_load(out / "last.pth")["progress"]["iteration"] == 64

    image = next((data / "images" / "val").iterdir())
    png = tmp_path / "pred.png"
    assert _cli(["detect", "predict", "--checkpoint", str(out / "last.pth"), "--image", str(image),
                 "--output", str(png)]) == 0  # fmt: skip
    drawn, orig = Image.open(png), Image.open(image)
    assert drawn.size == orig.size
    assert not np.array_equal(np.asarray(drawn.convert("RGB")), np.asarray(orig.convert("RGB")))


@pytest.mark.slow
def test_segmentation_learns_evaluates_predicts(tmp_path):
    data, out = tmp_path / "ade", tmp_path / "run"
    assert _cli(["segment", "synth", "--output", str(data), "--train", "64", "--val", "16", "--size", "128"]) == 0
    argv = ["segment", "train", "--data", str(data), "--output", str(out), "--model", "efficientformerv2_s0"]
    assert _cli(argv + SEG_FAST + ["iters=60", "eval_every=0", "checkpoint_every=30"]) == 0
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
    assert _cli(["segment", "predict", "--checkpoint", str(out / "last.pth"), "--image", str(image),
                 "--output", str(png)]) == 0  # fmt: skip
    assert Image.open(png).size == Image.open(image).size


def test_segmentation_resume_is_exact(tmp_path):
    """2 iterations + resume to 4 gives bit-identical weights to 4 straight iterations (constant lr)."""
    from efficientformer.dense.synthetic import make_ade

    data = make_ade(tmp_path / "ade", train=4, val=1, size=64, seed=2)
    common = ["--data", str(data), "--model", "efficientformerv2_s0", "num_classes=4", "crop_size=64",
              "scale=128,64", "batch_size=2", "workers=0", "threads=1", "fpn_channels=16", "head_channels=8",
              "poly_power=0", "eval_every=0", "checkpoint_every=1"]  # fmt: skip
    straight, resumed = tmp_path / "a", tmp_path / "b"
    assert _cli(["segment", "train", "--output", str(straight), *common, "iters=4"]) == 0
    assert _cli(["segment", "train", "--output", str(resumed), *common, "iters=2"]) == 0
    assert safe_torch_load(resumed / "last.pth")["progress"]["iteration"] == 2
    assert _cli(["segment", "train", "--output", str(resumed), *common, "iters=4"]) == 0
    a, b = safe_torch_load(straight / "last.pth"), safe_torch_load(resumed / "last.pth")
    assert b["progress"]["iteration"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
