"""Sub-commands ``profile``, ``export``, ``quantize`` and ``benchmark``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..bench.latency import (
    BACKENDS,
    BASELINES,
    INTERLEAVE,
    BenchConfig,
    parse_list,
    resolve_models,
    run_benchmark,
    write_outputs,
)
from ..bench.profile import PUBLISHED, format_profile, profile_model
from ..deploy.export import check_output_path, export_model, export_onnx
from ..deploy.fuse import deploy
from ..deploy.openvino import export_openvino, openvino_int8_report
from ..deploy.pt2e import pt2e_report
from ..deploy.quantize import list_images, quantize_onnx, readable_images
from ..inference.api import checkpoint_num_classes, read_checkpoint_file
from ..models.checkpoint import read_state_dict, stored_class_names
from ..models.factory import create_model, model_preprocessing
from ..utils.io import atomic_write_json
from ..utils.machine import OMP_POLICIES, apply_omp_wait_policy

EXTENSIONS = {
    "onnx": ".onnx",
    "torchscript": ".pt",
    "coreml": ".mlpackage",
    "executorch": ".pte",
    "pt2": ".pt2",
    "openvino": ".xml",
}
#: How a model with another activation is named on every command line (models.registry.with_activation).
ACT_HELP = (
    "; append _relu or _hardswish (efficientformerv2_s0_relu) for the variant with that activation in place of "
    "every GELU, which INT8 backends fold into the int8 convolutions; or an architecture file (.yaml/.json, as "
    "`efficientformer search` writes)"
)


def _build(name: str, checkpoint: str | None, img_size: int | None):
    return _build_named(name, checkpoint, img_size)[0]


def _build_named(name: str, checkpoint: str | None, img_size: int | None):
    """``(eval model, class names or None)``: the classifier is sized from the checkpoint, so a fine-tuned (e.g.
    10-class) model exports as it is, and the class names it carries (our training stores them) come along."""
    if checkpoint is None:
        return create_model(name, img_size=img_size or 224).eval(), None
    obj = read_checkpoint_file(checkpoint)  # weights-only / safetensors, with a one-line error for a bad file
    names = stored_class_names(obj)
    state = read_state_dict(obj)[0]
    num_classes = checkpoint_num_classes(state) or 1000
    # the whole checkpoint, not only its weights: a training checkpoint's recorded activation is checked too
    model = create_model(name, img_size=img_size or 224, num_classes=num_classes, checkpoint=obj).eval()
    return model, names


def cmd_profile(args: argparse.Namespace) -> int:
    results = []
    for name in resolve_models(args.model):
        res = profile_model(create_model(name, img_size=args.img_size or 224), args.img_size)
        results.append(res)
        if not args.json:
            print(format_profile(res))
            pub = PUBLISHED.get(name)
            if pub and res.img_size == (224, 224):
                print(
                    f"published: {pub[0]:.3f} M params, {pub[1]:.2f} GMACs "
                    f"(ours {100 * (res.macs / 1e9 / pub[1] - 1):+.2f}% MACs)"
                )
            print()
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    output = Path(args.output)
    if output.suffix == "" and args.format != "coreml":
        output = output.with_suffix(EXTENSIONS[args.format])
    if args.onnx and args.format != "openvino":
        raise ValueError("--onnx (convert an existing ONNX file) is only for --format openvino")
    if args.fp16 and args.format != "coreml":
        raise ValueError("--fp16 is only supported for --format coreml; use `efficientformer quantize` for INT8 ONNX")
    check_output_path(output, directory=args.format == "coreml")  # before the work, not after it
    model, class_names = _build_named(args.model, args.checkpoint, args.img_size)
    if args.deploy:
        model = deploy(model)
    kwargs = {"img_size": args.img_size, "batch": args.batch}
    if args.format == "coreml":
        kwargs["fp16"] = args.fp16
        kwargs["labels"] = class_names  # None: ImageNet names for 1000 classes, else class_i
    if args.format == "onnx" and args.opset is not None:
        kwargs["opset"] = args.opset
    if args.format == "openvino":
        report = export_openvino(model, output, onnx=args.onnx, **kwargs)
    else:
        report = export_model(model, args.format, output, **kwargs)
    print(report)
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    out_dir = Path(args.output_dir)
    if args.backend == "openvino":
        if not args.model or args.onnx:
            raise ValueError("--backend openvino quantises a PyTorch model: pass --model NAME, not --onnx")
        check_output_path(out_dir / "probe", flag="--output-dir")  # before the work
        built = _build(args.model, args.checkpoint, args.img_size)
        own, model = model_preprocessing(built), deploy(built)
        img = (args.img_size, args.img_size)
        calib, skipped = readable_images(list_images(args.calib_dir)[:64], img, own)
        held_out, skipped_eval = readable_images(list_images(args.eval_dir), img, own) if args.eval_dir else ([], [])
        for line in skipped + skipped_eval:
            print(f"warning: skipped {line}", file=sys.stderr)
        if not calib:
            raise ValueError(f"none of the calibration images under {args.calib_dir} could be read")
        calib_arrays, eval_arrays = [a for _, a in calib], [a for _, a in held_out]
        report = openvino_int8_report(
            model,
            out_dir,
            calib_arrays,
            eval_arrays,
            img,
            threads=args.threads,
            runs=args.runs,
            keep_float=not args.int8_stem_head,
        )
        print(json.dumps(report, indent=2))
        if args.json:
            atomic_write_json(args.json, report)
        return 0
    if args.backend == "pt2e":
        if not args.model or args.onnx:
            raise ValueError("--backend pt2e quantises a PyTorch model: pass --model NAME, not --onnx")
        model = _build(args.model, args.checkpoint, args.img_size)
        package = check_output_path(out_dir / f"{model.spec.name}.int8.pt2", flag="--output-dir")  # before the work
        report = pt2e_report(
            model,
            args.calib_dir,
            args.eval_dir,
            args.img_size,
            threads=args.threads,
            runs=args.runs,
            package_path=package,
        )
        print(json.dumps(report, indent=2))
        if args.json:
            atomic_write_json(args.json, report)
        return 0
    own = None  # an ONNX file alone: the published protocol at its input size
    if args.onnx:
        fp32 = Path(args.onnx)
        if not fp32.is_file():
            raise FileNotFoundError(f"ONNX model not found: {fp32}")
    else:
        if not args.model:
            raise ValueError("pass --model NAME (to export first) or --onnx FILE")
        built = _build(args.model, args.checkpoint, args.img_size)
        own, model = model_preprocessing(built), deploy(built)
        fp32 = out_dir / f"{model.name}.fp32.onnx"
        print(export_onnx(model, fp32, img_size=args.img_size, batch=1))
    report = quantize_onnx(
        fp32,
        out_dir,
        args.calib_dir,
        args.eval_dir,
        tuple(args.mode.split(",")),
        threads=args.threads,
        runs=args.runs,
        keep_float=not args.int8_stem_head,
        preprocessing=own,
    )
    print(report)
    if args.json:
        atomic_write_json(args.json, report.to_dict())
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    omp_line = apply_omp_wait_policy(args.omp_wait_policy)  # may re-run this command with the variable set
    cfg = BenchConfig(
        models=resolve_models(args.model),
        backends=parse_list(args.backend),
        batch_sizes=parse_list(args.batch_size, int),
        threads=args.threads,
        img_size=args.img_size,
        warmup=args.warmup,
        runs=args.runs,
        timm_rows=not args.no_timm,
        baseline=not args.no_baseline,
        baselines=parse_list(args.baselines),
        repeats=args.repeats,
        clock=args.clock,
        channels_last=args.channels_last,
        interleave=args.interleave,
        blocks=args.blocks,
        ceiling=not args.no_ceiling,
        pin_allocator=not args.no_pin_allocator,
    )
    result = run_benchmark(cfg)
    result["environment"]["omp_wait_policy"] = omp_line
    paths = write_outputs(result, args.output_dir, args.name)
    print(open(paths["md"]).read())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("profile", help="parameters and MACs (total and per stage)")
    p.add_argument(
        "--model", default="all", help="model name, comma-separated names or architecture files, or 'all' (default)"
    )
    p.add_argument("--img-size", type=int, default=224, help="input resolution (multiple of 32; default 224)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=cmd_profile)

    p = subparsers.add_parser(
        "export", help="export to ONNX / TorchScript / Core ML / ExecuTorch / AOTInductor with a parity check"
    )
    p.add_argument("--model", required=True, help="model name" + ACT_HELP)
    p.add_argument("--checkpoint", default=None, help="weights in any supported layout (default: random init)")
    p.add_argument(
        "--format",
        required=True,
        choices=list(EXTENSIONS),
        help="pt2: an AOTInductor package (compiled ahead of time for this CPU, fixed batch; the benchmark's "
        "inductor-aot backend); openvino: an OpenVINO IR NAME.xml + NAME.bin (fixed batch; run it in fp32, or "
        "in bf16 with OpenVINO's INFERENCE_PRECISION_HINT where the CPU has it; INT8: quantize --backend openvino)",
    )
    p.add_argument("--output", required=True, help="output file (.onnx, .pt, .pte, .pt2, .xml) or .mlpackage directory")
    p.add_argument("--onnx", default=None, help="--format openvino: convert this ONNX file of the model instead")
    p.add_argument("--img-size", type=int, default=None, help="input resolution (default 224)")
    p.add_argument(
        "--batch", default=None, help="'dynamic' (default; ExecuTorch, pt2, OpenVINO: 1) or a fixed batch size N"
    )
    p.add_argument("--fp16", action="store_true", help="Core ML: float16 compute precision")
    p.add_argument("--deploy", action="store_true", help="export the fused deploy form (recommended)")
    p.add_argument(
        "--opset",
        type=int,
        default=None,
        help="ONNX opset (>= 17; the exporter writes at least 18; default: 20, which has a single Gelu op)",
    )
    p.set_defaults(func=_export_entry)

    p = subparsers.add_parser("quantize", help="ONNX Runtime INT8 (static calibrated + dynamic) with a report")
    p.add_argument("--model", default=None, help="model to export first (deploy form, batch 1)" + ACT_HELP)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--onnx", default=None, help="an existing fp32 ONNX file instead of --model")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--calib-dir", required=True, help="folder of calibration images")
    p.add_argument("--eval-dir", default=None, help="held-out folder for top-1 agreement with fp32")
    p.add_argument(
        "--backend",
        default="onnxruntime",
        choices=["onnxruntime", "pt2e", "openvino"],
        help="onnxruntime (default): INT8 ONNX files and a report; openvino: NNCF post-training INT8 of the "
        "deploy form's OpenVINO IR (OUTPUT_DIR/MODEL.int8.xml, with the fp32 IR), reporting top-1 agreement, the "
        "largest logit difference and speed against fp32 (and bf16 where the CPU has it); pt2e: PyTorch PT2E "
        "INT8 (x86 Inductor quantizer) of the deploy form as an AOTInductor package OUTPUT_DIR/MODEL.int8.pt2, "
        "reporting its agreement and speed against the fp32 deploy form compiled the same way",
    )
    p.add_argument("--mode", default="static,dynamic", help="static, dynamic or both (comma-separated)")
    p.add_argument(
        "--int8-stem-head",
        action="store_true",
        help="also quantise the stem convolutions and the classifier (kept in float by default: more accurate)",
    )
    p.add_argument("--output-dir", default="quantized")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=30, help="timed runs per model for the latency column")
    p.add_argument("--json", default=None, help="also write the report as JSON here")
    p.set_defaults(func=cmd_quantize)

    p = subparsers.add_parser(
        "benchmark",
        help="latency/throughput vs timm and MobileNetV2; Markdown, JSON, PNG",
        description="Times every (model, backend, batch) candidate in one run: interleaved rounds, groups per model "
        "and runtime alternating in blocks, allocator pinned, a GEMM ceiling timed alongside; stamps the CPU, its "
        "ISA extensions and the load average. See benchmarks/README.md.",
    )
    p.add_argument("--model", default="all", help="model name, comma-separated names, or 'all' (default)" + ACT_HELP)
    p.add_argument(
        "--backend",
        default="eager,deploy,onnxruntime",
        help="comma-separated backends (default eager,deploy,onnxruntime): "
        + "; ".join(f"{name}: {b.description} [{b.precision}]" for name, b in BACKENDS.items()),
    )
    p.add_argument("--batch-size", default="1", help="comma-separated batch sizes, e.g. 1,32 (default 1)")
    p.add_argument("--threads", type=int, default=2, help="threads for torch and ONNX Runtime (default 2)")
    p.add_argument("--img-size", type=int, default=224, help="input resolution, a multiple of 32 (default 224)")
    p.add_argument("--warmup", type=int, default=10, help="untimed calls per candidate before timing (default 10)")
    p.add_argument("--runs", type=int, default=50, help="timed rounds; each candidate runs once per round (default 50)")
    p.add_argument("--no-timm", action="store_true", help="skip timm's rows of the same models")
    p.add_argument("--no-baseline", action="store_true", help="skip the baseline rows (--baselines)")
    p.add_argument(
        "--baselines",
        default="mobilenetv2_100",
        help="comma-separated timm baselines timed in every backend that runs them (default mobilenetv2_100; "
        f"choose from {', '.join(BASELINES)}); random weights: a speed comparison",
    )
    p.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "cpu"],
        help="wall (default): wall-clock time per call; cpu: the process's CPU time per call, which with --threads 1 "
        "on a machine shared with other jobs counts the work, not the time spent preempted",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="repeat the whole interleaved run this many times; every ratio is reported as the median of the "
        "repeats with its spread (default 3)",
    )
    p.add_argument("--channels-last", action="store_true", help="run the deploy form in channels_last")
    p.add_argument(
        "--interleave",
        default="model",
        choices=INTERLEAVE,
        help="'model' (default): one timing group per model and runtime; 'runtime': one group per runtime "
        "(all models in one round, as before)",
    )
    p.add_argument(
        "--blocks",
        type=int,
        default=0,
        help="the groups take turns in this many blocks of rounds, so every ratio sees the same drift "
        "(default 0: they alternate every round)",
    )
    p.add_argument("--no-ceiling", action="store_true", help="do not time the GEMM ceiling (no 'of ceiling' column)")
    p.add_argument(
        "--no-pin-allocator",
        action="store_true",
        help="leave glibc's dynamic mmap threshold alone (timings then depend on the models run before)",
    )
    p.add_argument(
        "--omp-wait-policy",
        default="passive",
        choices=OMP_POLICIES,
        help="OpenMP wait policy of torch's thread pool (default passive: idle workers sleep instead of spinning, "
        "which keeps 2-thread torch timings sane when other processes share the cores; 'inherit' keeps the "
        "environment's)",
    )
    p.add_argument("--output-dir", default="benchmarks/results", help="folder for the outputs")
    p.add_argument("--name", default="benchmark", help="file stem of the outputs (.json, .md, .png)")
    p.set_defaults(func=cmd_benchmark)


def _export_entry(args: argparse.Namespace) -> int:
    if args.batch is None:
        args.batch = "1" if args.format in ("executorch", "pt2", "openvino") else "dynamic"
    return cmd_export(args)
