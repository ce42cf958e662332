"""``efficientformer detect ...`` and ``efficientformer segment ...``: train, eval, predict, and a toy-data maker.

Configuration: dataclass defaults (the official recipes), then ``--config file.yaml``, then the flags, then
``key=value`` overrides, e.g. ``efficientformer segment train --data toy --output runs/seg iters=300 crop_size=128``.
Multi-process: ``torchrun --nproc_per_node=N -m efficientformer detect train ...`` (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .engine import build_config, config_help


def _add_train(sub, cls, func, example: str) -> None:
    p = sub.add_parser(
        "train",
        help="train (resumes when the output directory holds last.pth)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"example:\n  {example}\n\nconfig keys (key=value):\n{config_help(cls)}",
    )
    p.add_argument("--data", help="data set root")
    p.add_argument("--output", help="output directory (checkpoints, log.jsonl, metrics.json)")
    p.add_argument("--model", help="backbone name, e.g. efficientformerv2_s0")
    p.add_argument("--pretrained", help="ImageNet checkpoint for the backbone (any supported layout)")
    p.add_argument("--config", help="YAML file of config keys")
    p.add_argument("--device", help="auto, cpu or cuda")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=func, config_cls=cls)


def _add_eval(sub, func) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint on a split")
    p.add_argument("--checkpoint", required=True, help="last.pth written by train")
    p.add_argument("--data", default="", help="data set root (default: the one the checkpoint was trained on)")
    p.add_argument("--split", default="", help="split name (default: the checkpoint's val_split)")
    p.add_argument("--output", help="also write the metrics to this JSON file")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=func)


def _add_synth(sub, func, what: str) -> None:
    p = sub.add_parser("synth", help=f"write a small {what} data set of textured shapes on photos (for tests)")
    p.add_argument("--output", required=True, help="directory to create")
    p.add_argument("--train", type=int, default=64, help="training images")
    p.add_argument("--val", type=int, default=16, help="validation images")
    p.add_argument("--size", type=int, default=128, help="nominal image side (sizes vary around it)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=func)


def register(subparsers) -> None:
    from .detection import DetectConfig
    from .segmentation import SegmentConfig

    d = subparsers.add_parser("detect", help="Mask R-CNN detection / instance segmentation on COCO-format data")
    dsub = d.add_subparsers(dest="action", metavar="ACTION")
    d.set_defaults(func=lambda a: _missing_action(d))
    _add_train(dsub, DetectConfig, _detect_train,
               "efficientformer detect train --data toy_coco --output runs/det --model efficientformerv2_s0 "
               "min_size=128 max_size=192 epochs=4")  # fmt: skip
    _add_eval(dsub, _detect_eval)
    p = dsub.add_parser("predict", help="draw boxes and masks on an image, write a PNG")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--output", required=True, help="PNG to write")
    p.add_argument("--threshold", type=float, default=None, help="score threshold (default: score_threshold)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_detect_predict)
    _add_synth(dsub, _detect_synth, "COCO-format")

    s = subparsers.add_parser("segment", help="Semantic FPN segmentation on ADE20K-format data")
    ssub = s.add_subparsers(dest="action", metavar="ACTION")
    s.set_defaults(func=lambda a: _missing_action(s))
    _add_train(ssub, SegmentConfig, _segment_train,
               "efficientformer segment train --data toy_ade --output runs/seg --model efficientformerv2_s0 "
               "num_classes=4 iters=300 crop_size=128 scale=512,128")  # fmt: skip
    _add_eval(ssub, _segment_eval)
    p = ssub.add_parser("predict", help="write a colour overlay PNG of the predicted classes")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--output", required=True, help="PNG to write")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_segment_predict)
    _add_synth(ssub, _segment_synth, "ADE20K-format")


def _missing_action(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _config(args):
    flags = {k: getattr(args, k) for k in ("data", "output", "model", "pretrained", "device")}
    return build_config(args.config_cls, args.config, args.overrides, **flags)


def _report(metrics: dict, output: str | None) -> None:
    text = json.dumps(metrics, indent=2)
    print(text)
    if output:
        from ..utils.io import atomic_write_text

        atomic_write_text(Path(output), text + "\n")


def _detect_train(args) -> int:
    from .loops import train_detection

    metrics = train_detection(_config(args))
    if metrics:  # only the main process evaluates
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}))
    return 0


def _detect_eval(args) -> int:
    from .loops import eval_detection

    _report(eval_detection(args.checkpoint, args.data, args.split, args.device), args.output)
    return 0


def _detect_predict(args) -> int:
    from .loops import predict_detection

    n = predict_detection(args.checkpoint, args.image, args.output, args.threshold, args.device)
    print(f"wrote {args.output} ({n} detections drawn)")
    return 0


def _detect_synth(args) -> int:
    from .synthetic import make_coco

    root = make_coco(args.output, train=args.train, val=args.val, size=args.size, seed=args.seed)
    print(f"wrote a COCO-format set to {root} ({args.train} train / {args.val} val images, 3 classes)")
    return 0


def _segment_train(args) -> int:
    from .loops import train_segmentation

    metrics = train_segmentation(_config(args))
    if metrics:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items() if k != "IoU"}))
    return 0


def _segment_eval(args) -> int:
    from .loops import eval_segmentation

    _report(eval_segmentation(args.checkpoint, args.data, args.split, args.device), args.output)
    return 0


def _segment_predict(args) -> int:
    from .loops import predict_segmentation

    shares = predict_segmentation(args.checkpoint, args.image, args.output, args.device)
    print(f"wrote {args.output}; predicted class shares: {json.dumps(shares)}")
    return 0


def _segment_synth(args) -> int:
    from .synthetic import make_ade

    root = make_ade(args.output, train=args.train, val=args.val, size=args.size, seed=args.seed)
    print(f"wrote an ADE20K-format set to {root} ({args.train} train / {args.val} val images; use num_classes=4)")
    return 0
