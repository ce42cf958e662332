"""Distributed evaluation of the dense tasks: 2 gloo processes on CPU give exactly the metrics of one process.

Validation sets have 5 images (an odd count, so the ranks get unequal shares and any padding by duplication would
show up as extra detections / pixels). Detection is scored twice: with a 1-iteration checkpoint through
``eval_detection`` (what ``detect eval`` runs: the real model, batches of 2 padded together), and with an "oracle"
whose predictions are derived from the ground truth with some labels wrong, so that its AP is far from both 0 and 1
and dropping or repeating any image changes it. A 2-process training run then checks that its closing evaluation
(a collective) gives every rank the same metrics, and that these are the metrics of the checkpoint it saved.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from efficientformer.dense import detection as det
from efficientformer.dense import loops
from efficientformer.dense.detection import DetectConfig
from efficientformer.dense.segmentation import SegmentConfig

torch.set_num_threads(1)

TINY_DET = {
    "min_size": 64,
    "max_size": 96,
    "anchor_sizes": (8, 16, 32, 64, 128),
    "fpn_channels": 16,
    "box_head_dim": 32,
    "mask_head_channels": 8,
    "box_batch_size": 32,
    "rpn_batch_size": 32,
    "batch_size": 2,
    "workers": 0,
    "threads": 1,
    "epochs": 1,
    "steps": 1,
    "eval_every": 0,
    "model": "efficientformerv2_s0",
}
# V1 backbone here, so that the output norms take part
TINY_SEG = {
    "model": "efficientformer_l1",
    "num_classes": 4,
    "crop_size": 64,
    "scale": (128, 64),
    "steps": 1,
    "batch_size": 2,
    "workers": 0,
    "threads": 1,
    "fpn_channels": 16,
    "head_channels": 8,
    "eval_every": 0,
}


class Oracle(torch.nn.Module):
    """Predicts each image's ground truth (found by the image's content), about every third object with a wrong
    class and boxes shifted by a few pixels, scores decreasing; a stand-in detector with a mid-range AP."""

    def __init__(self, dataset: det.CocoInstances) -> None:
        super().__init__()
        self.truth = {}
        for i in range(len(dataset)):
            img, target = dataset[i]
            self.truth[self._key(img)] = target

    @staticmethod
    def _key(img: torch.Tensor) -> tuple:
        return tuple(img.shape) + (round(float(img.double().sum()), 3),)

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        outs = []
        for img in images:
            t = self.truth[self._key(img)]
            n = len(t["labels"])
            k = torch.arange(n)
            labels = torch.where((k + int(t["image_id"])) % 3 == 0, t["labels"] % 3 + 1, t["labels"])
            boxes = t["boxes"] + torch.stack([k % 4, k % 3, k % 4, k % 2], 1).float()
            outs.append(
                {
                    "boxes": boxes,
                    "labels": labels,
                    "scores": 0.9 - 0.1 * k.float(),
                    "masks": t["masks"][:, None].float(),
                }
            )
        return outs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_all(root: Path, rank: int = 0, world_size: int = 1) -> dict:
    """The evaluations under test, as one process of ``world_size`` would run them."""
    coco = det.CocoInstances(*det.coco_paths(root / "coco", "val"))
    return {
        "detect": loops.eval_detection(str(root / "det" / "last.pth"), "", "", "cpu"),
        "segment": loops.eval_segmentation(str(root / "seg" / "last.pth"), "", "", "cpu"),
        "oracle": det.detection_metrics(Oracle(coco), coco, torch.device("cpu"), 2, rank=rank, world_size=world_size),
    }


def _worker(rank: int, world_size: int, port: int, root: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank)
    )
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        result = _run_all(Path(root), rank, world_size)
        assert dist.is_initialized()  # eval_* used this group and left it alive
        # a DDP training run whose final evaluation is a collective: every rank must return the same metrics
        cfg = SegmentConfig(**{**TINY_SEG, "batch_size": 1, "data": f"{root}/ade", "output": f"{root}/seg_ddp"})
        result["segment_train"] = loops.train_segmentation(cfg)
        (Path(root) / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_process_evaluation_equals_one_process(tmp_path):
    pytest.importorskip("pycocotools")
    from efficientformer.dense.synthetic import make_ade, make_coco

    make_coco(tmp_path / "coco", train=2, val=5, size=64, seed=3)
    make_ade(tmp_path / "ade", train=2, val=5, size=64, seed=3)
    loops.train_detection(DetectConfig(**TINY_DET, data=str(tmp_path / "coco"), output=str(tmp_path / "det")))
    loops.train_segmentation(SegmentConfig(**TINY_SEG, data=str(tmp_path / "ade"), output=str(tmp_path / "seg")))

    single = json.loads(json.dumps(_run_all(tmp_path)))  # through JSON, as the workers' results are
    assert single["detect"]["detections"] > 0
    assert 0.2 < single["oracle"]["bbox_AP50"] < 0.95 and 0.2 < single["oracle"]["segm_AP"] < 0.95, single["oracle"]
    assert 0 < single["segment"]["aAcc"] < 1

    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r in ranks:
        for key in ("detect", "segment", "oracle"):
            assert r[key] == single[key], (key, r[key], single[key])
    assert ranks[0]["segment_train"] == ranks[1]["segment_train"] and "mIoU" in ranks[0]["segment_train"]
    assert json.loads((tmp_path / "seg_ddp" / "metrics.json").read_text())["mIoU"] == ranks[0]["segment_train"]["mIoU"]
    # ... and they are the metrics of the checkpoint it saved (rank 1 evaluated with rank 0's BatchNorm statistics)
    saved = loops.eval_segmentation(str(tmp_path / "seg_ddp" / "last.pth"), "", "", "cpu")
    assert json.loads(json.dumps(saved)) == ranks[0]["segment_train"]
