"""``efficientformer predict`` (classify files and folders) and ``efficientformer info`` (model card).

Exit status of ``predict``: 0 when every image was classified, 1 when some input failed (each failure is one line
on stderr naming the file; the other results are still written), 2 for usage errors (bad options, unknown model,
unreadable checkpoint, no images found).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from tqdm import tqdm

from ..data.images import ImageLoadError, find_images
from ..data.transforms import PIL_INTERPOLATIONS, EvalTransform
from ..inference.api import Predictor, classify_files, load_model, preprocessing_for
from ..inference.publish import publish_run, push_run
from ..models.cards import format_card, model_card
from ..models.hub import parse_hub_name
from ..models.layers import check_img_size
from ..utils.io import SafeCsvWriter


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="classify image files and folders",
        description="Classify images (files, or folders searched recursively). Results go to stdout as a table, "
        "JSON lines or CSV; unreadable images are reported on stderr and skipped (exit status 1).",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files and/or folders")
    p.add_argument(
        "--model",
        required=True,
        help="model name, e.g. efficientformerv2_s0 (see `efficientformer zoo`), or hf-hub:ORG/REPO",
    )
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint", help="weights file in any supported layout (ours, official, timm, mmpretrain)")
    weights.add_argument(
        "--pretrained", action="store_true", help="published weights, or the hf-hub: repository's (via the Hub cache)"
    )
    p.add_argument(
        "--cache-dir", help="Hugging Face cache to read and fill (default: the shared one, $HF_HUB_CACHE or $HF_HOME)"
    )
    p.add_argument("--topk", type=int, default=5, help="classes listed per image (default 5)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON object per image on stdout")
    fmt.add_argument("--csv", action="store_true", help="CSV on stdout: file,rank,label,class,score")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--img-size", type=int, default=None, help="centre-crop size, a multiple of 32 (default: the model's own)"
    )
    p.add_argument(
        "--resize", type=int, default=None, help="short side before the crop (default: int(img-size / model's crop))"
    )
    p.add_argument(
        "--interpolation", choices=sorted(PIL_INTERPOLATIONS), default=None, help="default: the model's own (bicubic)"
    )
    p.add_argument("--max-pixels", type=int, default=None, help="refuse larger images (decompression-bomb guard)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=run_predict)

    h = subparsers.add_parser(
        "push",
        help="publish a training, search or dense run on the Hugging Face Hub (weights, config.json, model card)",
        description="Write RUN_DIR's model as a Hub repository (model.safetensors, a config.json timm reads for the "
        "published variants, architecture.yaml for searched ones, a model card from the run's facts) and upload it "
        "with huggingface_hub (log in first: `hf auth login`, or set HF_TOKEN). --dry-run writes the folder only.",
    )
    h.add_argument("run_dir", metavar="RUN_DIR", help="a training, search or dense run folder")
    h.add_argument("repo_id", metavar="REPO_ID", help="Hub repository, ORG/NAME (created if missing)")
    h.add_argument("--private", action="store_true", help="create the repository private")
    h.add_argument("--dry-run", metavar="FOLDER", help="write the repository folder here instead of uploading")
    h.set_defaults(func=run_push)

    i = subparsers.add_parser("info", help="model card: parameters, MACs, published accuracy and latency, weights")
    i.add_argument("name", metavar="NAME", help="model name")
    i.add_argument("--img-size", type=int, default=224, help="resolution for the MAC count (default 224)")
    i.add_argument("--json", action="store_true", help="print the card as JSON")
    i.set_defaults(func=run_info)


# -- predict -----------------------------------------------------------------------------------------------------
def run_predict(args: argparse.Namespace) -> int:
    if args.topk < 1:
        raise ValueError(f"--topk must be at least 1, got {args.topk}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.max_pixels is not None and args.max_pixels < 1:
        raise ValueError(f"--max-pixels must be a positive number of pixels, got {args.max_pixels}")
    if args.img_size is not None:  # a bad size fails before any model is built
        EvalTransform(img_size=args.img_size, resize=args.resize)
    files, problems = find_images(args.paths)
    for line in problems:  # a folder that cannot be listed: its images are missing, say so and fail at the end
        print(f"error: {line}", file=sys.stderr)
    if not files:
        raise ValueError(
            f"no image files found in {', '.join(args.paths)} (extensions: jpg, png, bmp, gif, tif, webp...)"
        )
    loaded = load_model(
        args.model, checkpoint=args.checkpoint, pretrained=args.pretrained, device=args.device, cache=args.cache_dir
    )
    preprocess = preprocessing_for(loaded.model, args.img_size, args.resize, args.interpolation)
    predictor = Predictor(loaded, preprocess, topk=args.topk)
    writer = _Writer(sys.stdout, "json" if args.json else "csv" if args.csv else "table")

    failed = 0
    bar = tqdm(total=len(files), unit="img", file=sys.stderr, disable=args.no_progress, desc="predict")
    for batch in classify_files(predictor, files, args.batch_size, args.max_pixels):
        for path, err in batch.failures:
            failed += 1
            if isinstance(err, ImageLoadError):
                tqdm.write(f"error: {printable(str(err))}", file=sys.stderr)
            else:  # the preprocessing refused this image (e.g. too large after resizing)
                tqdm.write(f"error: {printable(str(path))}: {err}", file=sys.stderr)
        for path, result in batch.results:
            writer.write(str(path), result)
        sys.stdout.flush()
        bar.update(len(batch.files))
    bar.close()
    done = len(files) - failed
    unlisted = f", {len(problems)} folder(s) could not be read" if problems else ""
    print(f"{done} image(s) classified, {failed} failed{unlisted} ({loaded.source})", file=sys.stderr)
    return 1 if failed or problems else 0


def printable(text: str) -> str:
    """``text`` with control and other non-printing characters escaped (``\\x1b``, ``\\n``), so a class name or
    file name from a checkpoint or a folder cannot move the cursor, clear the screen or forge output lines."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class _Writer:
    """Results on stdout: a readable table, JSON lines, or CSV (long format, one row per top-k entry)."""

    def __init__(self, out: TextIO, kind: str) -> None:
        self.out, self.kind = out, kind
        self.header_done = False
        self.csv = SafeCsvWriter(out, lineterminator="\n") if kind == "csv" else None

    def write(self, file: str, result: dict[str, Any]) -> None:
        if self.kind == "json":
            row = {
                "file": file,
                "pred_label": result["pred_label"],
                "pred_class": result["pred_class"],
                "pred_score": result["pred_score"],
                "topk": [{"label": lab, "class": name, "score": score} for lab, name, score in result["topk"]],
            }
            self.out.write(json.dumps(row) + "\n")
        elif self.kind == "csv":
            if not self.header_done:
                self.csv.writerow(["file", "rank", "label", "class", "score"])
            for rank, (lab, name, score) in enumerate(result["topk"], 1):
                self.csv.writerow([printable(file), rank, lab, printable(name), f"{score:.6f}"])
        else:
            if not self.header_done:
                self.out.write(f"{'rank':>4}  {'score':>7}  {'label':>5}  class\n")
            self.out.write(f"{printable(file)}\n")
            for rank, (lab, name, score) in enumerate(result["topk"], 1):
                self.out.write(f"{rank:>4}  {score:7.4f}  {lab:>5}  {printable(name)}\n")
        self.header_done = True


# -- push --------------------------------------------------------------------------------------------------------
#: What ``push`` uploads with; tests replace it with a local stand-in (None: huggingface_hub.HfApi()).
HUB_API = None


def run_push(args: argparse.Namespace) -> int:
    parse_hub_name(args.repo_id)  # a bad id fails before the run is read
    if args.dry_run:
        folder = publish_run(args.run_dir, args.dry_run)
        print(f"wrote {', '.join(sorted(p.name for p in folder.iterdir()))} to {folder} (not uploaded)")
        return 0
    info = push_run(args.run_dir, args.repo_id, private=args.private or None, api=HUB_API)
    url = getattr(info, "commit_url", None) or f"hf-hub:{args.repo_id}"
    print(f"pushed {args.run_dir} to {args.repo_id}: {url}")
    return 0


# -- info --------------------------------------------------------------------------------------------------------
def run_info(args: argparse.Namespace) -> int:
    check_img_size(args.img_size, "--img-size")
    card = model_card(args.name, img_size=args.img_size)
    print(json.dumps(card.to_dict(), indent=2) if args.json else format_card(card))
    return 0
