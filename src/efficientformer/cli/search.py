"""``efficientformer search ...``: latency tables, supernet training, the V2 greedy search and V1 slimming.

Parsing and printing only: each step is a call of :mod:`efficientformer.search.api` (or of the pipeline).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..runtime.signals import PREEMPTED_EXIT_CODE
from ..search.api import (
    check_latency_table,
    describe_arch,
    measure_table,
    search_v1,
    search_v2,
    store_calibration,
    train_and_save_supernet,
)
from ..search.latency import RUNTIMES, import_table
from ..search.pipeline import BUDGETS, run_search_pipeline
from .errors import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "search",
        help="latency-driven architecture search (latency tables, supernet, V2 greedy search, V1 slimming)",
        description="Latency-driven architecture search for your own hardware; see docs/search.md.",
    )
    sub = p.add_subparsers(dest="search_command", metavar="STEP")

    lut = sub.add_parser("lut", help="measure a latency lookup table (resumable)")
    lut.add_argument("--family", choices=("v1", "v2"), default="v2")
    lut.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="deploy",
        help="a CPU backend of the deployment registry (torch: the eager model)",
    )
    lut.add_argument("--threads", type=int, default=1)
    lut.add_argument("--img-size", type=int, default=224)
    lut.add_argument("--batch", type=int, default=1)
    lut.add_argument("--num-classes", type=int, default=1000)
    lut.add_argument("--warmup", type=int, default=5)
    lut.add_argument("--runs", type=int, default=25)
    lut.add_argument(
        "--statistic",
        choices=("median", "min"),
        default="median",
        help="what an entry holds (min suits a shared, busy machine; both are stored)",
    )
    lut.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: the thread's CPU time (with --threads 1; robust on a shared machine)",
    )
    lut.add_argument(
        "--context",
        type=int,
        default=1,
        help="time each FFN/attention/Meta4D/Meta3D block as a chain of K copies (per copy)",
    )
    lut.add_argument(
        "--for-check",
        type=int,
        default=None,
        metavar="N",
        help="only the entries of the networks `lut-check --random N` times (published + N random)",
    )
    lut.add_argument("--space", default=None, help="YAML with a 'space:' mapping (default: the built-in space)")
    lut.add_argument("--output", required=True, help="table JSON; an existing one with the same settings resumes")
    lut.set_defaults(func=run_lut)

    imp = sub.add_parser("lut-import", help="convert a table measured elsewhere (CSV key,ms) to the JSON format")
    imp.add_argument("--csv", required=True)
    imp.add_argument("--family", choices=("v1", "v2"), default=None)
    imp.add_argument("--img-size", type=int, default=None)
    imp.add_argument("--runtime", default=None, help="name of the runtime it was measured on, e.g. coreml")
    imp.add_argument("--output", required=True)
    imp.set_defaults(func=run_lut_import)

    chk = sub.add_parser("lut-check", help="table sum vs end-to-end latency: MAPE, Kendall's tau, plot")
    chk.add_argument("--lut", required=True)
    chk.add_argument("--random", type=int, default=20, help="random subnets besides the published models")
    chk.add_argument("--seed", type=int, default=0)
    chk.add_argument("--warmup", type=int, default=5)
    chk.add_argument("--runs", type=int, default=20)
    chk.add_argument("--output-dir", required=True)
    chk.add_argument("--update-lut", action="store_true", help="store the fitted per-kind calibration in the table")
    chk.add_argument(
        "--statistic",
        choices=("median", "min", "p90"),
        default=None,
        help="with --measured: refit on this statistic of entries and networks (all are stored)",
    )
    chk.add_argument(
        "--measured",
        default=None,
        help="lut_check.json of an earlier check on the same runtime/threads/resolution: refit this "
        "table on those measured networks instead of timing them again",
    )
    chk.set_defaults(func=run_lut_check)

    sn = sub.add_parser(
        "supernet",
        help="train a V2 supernet with the sandwich rule (the training runtime: "
        "checkpoints, exact resume, torchrun DDP)",
    )
    sn.add_argument("--config", default="configs/search/v2_proxy.yaml", help="YAML with 'space:' (and 'mes:')")
    sn.add_argument("--data", default="proxy", help="'proxy' (bundled) or a folder with train/ (and search/)")
    sn.add_argument("--img-size", type=int, default=32)
    sn.add_argument("--steps", type=int, default=600)
    sn.add_argument("--batch-size", type=int, default=64)
    sn.add_argument("--lr", type=float, default=2e-3)
    sn.add_argument("--num-random", type=int, default=2)
    sn.add_argument("--threads", type=int, default=1)
    sn.add_argument("--seed", type=int, default=0)
    sn.add_argument("--output", required=True, help="run folder; writes supernet.pth, last.pth and log.jsonl")
    sn.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        metavar="N",
        help="also checkpoint every N optimiser steps inside an epoch (default 0: at epoch ends only)",
    )
    sn.add_argument(
        "--checkpoint-minutes",
        type=float,
        default=None,
        metavar="M",
        help="also checkpoint every M minutes inside an epoch (default 0: off)",
    )
    sn.add_argument(
        "--stop-signals",
        default=None,
        metavar="SIG[,SIG]",
        help=f"on these signals finish the step, checkpoint and exit {PREEMPTED_EXIT_CODE}; the same command "
        "resumes (default SIGTERM,SIGUSR1)",
    )
    sn.add_argument("overrides", nargs="*", metavar="key=value", help="more SupernetConfig keys (e.g. eval_every=1)")
    sn.set_defaults(func=run_supernet)

    rs = sub.add_parser("run", help="V2 greedy fine-grained joint search (MES) on a trained supernet")
    rs.add_argument("--supernet", required=True, help="supernet.pth written by `search supernet`")
    rs.add_argument("--lut", required=True, help="V2 latency table (JSON from `search lut`, or an imported CSV)")
    rs.add_argument("--config", default=None, help="YAML with 'mes:' constants (default: the recalled paper's)")
    rs.add_argument("--data", default="proxy")
    rs.add_argument("--target-latency", type=float, default=None, help="stop at this table latency (ms)")
    rs.add_argument("--target-like", default=None, help="stop at the table latency of a published model")
    rs.add_argument("--target-params", type=float, default=None, help="stop at this many parameters (millions)")
    rs.add_argument("--target-mes", type=float, default=None)
    rs.add_argument("--actions-per-step", type=int, default=1, help="1 = the paper; >1 takes k actions a step")
    rs.add_argument("--calib-images", type=int, default=256, help="training images for BN recalibration")
    rs.add_argument("--eval-images", type=int, default=None, help="limit the held-out images scored")
    rs.add_argument("--v1-lut", default=None, help="a V1 table, to mark L1/L3/L7 on the plot")
    rs.add_argument("--threads", type=int, default=1)
    rs.add_argument("--output", required=True, help="folder: arch.yaml, trajectory.jsonl/.png, summary.json")
    rs.set_defaults(func=run_search)

    v1 = sub.add_parser("v1", help="V1 MetaPath supernet (Gumbel-softmax) and latency-driven slimming")
    v1.add_argument("--lut", required=True, help="V1 latency table")
    v1.add_argument("--config", default="configs/search/v1_proxy.yaml")
    v1.add_argument("--data", default="proxy")
    v1.add_argument("--img-size", type=int, default=32)
    v1.add_argument("--steps", type=int, default=300)
    v1.add_argument("--batch-size", type=int, default=64)
    v1.add_argument("--target-latency", type=float, default=None)
    v1.add_argument("--target-like", default=None, help="stop at the table latency of a published V1 model")
    v1.add_argument("--threads", type=int, default=1)
    v1.add_argument("--seed", type=int, default=0)
    v1.add_argument("--output", required=True)
    v1.set_defaults(func=run_v1)

    pl = sub.add_parser(
        "pipeline",
        help="table -> check -> supernet -> search -> retrain -> export -> measured "
        "latency -> report, cached and resumable, in one run folder",
    )
    pl.add_argument(
        "--config",
        default="search/v2_proxy",
        help="search config (space:, mes:, pipeline:, budgets:): a path or a shipped name",
    )
    pl.add_argument("--output", required=True, help="run folder (a rerun continues or reuses what is there)")
    pl.add_argument(
        "--budget",
        choices=BUDGETS,
        default="proxy",
        help="tiny: CI, minutes; proxy: this machine, the bundled proxy task; full: ImageNet, a cluster",
    )
    pl.add_argument(
        "--target-like",
        default=None,
        help="a reference measured in the same runtime (mobilenetv2_100, efficientformerv2_s0, an "
        "architecture file) or a latency in ms; several, comma-separated, share one walk "
        "(default: the config's target_like)",
    )
    pl.add_argument("--data", default=None, help="override the config's data ('proxy' or an ImageNet-style folder)")
    pl.add_argument(
        "--table-cache",
        default=None,
        help="folder of reusable latency tables (default ~/.cache/efficientformer/latency-tables)",
    )
    pl.set_defaults(func=run_pipeline)

    show = sub.add_parser("show", help="parameters and table latency of an architecture file or a model name")
    show.add_argument("arch", help="architecture file (.yaml/.json) or a published model name")
    show.add_argument("--lut", default=None)
    show.add_argument("--img-size", type=int, default=224)
    show.set_defaults(func=run_show)
    p.set_defaults(func=lambda args: _help(p))


def _help(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return 2


# ---------------------------------------------------------------------------------------------------------------
def run_lut(args: argparse.Namespace) -> int:
    start = time.time()
    table = measure_table(
        args.output,
        args.family,
        args.runtime,
        space=args.space,
        for_check=args.for_check,
        threads=args.threads,
        img_size=args.img_size,
        batch=args.batch,
        num_classes=args.num_classes,
        warmup=args.warmup,
        runs=args.runs,
        statistic=args.statistic,
        clock=args.clock,
        context=args.context,
    )
    m = table.meta["machine"]
    print(
        f"{args.output}: {len(table.entries)} entries ({'complete' if table.meta['complete'] else 'INCOMPLETE'}) "
        f"in {time.time() - start:.0f} s; {m['cpu_model']} [{' '.join(m['isa'])}], {args.threads} thread(s), "
        f"{args.runtime}, load {m['loadavg']} -> {m.get('loadavg_end')}"
    )
    return 0


def run_lut_import(args: argparse.Namespace) -> int:
    table = import_table(args.csv, family=args.family, img_size=args.img_size, runtime=args.runtime)
    table.save(args.output)
    print(f"{args.output}: {len(table.entries)} entries ({table.family}, {table.meta['runtime']})")
    return 0


def run_lut_check(args: argparse.Namespace) -> int:
    if args.statistic and not args.measured:
        raise UserError("--statistic refits stored measurements: give --measured lut_check.json too")
    table, result, paths = check_latency_table(
        args.lut,
        args.output_dir,
        n_random=args.random,
        seed=args.seed,
        warmup=args.warmup,
        runs=args.runs,
        measured=args.measured,
        statistic=args.statistic,
    )
    s = result["summary"]
    for r in result["rows"]:
        print(
            f"  {r['name']:28s} sum {r['sum_ms']:8.2f}  per-kind (LOO) {r['loo_per_kind_ms']:8.2f}  "
            f"measured {r['measured_ms']:8.2f}"
        )
    print(
        f"{s['networks']} networks ({s['published']} published), leave-one-out; load {s['loadavg_start']} -> "
        f"{s['loadavg_end']}"
    )
    for method, m in s["methods_leave_one_out"].items():
        print(
            f"  {method:9s} Kendall tau {m['kendall_tau']:.3f}  MAPE {m['mape_percent']:5.1f}%  "
            f"within +-10% {m['within_10_percent']:5.1f}%"
        )
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    if args.update_lut:
        store_calibration(table, args.lut, result, paths["json"])
        print(f"stored the calibration in {args.lut}")
    return 0


def run_supernet(args: argparse.Namespace) -> int:
    net, metrics, path = train_and_save_supernet(
        args.config,
        args.data,
        args.output,
        list(args.overrides or []),
        img_size=args.img_size,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        num_random=args.num_random,
        threads=args.threads,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        checkpoint_minutes=args.checkpoint_minutes,
        stop_signals=args.stop_signals,
    )
    if path is not None:  # the first process wrote it
        held_out = ", ".join(f"{k} {v:.2f}%" for k, v in metrics.items() if isinstance(v, float))
        print(
            f"wrote {path} ({sum(p.numel() for p in net.parameters()):,} parameters)"
            + (f"; held-out {held_out}" if held_out else "")
        )
    return 0


def run_search(args: argparse.Namespace) -> int:
    summary = search_v2(
        args.supernet,
        args.lut,
        args.output,
        data=args.data,
        config=args.config,
        target_latency_ms=args.target_latency,
        target_like=args.target_like,
        target_params_m=args.target_params,
        target_mes=args.target_mes,
        actions_per_step=args.actions_per_step,
        calib_images=args.calib_images,
        eval_images=args.eval_images,
        v1_lut=args.v1_lut,
        threads=args.threads,
    )
    out = Path(args.output)
    final = summary["final"]
    rate = summary["evaluations"] / max(summary["seconds"], 1e-9)
    print(
        f"{summary['stopped']} after {summary['evaluations']} evaluations in {summary['seconds']:.0f} s "
        f"({rate:.2f} candidates/s): acc {final['accuracy']:.2f}%, {final['latency_ms']:.2f} ms, "
        f"{final['params'] / 1e6:.2f}M params"
    )
    print(
        f"wrote {summary['arch']}, {out / 'trajectory.jsonl'}, {summary['plot']}, {out / 'summary.json'}, "
        f"{out / 'supernet_weights.pth'}"
    )
    return 0


def run_v1(args: argparse.Namespace) -> int:
    res = search_v1(
        args.lut,
        args.output,
        config=args.config,
        data=args.data,
        target_latency_ms=args.target_latency,
        target_like=args.target_like,
        img_size=args.img_size,
        steps=args.steps,
        batch_size=args.batch_size,
        threads=args.threads,
        seed=args.seed,
        log=lambda line: print(line, flush=True),
    )
    spec, tm = res["spec"], res["timing"]
    print(
        f"{res['arch']}: widths {list(spec.widths)} depths {list(spec.depths)} MB3D {spec.num_vit}, "
        f"{res['latency_ms']:.2f} ms (target {res['target_ms']:.2f}), held-out acc {res['accuracy']:.2f}%; supernet "
        f"{tm['supernet_steps_per_s']} steps/s, {tm['paths_scored']} paths scored at "
        f"{tm['paths_per_s']}/s"
    )
    return 0


def run_pipeline(args: argparse.Namespace) -> int:
    pipeline = run_search_pipeline(
        args.config,
        args.output,
        budget=args.budget,
        target_like=args.target_like,
        data=args.data,
        table_cache=args.table_cache,
    )
    report = pipeline.results["report"]
    cached = [n for n, t in pipeline.timing.items() if t.get("cached")]
    print(
        f"wrote {report['report_md']} and {report['report_json']}"
        + (f" (cached stages: {', '.join(cached)})" if cached else "")
    )
    return 0


def run_show(args: argparse.Namespace) -> int:
    print(json.dumps(describe_arch(args.arch, args.lut, args.img_size), indent=2))
    return 0
