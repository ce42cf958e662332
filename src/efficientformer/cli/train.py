"""``efficientformer train``, ``eval`` and ``submit`` sub-commands."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields

from ..runtime.config import parse_overrides
from ..train.config import TrainConfig
from ..train.engine import train
from ..train.evaluate import evaluate_checkpoint
from ..train.recipes import config_or_digits
from ..train.slurm import submit


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train or fine-tune (bundled digits data when --data is not given)",
        description="Train a model. Without --data (and without --config) the bundled digits recipe runs. Any "
        "config key can be overridden as key=value or --key value (see configs/*.yaml). Running the same command "
        "again with the same --output resumes.",
    )
    _add_train_args(p)
    p.add_argument("--slurm", action="store_true", help="submit to Slurm through submitit instead of running here")
    p.set_defaults(func=run_train)

    s = subparsers.add_parser("submit", help="submit a training run to Slurm (or locally) through submitit")
    _add_train_args(s)
    _add_slurm_args(s)
    s.set_defaults(func=run_submit)
    # `train --slurm` reuses the submit options
    _add_slurm_args(p)

    e = subparsers.add_parser("eval", help="top-1/top-5 of a checkpoint on an ImageNet-style folder")
    e.add_argument("--model", required=True)
    e.add_argument("--checkpoint", required=True, help="any layout load_checkpoint reads")
    e.add_argument("--data", required=True, help="folder with val/<class>/..., or a folder of class subfolders")
    e.add_argument("--img-size", type=int, default=224)
    e.add_argument("--resize", type=int, default=None, help="short side before the centre crop (default 256 @224)")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--ema", action="store_true", help="evaluate the EMA weights of a training checkpoint")
    e.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"))
    e.add_argument("--device", default="auto")
    e.add_argument("--max-pixels", type=int, default=None, help="skip images over this many pixels (bomb guard)")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.set_defaults(func=run_eval)


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML recipe, e.g. configs/efficientformerv2_s0_300e.yaml")
    p.add_argument("overrides", nargs="*", help="config overrides as key=value (or use --key value)")
    g = p.add_argument_group("config keys (defaults: the official recipe; see configs/*.yaml)")
    hints = {
        "data": "ImageNet-style folder (train/ and val/); default: bundled digits",
        "output": "run folder (default runs/<model>-<dataset>); rerunning resumes",
    }
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        dest = f"cfg__{f.name}"
        if f.type in ("bool", bool, "bool | None"):
            g.add_argument(flag, dest=dest, nargs="?", const="true", default=None, metavar="BOOL")
            g.add_argument("--no-" + f.name.replace("_", "-"), dest=dest, action="store_const", const="false")
        else:
            g.add_argument(flag, dest=dest, default=None, metavar="V", help=hints.get(f.name) or f.metadata.get("help"))


def _add_slurm_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("slurm (submitit)")
    g.add_argument("--nodes", type=int, default=1)
    g.add_argument("--gpus-per-node", type=int, default=8)
    g.add_argument("--cpus-per-task", type=int, default=10)
    g.add_argument("--partition", default=None)
    g.add_argument("--timeout-min", type=int, default=60 * 72)
    g.add_argument("--job-dir", default=None, help="submitit logs (default <output>/submitit)")
    g.add_argument("--local", action="store_true", help="run through submitit's LocalExecutor (no Slurm)")
    g.add_argument("--wait", action="store_true", help="wait for the job and print its summary")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = parse_overrides(list(args.overrides or []), [f.name for f in fields(TrainConfig)])
    for key, value in vars(args).items():
        if key.startswith("cfg__") and value is not None:
            overrides[key[len("cfg__") :]] = value
    return config_or_digits(args.config, overrides)


def run_train(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if getattr(args, "slurm", False):
        return _submit(cfg, args)
    train(cfg)
    return 0


def run_submit(args: argparse.Namespace) -> int:
    return _submit(config_from_args(args), args)


def _submit(cfg: TrainConfig, args: argparse.Namespace) -> int:
    job, summary = submit(
        cfg,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        cpus_per_task=args.cpus_per_task,
        partition=args.partition,
        timeout_min=args.timeout_min,
        job_dir=args.job_dir,
        local=args.local,
        wait=args.wait,
    )
    print(f"submitted job {job.job_id}; logs in {job.paths.folder}")
    if summary is not None:
        print(json.dumps(summary, indent=2))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    result = evaluate_checkpoint(
        args.model,
        args.checkpoint,
        args.data,
        img_size=args.img_size,
        resize=args.resize,
        batch_size=args.batch_size,
        workers=args.workers,
        use_ema=args.ema,
        amp=args.amp,
        device=args.device,
        max_pixels=args.max_pixels,
    )
    if result is None:  # non-zero rank of a distributed eval
        return 0
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"preprocessing: {result['preprocessing']}")
        print(
            f"{args.model} on {result['images']} images ({result['classes']} classes): top-1 {result['top1']:.2f}% "
            f"top-5 {result['top5']:.2f}% loss {result['loss']:.4f}"
            + (f" ({result['skipped']} unreadable images skipped)" if result["skipped"] else "")
        )
    return 0
