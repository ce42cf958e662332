"""``efficientformer search ...``: latency tables, supernet training, the V2 greedy search and V1 slimming."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import yaml

from ..models.arch import arch_to_spec, is_arch_path, load_arch
from ..models.registry import get_spec, resolve_name
from ..runtime.config import load_config
from ..search.greedy import MESConfig, SearchTargets
from ..search.latency import RUNTIMES, LatencyTable, build_table, import_table
from ..search.lut_check import check_keys, check_table, recheck_table, write_report
from ..search.params import count_params
from ..search.pipeline import BUDGETS, Pipeline, data_root, load_pipeline_config, run_v1_search, run_v2_search
from ..search.space import V2Space
from ..search.supernet import load_supernet, save_supernet
from ..search.train import SupernetConfig, train_supernet
from ..search.v1space import V1_PUBLISHED, V1Space
from ..utils.recipes import resolve_config
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


def _config(path: str | None) -> dict:
    if not path:
        return {}
    f = resolve_config(path)  # a path, or a shipped config by name (v2_proxy); one-line error if neither
    data = yaml.safe_load(f.read_text()) or {}
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping (space:, mes:, ...)")
    return data


# ---------------------------------------------------------------------------------------------------------------
def run_lut(args: argparse.Namespace) -> int:

    cfg = _config(args.space)
    space_cfg = cfg.get("space", cfg) if cfg else None
    if args.family == "v2":
        space = V2Space.from_dict(space_cfg) if space_cfg else V2Space()
    else:
        space = V1Space.from_dict(space_cfg) if space_cfg else V1Space()
    start = time.time()
    table = build_table(
        args.output,
        args.family,
        args.runtime,
        threads=args.threads,
        img_size=args.img_size,
        batch=args.batch,
        num_classes=args.num_classes,
        warmup=args.warmup,
        runs=args.runs,
        space=space,
        statistic=args.statistic,
        clock=args.clock,
        context=args.context,
        keys=check_keys(args.family, space.to_dict(), args.for_check, 0) if args.for_check is not None else None,
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

    table = LatencyTable.load(args.lut)
    if args.statistic and not args.measured:
        raise UserError("--statistic refits stored measurements: give --measured lut_check.json too")
    if args.measured:
        result = recheck_table(table, args.measured, args.statistic)
    else:
        result = check_table(table, n_random=args.random, seed=args.seed, warmup=args.warmup, runs=args.runs)
    paths = write_report(result, args.output_dir)
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
        if Path(args.lut).suffix.lower() == ".csv":
            raise UserError("--update-lut needs a JSON table; convert the CSV with `search lut-import` first")
        table.meta["calibration"] = {**s["calibration"], "from": str(paths["json"])}
        table.save(args.lut)
        print(f"stored the calibration in {args.lut}")
    return 0


def run_supernet(args: argparse.Namespace) -> int:
    cfg = _config(args.config)
    space = V2Space.from_dict(cfg.get("space", {}))
    root = data_root(args.data)
    out = Path(args.output)
    scfg = load_config(
        SupernetConfig,
        None,
        list(args.overrides or []),
        data=str(root),
        output=str(out),
        img_size=args.img_size,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        num_random=args.num_random,
        threads=args.threads,
        seed=args.seed,
    )
    net, metrics = train_supernet(scfg, space, root)
    if int(os.environ.get("RANK", "0")) == 0:
        save_supernet(net, out / "supernet.pth", data=str(root))
        held_out = ", ".join(f"{k} {v:.2f}%" for k, v in metrics.items() if isinstance(v, float))
        print(
            f"wrote {out / 'supernet.pth'} ({sum(p.numel() for p in net.parameters()):,} parameters)"
            + (f"; held-out {held_out}" if held_out else "")
        )
    return 0


def _target_latency(args: argparse.Namespace, table) -> float | None:
    if args.target_latency is not None:
        return args.target_latency
    if args.target_like:
        if is_arch_path(args.target_like):
            spec = arch_to_spec(load_arch(args.target_like))
        else:
            spec = get_spec(resolve_name(args.target_like)[0])
        return table.predict(spec)
    return None


def run_search(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    net = load_supernet(args.supernet)
    table = LatencyTable.load(args.lut)
    if table.family != "v2":
        raise UserError(f"{args.lut} is a {table.family} table; the V2 search needs a v2 table")
    cfg = _config(args.config)
    mes = MESConfig.from_dict(cfg.get("mes"))
    targets = SearchTargets(
        latency_ms=_target_latency(args, table),
        params=int(args.target_params * 1e6) if args.target_params else None,
        mes=args.target_mes,
    )
    if not targets.any():
        raise UserError("give a target: --target-latency MS, --target-like MODEL, --target-params M or --target-mes")
    lines = None
    if args.v1_lut:
        v1_table = LatencyTable.load(args.v1_lut)
        lines = {n: v1_table.predict(s) for n, s in V1_PUBLISHED.items() if not v1_table.missing(s)}
    out = Path(args.output)
    summary = run_v2_search(
        net,
        table,
        targets,
        data_root(args.data),
        out,
        mes=mes,
        actions_per_step=args.actions_per_step,
        calib_images=args.calib_images,
        eval_images=args.eval_images,
        lines=lines,
        lut_name=str(args.lut),
        supernet_name=str(args.supernet),
    )
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
    torch.set_num_threads(args.threads)
    table = LatencyTable.load(args.lut)
    if table.family != "v1":
        raise UserError(f"{args.lut} is a {table.family} table; V1 slimming needs a v1 table (search lut --family v1)")
    target = _target_latency(args, table)
    if target is None:
        raise UserError("give a target: --target-latency MS or --target-like efficientformer_l1")
    cfg = _config(args.config)
    space = V1Space.from_dict(cfg.get("space", {}))
    res = run_v1_search(
        table,
        target,
        space,
        data_root(args.data),
        Path(args.output),
        img_size=args.img_size,
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        train=cfg.get("train", {}),
        log=lambda line: print(line, flush=True),
    )
    spec, tm = res["spec"], res["timing"]
    print(
        f"{res['arch']}: widths {list(spec.widths)} depths {list(spec.depths)} MB3D {spec.num_vit}, "
        f"{res['latency_ms']:.2f} ms (target {target:.2f}), held-out acc {res['accuracy']:.2f}%; supernet "
        f"{tm['supernet_steps_per_s']} steps/s, {tm['paths_scored']} paths scored at "
        f"{tm['paths_per_s']}/s"
    )
    return 0


def run_pipeline(args: argparse.Namespace) -> int:
    cfg = load_pipeline_config(args.config, args.budget)
    if args.data:
        cfg["data"] = args.data
    pipeline = Pipeline(cfg, args.output, target_like=args.target_like, table_cache=args.table_cache)
    results = pipeline.run()
    cached = [n for n, t in pipeline.timing.items() if t.get("cached")]
    print(
        f"wrote {results['report']['report_md']} and {results['report']['report_json']}"
        + (f" (cached stages: {', '.join(cached)})" if cached else "")
    )
    return 0


def run_show(args: argparse.Namespace) -> int:

    spec = arch_to_spec(load_arch(args.arch)) if is_arch_path(args.arch) else get_spec(resolve_name(args.arch)[0])
    info = {
        "name": spec.name,
        "family": spec.family,
        "widths": list(spec.widths),
        "depths": list(spec.depths),
        "params": count_params(spec, args.img_size),
    }
    if args.lut:
        table = LatencyTable.load(args.lut)
        info["table_latency_ms"] = round(table.predict(spec), 3)
        info["table_sum_ms"] = round(table.block_sum(spec), 3)
    print(json.dumps(info, indent=2))
    return 0
