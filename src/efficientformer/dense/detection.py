"""Mask R-CNN with an EfficientFormer + FPN backbone: COCO-format data, training, COCO evaluation, drawing.

The detector is torchvision's ``MaskRCNN``; only the backbone is ours (four stage maps -> FPN with 256 channels
and a max-pooled fifth level, as in the official MMDetection configs). torchvision's transform resizes each image
keep-ratio to ``min_size`` x ``max_size`` (1333x800 by default), normalises with ImageNet statistics and pads the
batch to a multiple of 32; predictions come back in the original image coordinates.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from ..data.constants import IMAGENET_MEAN, IMAGENET_STD
from ..data.images import ImageLoadError, SkippedImageWarning, SkipsUnreadable, probe_image, read_rgb
from ..models.registry import family_of
from ..runtime.config import param
from ..runtime.distributed import all_gather_objects, shard
from .backbone import BackboneWithFPN
from .config import DenseConfig, check_increasing


def _require_pycocotools():
    try:
        from pycocotools import mask as mask_utils
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as err:
        raise ImportError(
            "COCO masks and evaluation need pycocotools; install it with: pip install pycocotools"
        ) from err
    return mask_utils, COCO, COCOeval


# -- configuration -----------------------------------------------------------------------------------------------
@dataclass
class DetectConfig(DenseConfig):
    """Defaults are the official Mask R-CNN 1x recipe (MMDetection configs of the EfficientFormer repo)."""

    RENAMED: ClassVar[dict[str, str]] = {**DenseConfig.RENAMED, "max_iters": "steps"}

    data: str = param("", help="COCO-format root: images/<split>/ + annotations/instances_<split>.json (or COCO 2017)")
    output: str = param("runs/detect")
    img_size: int = param(0, ge=0, help="grid the attention-bias tables are stored for; 0 = min_size")
    min_size: int = param(800, ge=32, help="short side of the resized image")
    max_size: int = param(1333, ge=32, help="long side bound of the resized image")
    hflip: float = param(0.5, ge=0.0, le=1.0, help="horizontal flip probability")
    anchor_sizes: tuple[int, ...] = param((32, 64, 128, 256, 512), ge=1, help="one per FPN level (5), increasing")
    box_head_dim: int = param(1024, ge=1, help="width of the two-FC box head (torchvision/MMDetection default 1024)")
    mask_head_channels: int = param(256, ge=1, help="channels of the four-conv mask head (default 256)")
    rpn_batch_size: int = param(256, ge=1)
    box_batch_size: int = param(512, ge=1)
    epochs: int = param(12, ge=1)
    lr_steps: tuple[int, ...] = param((8, 11), ge=0, help="epochs after which lr is multiplied by 0.1")
    lr: float = param(2e-4, gt=0.0)
    weight_decay: float | None = param(None, ge=0.0, help="None = 1e-4 for V1, 0.05 for V2 (official)")
    warmup_steps: int = param(500, ge=0, help="optimiser steps of linear warm-up")
    warmup_ratio: float = param(1e-6, gt=0.0, le=1.0)
    batch_size: int = param(2, ge=1, help="images per process")
    steps: int = param(0, ge=0, help="stop after this many optimiser steps (0 = all epochs); schedule follows epochs")
    eval_every: int = param(1, ge=0, help="evaluate every N epochs (0 = only at the end)")
    checkpoint_every: int = param(500, ge=0, help="optimiser steps between mid-epoch checkpoints (0: epoch ends only)")
    log_every: int = param(20, ge=1)
    score_threshold: float = param(0.5, ge=0.0, le=1.0, help="predict: draw detections at or above this score")

    def check(self) -> None:
        super().check()
        if self.max_size < self.min_size:
            raise ValueError(f"max_size ({self.max_size}) must be at least min_size ({self.min_size})")
        if len(self.anchor_sizes) != 5:
            raise ValueError(
                f"config key 'anchor_sizes' needs one size per FPN level (5), got {list(self.anchor_sizes)}"
            )
        check_increasing("anchor_sizes", self.anchor_sizes, 1)
        check_increasing("lr_steps", self.lr_steps, 0)  # steps past the last epoch are never reached: allowed

    def resolved_weight_decay(self) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        return 0.05 if family_of(self.model) == "v2" else 1e-4


# -- data --------------------------------------------------------------------------------------------------------
def coco_paths(root: str | Path, split: str) -> tuple[Path, Path]:
    """``(images_dir, annotation_json)`` for a split, trying our layout and the COCO 2017 one."""
    if not root:
        raise ValueError("no data set given; pass --data DIR (a COCO-format root, e.g. from `detect synth`)")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data directory not found: {root}")
    candidates = [
        (root / "images" / split, root / "annotations" / f"instances_{split}.json"),
        (root / f"{split}2017", root / "annotations" / f"instances_{split}2017.json"),
        (root / split, root / "annotations" / f"instances_{split}.json"),
    ]
    for images, ann in candidates:
        if images.is_dir() and ann.is_file():
            return images, ann
    raise FileNotFoundError(
        f"no COCO split {split!r} under {root}: expected images/{split}/ and annotations/instances_{split}.json "
        f"(or {split}2017/ and annotations/instances_{split}2017.json)"
    )


class CocoInstances(SkipsUnreadable, torch.utils.data.Dataset):
    """COCO instances: an image folder plus an instances JSON with polygon or RLE masks.

    Returns ``(image, target)``: image float (3, H, W) in [0, 1]; target ``boxes`` (N, 4) xyxy, ``labels`` (N,)
    in 1..K (0 is torchvision's background), ``masks`` (N, H, W) uint8, ``image_id``. Crowd regions are left out
    of training targets (COCO evaluation still treats them as ignore regions).

    The whole annotation file is checked when the data set is built (:func:`check_coco`): every problem (a listed
    image that is missing or unreadable, an annotation without a usable ``bbox``, a degenerate polygon, an unknown
    ``category_id`` or ``image_id``) is named with the file and its index in one warning, and left out, so a bad
    entry never stops training halfway. ``problems`` keeps the list; ``coco_json`` is the cleaned document that
    evaluation scores against. Images are decoded by the one reader (:func:`efficientformer.data.images.read_rgb`).
    An image that still fails to decode during training is skipped (named once, counted in ``skipped``) and the
    next one is used; during evaluation it is an error that names it.
    """

    def __init__(
        self,
        images_dir: Path,
        ann_file: Path,
        *,
        train: bool = False,
        flip_prob: float = 0.0,
        max_pixels: int | None = None,
    ) -> None:
        try:
            raw = json.loads(Path(ann_file).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{ann_file} is not valid JSON: {err}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{ann_file} is not a COCO instances file: the top level is not an object")
        for key in ("images", "annotations", "categories"):
            if not isinstance(raw.get(key), list):
                raise ValueError(f"{ann_file} is not a COCO instances file: no {key!r} list")
        self.images_dir = Path(images_dir)
        self.ann_file = Path(ann_file)
        self.train, self.flip_prob, self.max_pixels = train, flip_prob, max_pixels
        self.coco_json, self.problems = check_coco(raw, self.images_dir, self.ann_file, max_pixels=max_pixels)
        if self.problems:
            warnings.warn(
                f"{ann_file}: {len(self.problems)} problem(s), left out: " + "; ".join(self.problems),
                SkippedImageWarning,
                stacklevel=2,
            )
        if not self.coco_json["images"]:
            raise ValueError(f"{ann_file}: no usable images left after the checks ({len(self.problems)} problems)")
        cats = sorted(self.coco_json["categories"], key=lambda c: c["id"])
        self.cat_ids = [c["id"] for c in cats]
        self.class_names = [str(c["name"]) for c in cats]
        self.cat_to_label = {cid: i + 1 for i, cid in enumerate(self.cat_ids)}
        self.images = sorted(self.coco_json["images"], key=lambda im: im["id"])
        self.anns: dict[int, list[dict]] = {im["id"]: [] for im in self.images}
        for ann in self.coco_json["annotations"]:
            self.anns[ann["image_id"]].append(ann)
        self.skipped = 0

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    def __len__(self) -> int:
        return len(self.images)

    def load_image(self, index: int) -> Image.Image:
        return read_rgb(self.images_dir / self.images[index]["file_name"], max_pixels=self.max_pixels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.first_readable(self._item, index, len(self))

    def _item(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mask_utils, _, _ = _require_pycocotools()
        info = self.images[index]
        img = self.load_image(index)
        w, h = img.size
        boxes, labels, masks = [], [], []
        for ann in self.anns.get(info["id"], []):
            if ann.get("iscrowd", 0):
                continue
            x, y, bw, bh = ann["bbox"]
            if bw < 1 or bh < 1:
                continue
            boxes.append([x, y, x + bw, y + bh])
            labels.append(self.cat_to_label[ann["category_id"]])
            masks.append(decode_segmentation(mask_utils, ann["segmentation"], h, w))
        image = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, h, w), dtype=torch.uint8),
            "image_id": torch.tensor(info["id"]),
        }
        if self.train and self.flip_prob > 0 and torch.rand(()) < self.flip_prob:
            image = image.flip(-1)
            target["masks"] = target["masks"].flip(-1)
            b = target["boxes"].clone()
            target["boxes"][:, 0], target["boxes"][:, 2] = w - b[:, 2], w - b[:, 0]
        return image, target


def _finite_numbers(value: Any, count: int | None = None) -> bool:
    if not isinstance(value, (list, tuple)) or (count is not None and len(value) != count):
        return False
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)


def _segmentation_problem(segm: Any) -> str | None:
    """Why ``segm`` cannot be decoded into a mask, or None."""
    if isinstance(segm, list):
        if not segm:
            return "empty polygon list"
        for k, poly in enumerate(segm):
            if not _finite_numbers(poly):
                return f"polygon {k} is not a list of numbers"
            if len(poly) < 6 or len(poly) % 2:
                return f"polygon {k} has {len(poly)} coordinates; a polygon needs at least 3 (x, y) points"
        return None
    if isinstance(segm, dict):
        size, counts = segm.get("size"), segm.get("counts")
        if not _finite_numbers(size, 2) or not isinstance(counts, (list, str)):
            return "RLE needs 'size' [h, w] and 'counts'"
        return None
    return f"unsupported segmentation of type {type(segm).__name__}"


def check_coco(
    doc: dict, images_dir: Path, ann_file: Path, *, max_pixels: int | None = None, check_files: bool = True
) -> tuple[dict, list[str]]:
    """Check a whole COCO instances document up front; returns ``(cleaned document, problems)``.

    Each problem is one line naming the file and the entry's index (``images[3]``, ``annotations[17]``) and what is
    wrong. Bad entries are left out of the cleaned document: images whose file is missing or unreadable (its header
    and structure are checked, see :func:`~efficientformer.data.images.probe_image`) together with their
    annotations, and annotations with no usable ``bbox``, a degenerate or missing segmentation, an unknown
    ``category_id`` or an ``image_id`` that is not listed.
    """
    problems: list[str] = []
    categories = []
    for i, cat in enumerate(doc["categories"]):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or "name" not in cat:
            problems.append(f"{ann_file}: categories[{i}]: needs an integer 'id' and a 'name'")
        elif any(c["id"] == cat["id"] for c in categories):
            problems.append(f"{ann_file}: categories[{i}]: duplicate id {cat['id']}")
        else:
            categories.append(cat)
    cat_ids = {c["id"] for c in categories}
    images, image_ids, dropped_ids = [], set(), set()
    for i, im in enumerate(doc["images"]):
        if not isinstance(im, dict) or not isinstance(im.get("id"), int) or not isinstance(im.get("file_name"), str):
            problems.append(f"{ann_file}: images[{i}]: needs an integer 'id' and a 'file_name'")
            continue
        where = f"{ann_file}: images[{i}] (id {im['id']}, {im['file_name']})"
        if im["id"] in image_ids or im["id"] in dropped_ids:
            problems.append(f"{where}: duplicate image id")
            continue
        if check_files:
            try:
                probe_image(images_dir / im["file_name"], max_pixels=max_pixels)
            except ImageLoadError as err:
                problems.append(f"{where}: {err.reason}" + (f" ({err.source})" if err.reason == "no such file" else ""))
                dropped_ids.add(im["id"])
                continue
        images.append(im)
        image_ids.add(im["id"])
    annotations = []
    for j, ann in enumerate(doc["annotations"]):
        if not isinstance(ann, dict):
            problems.append(f"{ann_file}: annotations[{j}]: not an object")
            continue
        where = f"{ann_file}: annotations[{j}] (id {ann.get('id')}, image_id {ann.get('image_id')})"
        if ann.get("image_id") in dropped_ids:
            continue  # its image was reported and left out above
        if ann.get("image_id") not in image_ids:
            problems.append(f"{where}: image_id is not listed in 'images'")
        elif ann.get("category_id") not in cat_ids:
            problems.append(f"{where}: unknown category_id {ann.get('category_id')!r} (not in 'categories')")
        elif "bbox" not in ann:
            problems.append(f"{where}: no 'bbox'")
        elif not _finite_numbers(ann["bbox"], 4) or ann["bbox"][2] < 0 or ann["bbox"][3] < 0:
            problems.append(f"{where}: bbox {ann['bbox']!r} is not [x, y, width >= 0, height >= 0]")
        elif "segmentation" not in ann:
            problems.append(f"{where}: no 'segmentation' (Mask R-CNN needs a mask per object)")
        elif (why := _segmentation_problem(ann["segmentation"])) is not None:
            problems.append(f"{where}: {why}")
        else:
            annotations.append(ann)
    cleaned = {**doc, "images": images, "annotations": annotations, "categories": categories}
    return cleaned, problems


def decode_segmentation(mask_utils, segm: Any, h: int, w: int) -> np.ndarray:
    """Polygon list, uncompressed RLE or compressed RLE -> (h, w) uint8 mask."""
    if isinstance(segm, list):
        rles = mask_utils.frPyObjects(segm, h, w)
        rle = mask_utils.merge(rles)
    elif isinstance(segm, dict) and isinstance(segm.get("counts"), list):
        rle = mask_utils.frPyObjects(segm, h, w)
    elif isinstance(segm, dict):
        rle = dict(segm)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    else:
        raise ValueError(f"unsupported segmentation format: {type(segm).__name__}")
    return mask_utils.decode(rle).astype(np.uint8)


def collate(batch: list) -> tuple[list, list]:
    return [b[0] for b in batch], [b[1] for b in batch]


# -- model -------------------------------------------------------------------------------------------------------
def build_mask_rcnn(cfg: DetectConfig, num_classes: int) -> torch.nn.Module:
    """Mask R-CNN (torchvision) on EfficientFormer + FPN (256 channels, 5 levels). ``num_classes`` excludes bg."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    if len(cfg.anchor_sizes) != 5:
        raise ValueError(f"anchor_sizes needs one size per FPN level (5), got {cfg.anchor_sizes}")
    backbone = cfg.build_backbone(cfg.min_size)
    anchors = AnchorGenerator(sizes=tuple((s,) for s in cfg.anchor_sizes), aspect_ratios=((0.5, 1.0, 2.0),) * 5)
    return MaskRCNN(
        BackboneWithFPN(backbone, cfg.fpn_channels, extra_pool=True),
        min_size=cfg.min_size,
        max_size=cfg.max_size,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        rpn_anchor_generator=anchors,
        rpn_batch_size_per_image=cfg.rpn_batch_size,
        box_batch_size_per_image=cfg.box_batch_size,
        box_head=TwoMLPHead(cfg.fpn_channels * 7 * 7, cfg.box_head_dim),
        box_predictor=FastRCNNPredictor(cfg.box_head_dim, num_classes + 1),
        mask_head=MaskRCNNHeads(cfg.fpn_channels, (cfg.mask_head_channels,) * 4, 1),
        mask_predictor=MaskRCNNPredictor(cfg.mask_head_channels, cfg.mask_head_channels, num_classes + 1),
    )


# -- evaluation --------------------------------------------------------------------------------------------------
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def predictions_to_coco(output: dict[str, torch.Tensor], image_id: int, cat_ids: list[int]) -> list[dict]:
    """One image's torchvision output -> COCO result records (bbox xywh + RLE mask)."""
    mask_utils, _, _ = _require_pycocotools()
    results = []
    boxes = output["boxes"].detach().cpu().numpy()
    scores = output["scores"].detach().cpu().numpy()
    labels = output["labels"].detach().cpu().numpy()
    masks = output.get("masks")
    masks = (masks[:, 0] > 0.5).cpu().numpy().astype(np.uint8) if masks is not None else None
    for k in range(len(scores)):
        x0, y0, x1, y1 = boxes[k].tolist()
        rec = {
            "image_id": int(image_id),
            "category_id": int(cat_ids[int(labels[k]) - 1]),
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "score": float(scores[k]),
        }
        if masks is not None:
            rle = mask_utils.encode(np.asfortranarray(masks[k]))
            rle["counts"] = rle["counts"].decode("ascii")
            rec["segmentation"] = rle
        results.append(rec)
    return results


def coco_evaluate(gt: dict, results: list[dict], iou_types: tuple[str, ...] = ("bbox", "segm")) -> dict[str, float]:
    """COCO AP (pycocotools) for each IoU type; keys like ``bbox_AP``, ``segm_AP50``. No detections -> zeros."""
    _, COCO, COCOeval = _require_pycocotools()
    metrics: dict[str, float] = {}
    if not results:
        return {f"{t}_{m}": 0.0 for t in iou_types for m in METRIC_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {k: gt[k] for k in ("images", "annotations", "categories")}
        coco_gt.createIndex()
        for t in iou_types:
            if t == "bbox":
                recs = [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
            else:
                # Without "bbox", pycocotools takes a detection's area from its mask, so mask AP by object size
                # (APs/APm/APl) buckets detections by mask area, as MMDetection and Detectron2 do; with it, a thin
                # diagonal mask would count as a large object.
                recs = [{k: v for k, v in r.items() if k != "bbox"} for r in results if "segmentation" in r]
            if not recs:
                metrics.update({f"{t}_{m}": 0.0 for m in METRIC_NAMES})
                continue
            coco_dt = coco_gt.loadRes(recs)
            ev = COCOeval(coco_gt, coco_dt, iouType=t)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            for name, value in zip(METRIC_NAMES, ev.stats[:6], strict=True):
                metrics[f"{t}_{name}"] = max(0.0, float(value))  # -1 means "no such objects": report 0
    return metrics


@torch.no_grad()
def detection_metrics(
    model: torch.nn.Module,
    dataset: CocoInstances,
    device: torch.device,
    batch_size: int = 2,
    *,
    rank: int = 0,
    world_size: int = 1,
) -> dict:
    """COCO box and mask AP on ``dataset``. With ``world_size > 1`` (an initialised process group) each rank runs
    a share of the batches, the result lists are gathered, and every rank returns the same metrics."""
    model.eval()
    # Shard whole batches, not images: torchvision pads each batch to its largest image, so a different batch
    # composition would change the outputs and the metrics would depend on the number of processes.
    batches = [range(s, min(len(dataset), s + batch_size)) for s in range(0, len(dataset), batch_size)]
    results: list[dict] = []
    for batch in shard(batches, rank, world_size):
        items = [dataset[i] for i in batch]
        outputs = model([img.to(device) for img, _ in items])
        for (_, target), out in zip(items, outputs, strict=True):
            results += predictions_to_coco(out, int(target["image_id"]), dataset.cat_ids)
    # Stable sort by image: the merged list is in one process's order (COCOeval's tie-breaking depends on it).
    results = sorted((r for part in all_gather_objects(results) for r in part), key=lambda r: r["image_id"])
    metrics = coco_evaluate(dataset.coco_json, results)
    metrics["detections"] = len(results)
    return metrics


# -- drawing -----------------------------------------------------------------------------------------------------
PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (170, 110, 40),
]


def draw_detections(
    image: Image.Image, output: dict[str, torch.Tensor], class_names: list[str], threshold: float = 0.5
) -> tuple[Image.Image, int]:
    """Boxes, labels and translucent masks drawn on a copy of ``image``; returns it and the number drawn."""
    from PIL import ImageDraw

    canvas = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    keep = (output["scores"] >= threshold).nonzero().flatten().tolist()
    for k in keep:
        colour = np.array(PALETTE[int(output["labels"][k]) % len(PALETTE)], np.float32)
        if "masks" in output:
            m = (output["masks"][k, 0] > 0.5).cpu().numpy()
            canvas[m] = 0.5 * canvas[m] + 0.5 * colour
    out = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    for k in keep:
        label = int(output["labels"][k])
        colour = PALETTE[label % len(PALETTE)]
        x0, y0, x1, y1 = output["boxes"][k].tolist()
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=2)
        name = class_names[label - 1] if 0 < label <= len(class_names) else str(label)
        draw.text((x0 + 2, max(0, y0 - 11)), f"{name} {float(output['scores'][k]):.2f}", fill=colour)
    return out, len(keep)


def iterations_per_epoch(num_images: int, batch_size: int, world_size: int) -> int:
    return math.ceil(math.ceil(num_images / world_size) / batch_size)


def __getattr__(name: str) -> Any:
    # evaluate was defined for each task (classification, detection, segmentation); each now names its task
    if name == "evaluate":
        warnings.warn(
            "efficientformer.dense.detection.evaluate is deprecated; "
            "use efficientformer.dense.detection.detection_metrics",
            DeprecationWarning,
            stacklevel=2,
        )
        return detection_metrics
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
