"""Top-1 agreement of the reduced-precision paths with fp32 on held-out real images (goals 2 and 3).

    efficientformer train --output /tmp/digits_run        # the main job: V2-S0 on the bundled digits, 32 px
    python benchmarks/agreement.py --checkpoint /tmp/digits_run/best.pth \
        --data ~/.cache/efficientformer/digits-32px --img-size 32 --json benchmarks/results/agreement_digits.json

Paths: the deploy form compiled by Inductor in bf16 (``inductor-bf16``), PT2E INT8 with the x86 Inductor
quantizer (``pt2e-int8``, calibrated on ``--calib`` training images) and ONNX Runtime static INT8 (as
``efficientformer quantize`` makes it). Agreement = share of ``val/`` images whose top-1 class equals fp32's.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from efficientformer.deploy import deploy
from efficientformer.deploy.export import write_onnx
from efficientformer.deploy.inductor import compile_frozen
from efficientformer.deploy.pt2e import quantize_pt2e_x86
from efficientformer.deploy.quantize import list_images, load_image, quantize_static_qdq
from efficientformer.inference.api import checkpoint_num_classes
from efficientformer.models import create_model, load_checkpoint
from efficientformer.models.checkpoint import read_state_dict
from efficientformer.utils.timing import ort_session


def images(folder: Path, size: int, limit: int | None = None) -> torch.Tensor:
    files = list_images(folder)
    if limit:
        files = files[:: max(1, len(files) // limit)][:limit]
    return torch.from_numpy(np.stack([load_image(f, (size, size)) for f in files]))


def _agreement(pred: torch.Tensor, ref: torch.Tensor, labels: torch.Tensor) -> dict:
    return {"agreement_with_fp32": float((pred == ref).float().mean()), "top1": float((pred == labels).float().mean())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a trained checkpoint (e.g. the digits run's best.pth)")
    p.add_argument("--model", default="efficientformerv2_s0")
    p.add_argument("--data", required=True, help="folder with train/ (calibration) and val/ (held out)")
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--calib", type=int, default=64, help="calibration images from train/ (default 64)")
    p.add_argument(
        "--swap-act",
        default=None,
        choices=("relu", "hardswish"),
        help="build --model with this activation in place of every GELU and load the checkpoint's weights alone "
        "into it: the swapped model before any fine-tuning (docs/notes/int8_activation.md)",
    )
    p.add_argument(
        "--paths",
        default="inductor-bf16,pt2e-int8,onnxruntime-int8",
        help="comma-separated paths to score (default: all three)",
    )
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    torch.set_num_threads(2)
    data = Path(args.data).expanduser()
    weights = read_state_dict(args.checkpoint)[0]
    num_classes = checkpoint_num_classes(weights) or 1000
    if args.swap_act:  # the weights alone: the checkpoint's record of its (GELU) activation is set aside on purpose
        model = create_model(args.model, img_size=args.img_size, num_classes=num_classes, act=args.swap_act)
        load_checkpoint(model, weights)
    else:
        model = create_model(args.model, img_size=args.img_size, num_classes=num_classes, checkpoint=args.checkpoint)
    model.eval()
    val = images(data / "val", args.img_size)
    calib = images(data / "train", args.img_size, args.calib)
    labels = torch.tensor([int(f.parent.name) for f in list_images(data / "val")])
    fused = deploy(model)
    with torch.no_grad():
        ref = torch.cat([model(val[i : i + 1]) for i in range(len(val))]).argmax(1)
    one = val[:1]
    wanted = set(args.paths.split(","))
    build = {
        "inductor-bf16": lambda: compile_frozen(fused, one, "bf16"),
        "pt2e-int8": lambda: quantize_pt2e_x86(fused, one, [calib[i : i + 1] for i in range(len(calib))]),
    }
    paths = {name: make() for name, make in build.items() if name in wanted}
    preds = {name: torch.cat([m(val[i : i + 1]) for i in range(len(val))]).argmax(1) for name, m in paths.items()}
    if "onnxruntime-int8" in wanted:
        preds["onnxruntime-int8"] = ort_int8_predictions(fused, one, calib, val)
    _write(args, model, val, calib, ref, labels, preds)


def ort_int8_predictions(fused: torch.nn.Module, one: torch.Tensor, calib: torch.Tensor, val: torch.Tensor):
    """Top-1 classes of ONNX Runtime static INT8 (as `efficientformer quantize` makes it) on ``val``."""
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "m.onnx", Path(tmp) / "m.int8.onnx"
        write_onnx(fused, one, fp32)

        class Reader:
            def __init__(self) -> None:
                self.data = [{"image": calib[i : i + 1].numpy()} for i in range(len(calib))]

            def get_next(self):
                return self.data.pop() if self.data else None

        quantize_static_qdq(fp32, int8, Reader())
        sess = ort_session(int8, 2)
        return torch.tensor(
            [int(sess.run(None, {"image": val[i : i + 1].numpy()})[0].argmax()) for i in range(len(val))]
        )


def _write(args, model, val, calib, ref, labels, preds) -> None:
    result = {
        "model": model.name,
        "checkpoint": str(args.checkpoint),
        "swapped_from_gelu": bool(args.swap_act),
        "img_size": args.img_size,
        "val_images": len(val),
        "calibration_images": len(calib),
        "fp32_top1": float((ref == labels).float().mean()),
        "paths": {name: _agreement(pr, ref, labels) for name, pr in preds.items()},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
