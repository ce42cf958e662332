"""``efficientformer detect ...`` and ``efficientformer segment ...``: train, eval, predict, and a toy-data maker.

Configuration: dataclass defaults (the official recipes), then ``--config file.yaml``, then the flags, then
``key=value`` overrides, e.g. ``efficientformer segment train --data toy --output runs/seg steps=300 crop_size=128``.
Multi-process: ``torchrun --nproc_per_node=N -m efficientformer detect train ...`` (gloo on CPU, NCCL on GPU);
``eval`` runs under torchrun too, each process scoring a share of the images.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..dense import loops, synthetic
from ..dense.detection import DetectConfig
from ..dense.segmentation import SegmentConfig
from ..runtime.config import config_help, load_config
from ..utils.io import atomic_write_text


@dataclass(frozen=True)
class _Task:
    """How one task appears on the command line. Functions are named, not imported, so that ``loops`` (and its
    dependencies) load only when a command runs."""

    name: str
    help: str
    train: str  # loops function names
    evaluate: str
    predict_help: str
    synth: str  # synthetic function name
    synth_format: str
    synth_note: str
    example: str


TASKS = (
    _Task(
        name="detect",
        help="Mask R-CNN detection / instance segmentation on COCO-format data",
        train="train_detection",
        evaluate="eval_detection",
        predict_help="draw boxes and masks on an image, write a PNG",
        synth="make_coco",
        synth_format="COCO-format",
        synth_note="3 classes",
        example="efficientformer detect train --data toy_coco --output runs/det --model efficientformerv2_s0 "
        "min_size=128 max_size=192 epochs=4",
    ),
    _Task(
        name="segment",
        help="Semantic FPN segmentation on ADE20K-format data",
        train="train_segmentation",
        evaluate="eval_segmentation",
        predict_help="write a colour overlay PNG of the predicted classes",
        synth="make_ade",
        synth_format="ADE20K-format",
        synth_note="use num_classes=4",
        example="efficientformer segment train --data toy_ade --output runs/seg --model efficientformerv2_s0 "
        "num_classes=4 steps=300 crop_size=128 scale=512,128",
    ),
)


def register(subparsers: Any) -> None:
    """Add ``detect`` and ``segment`` (each with train / eval / predict / synth) to a top-level subparser set."""
    configs = {"detect": DetectConfig, "segment": SegmentConfig}
    for task in TASKS:
        top = subparsers.add_parser(task.name, help=task.help)
        sub = top.add_subparsers(dest="action", metavar="ACTION")
        top.set_defaults(func=lambda a, p=top: _missing_action(p))
        cls = configs[task.name]

        p = sub.add_parser(
            "train",
            help="train (resumes when the output directory holds last.pth)",
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog=f"example:\n  {task.example}\n\nconfig keys (key=value):\n{config_help(cls)}",
        )
        p.add_argument("--data", help="data set root")
        p.add_argument("--output", help="output directory (checkpoints, log.jsonl, metrics.json)")
        p.add_argument("--model", help="backbone name, e.g. efficientformerv2_s0")
        p.add_argument("--pretrained", help="ImageNet checkpoint for the backbone (any supported layout)")
        p.add_argument("--config", help="YAML file of config keys")
        p.add_argument("--device", help="auto, cpu or cuda")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
        p.set_defaults(func=_train, task=task, config_cls=cls)

        p = sub.add_parser("eval", help="evaluate a checkpoint on a split (torchrun: the images are shared out)")
        p.add_argument("--checkpoint", required=True, help="last.pth written by train")
        p.add_argument("--data", default="", help="data set root (default: the one the checkpoint was trained on)")
        p.add_argument("--split", default="", help="split name (default: the checkpoint's val_split)")
        p.add_argument("--output", help="also write the metrics to this JSON file")
        p.add_argument("--device", default="auto")
        p.set_defaults(func=_eval, task=task)

        p = sub.add_parser("predict", help=task.predict_help)
        p.add_argument("--checkpoint", required=True)
        p.add_argument("--image", required=True)
        p.add_argument("--output", required=True, help="PNG to write")
        if task.name == "detect":
            p.add_argument("--threshold", type=float, default=None, help="score threshold (default: score_threshold)")
        p.add_argument("--device", default="auto")
        p.set_defaults(func=_predict, task=task)

        p = sub.add_parser(
            "synth", help=f"write a small {task.synth_format} data set of textured shapes on photos (for tests)"
        )
        p.add_argument("--output", required=True, help="directory to create")
        p.add_argument("--train", type=int, default=64, help="training images")
        p.add_argument("--val", type=int, default=16, help="validation images")
        p.add_argument("--size", type=int, default=128, help="nominal image side (sizes vary around it)")
        p.add_argument("--seed", type=int, default=0)
        p.set_defaults(func=_synth, task=task)


def _missing_action(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _is_main_process() -> bool:
    # Under torchrun every process gets the same metrics; only the first prints and writes them.
    return int(os.environ.get("RANK", "0")) == 0


def _train(args: argparse.Namespace) -> int:
    flags = {k: getattr(args, k) for k in ("data", "output", "model", "pretrained", "device")}
    cfg = load_config(args.config_cls, args.config, list(args.overrides or []), **flags)
    metrics = getattr(loops, args.task.train)(cfg)
    if metrics and _is_main_process():
        # per-class IoU lists are in metrics.json; the summary line keeps the scalars
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items() if k != "IoU"}))
    return 0


def _eval(args: argparse.Namespace) -> int:
    metrics = getattr(loops, args.task.evaluate)(args.checkpoint, args.data, args.split, args.device)
    if _is_main_process():
        text = json.dumps(metrics, indent=2)
        print(text)
        if args.output:
            atomic_write_text(Path(args.output), text + "\n")
    return 0


def _predict(args: argparse.Namespace) -> int:
    if args.task.name == "detect":
        n = loops.predict_detection(args.checkpoint, args.image, args.output, args.threshold, args.device)
        print(f"wrote {args.output} ({n} detections drawn)")
    else:
        shares = loops.predict_segmentation(args.checkpoint, args.image, args.output, args.device)
        print(f"wrote {args.output}; predicted class shares: {json.dumps(shares)}")
    return 0


def _synth(args: argparse.Namespace) -> int:
    make = getattr(synthetic, args.task.synth)
    root = make(args.output, train=args.train, val=args.val, size=args.size, seed=args.seed)
    print(
        f"wrote a {args.task.synth_format} set to {root} ({args.train} train / {args.val} val images, "
        f"{args.task.synth_note})"
    )
    return 0
