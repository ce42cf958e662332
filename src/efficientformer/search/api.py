"""The search's steps as Python calls: measure and check a latency table, train a supernet, search it (V2) or slim
a V1 supernet toward a target, describe an architecture. Each ``efficientformer search STEP`` parses its flags,
calls one of these and prints what it returns; a script calls them the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from ..models.base import ModelSpec
from ..models.factory import named_spec
from ..runtime.config import load_config
from ..utils.recipes import resolve_config
from .greedy import MESConfig, SearchTargets
from .latency import LatencyTable, build_table
from .lut_check import check_keys, check_table, recheck_table, write_report
from .params import count_params
from .pipeline import data_root, run_v1_search, run_v2_search
from .space import V2Space
from .supernet import V2Supernet, load_supernet, save_supernet
from .train import SupernetConfig, train_supernet
from .v1space import V1_PUBLISHED, V1Space


def load_search_config(path: str | Path | None) -> dict[str, Any]:
    """The mapping of a search config (``space:``, ``mes:``, ``train:``, ...): a path or a shipped config by name
    (``search/v2_proxy``); ``{}`` for no config."""
    if not path:
        return {}
    f = resolve_config(path)  # a path, or a shipped config by name (v2_proxy); one-line error if neither
    data = yaml.safe_load(f.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping (space:, mes:, ...)")
    return data


def measure_table(
    output: str | Path,
    family: str = "v2",
    runtime: str = "deploy",
    *,
    space: str | Path | None = None,
    for_check: int | None = None,
    threads: int = 1,
    img_size: int = 224,
    batch: int = 1,
    num_classes: int = 1000,
    warmup: int = 5,
    runs: int = 25,
    statistic: str = "median",
    clock: str = "wall",
    context: int = 1,
) -> LatencyTable:
    """Measure (or resume) the latency table of a search space in ``runtime`` and save it to ``output``.

    ``space``: a YAML file with a ``space:`` mapping (or the mapping itself at its top level); default: the
    family's built-in space. ``for_check``: only the entries of the networks a table check with that many random
    subnets times (the published models and ``for_check`` random ones), not the whole space."""
    cfg = load_search_config(space)
    space_cfg = cfg.get("space", cfg) if cfg else None
    if family == "v2":
        points: V2Space | V1Space = V2Space.from_dict(space_cfg) if space_cfg else V2Space()
    else:
        points = V1Space.from_dict(space_cfg) if space_cfg else V1Space()
    return build_table(
        output,
        family,
        runtime,
        threads=threads,
        img_size=img_size,
        batch=batch,
        num_classes=num_classes,
        warmup=warmup,
        runs=runs,
        space=points,
        statistic=statistic,
        clock=clock,
        context=context,
        keys=check_keys(family, points.to_dict(), for_check, 0) if for_check is not None else None,
    )


def check_latency_table(
    lut: str | Path,
    output_dir: str | Path,
    *,
    n_random: int = 20,
    seed: int = 0,
    warmup: int = 5,
    runs: int = 20,
    measured: str | Path | None = None,
    statistic: str | None = None,
) -> tuple[LatencyTable, dict[str, Any], dict[str, Path]]:
    """The table's sum against end-to-end latency of the published models and ``n_random`` random subnets (or,
    with ``measured``, a refit on the networks an earlier check measured, on ``statistic``); writes the report
    (JSON, plot) into ``output_dir``. Returns the table, the check's result and the report's paths."""
    table = LatencyTable.load(lut)
    if measured:
        result = recheck_table(table, measured, statistic)
    else:
        result = check_table(table, n_random=n_random, seed=seed, warmup=warmup, runs=runs)
    return table, result, write_report(result, output_dir)


def store_calibration(table: LatencyTable, lut: str | Path, result: dict[str, Any], report: str | Path) -> None:
    """Keep a check's fitted per-kind calibration in the JSON table ``lut`` (every later prediction uses it)."""
    if Path(lut).suffix.lower() == ".csv":
        raise ValueError("--update-lut needs a JSON table; convert the CSV with `search lut-import` first")
    table.meta["calibration"] = {**result["summary"]["calibration"], "from": str(report)}
    table.save(lut)


def train_and_save_supernet(
    config: str | Path | None,
    data: str,
    output: str | Path,
    overrides: Sequence[str] = (),
    **settings: Any,
) -> tuple[V2Supernet, dict[str, Any], Path | None]:
    """Train the V2 supernet of the search config's ``space:`` on ``data`` (``proxy`` or an ImageNet-style folder)
    into the run folder ``output`` (checkpoints, exact resume, torchrun DDP), then write ``supernet.pth``.

    ``settings`` and ``overrides`` (``key=value`` strings, which win) are :class:`~.train.SupernetConfig` keys; a
    setting of None keeps the default. Returns the supernet, its final metrics and the path of ``supernet.pth``
    (None on every process but the first, which alone writes it)."""
    space = V2Space.from_dict(load_search_config(config).get("space", {}))
    root = data_root(data)
    out = Path(output)
    cfg = load_config(SupernetConfig, None, list(overrides), data=str(root), output=str(out), **settings)
    net, metrics = train_supernet(cfg, space, root)
    if int(os.environ.get("RANK", "0")) != 0:
        return net, metrics, None
    return net, metrics, save_supernet(net, out / "supernet.pth", data=str(root))


def target_latency(
    table: LatencyTable, latency_ms: float | None = None, like: str | Path | None = None
) -> float | None:
    """The latency a search stops at: ``latency_ms`` itself, else the table's prediction for the model ``like``
    (a published name or an architecture file), else None."""
    if latency_ms is not None:
        return latency_ms
    if like:
        return table.predict(named_spec(like))
    return None


def search_v2(
    supernet: str | Path,
    lut: str | Path,
    output: str | Path,
    *,
    data: str = "proxy",
    config: str | Path | None = None,
    target_latency_ms: float | None = None,
    target_like: str | None = None,
    target_params_m: float | None = None,
    target_mes: float | None = None,
    actions_per_step: int = 1,
    calib_images: int = 256,
    eval_images: int | None = None,
    v1_lut: str | Path | None = None,
    threads: int = 1,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The greedy MES search of a trained supernet (``supernet.pth``) on a V2 latency table, down to the first
    target met (a latency, the table latency of ``target_like``, millions of parameters, or an MES); the config's
    ``mes:`` block sets the constants. ``v1_lut``: a V1 table, to mark L1/L3/L7 on the plot. Writes ``arch.yaml``,
    ``trajectory.jsonl``/``.png``, ``summary.json`` and ``supernet_weights.pth`` into ``output``; returns the
    summary (:func:`~.pipeline.run_v2_search`)."""
    torch.set_num_threads(threads)
    net = load_supernet(supernet)
    table = LatencyTable.load(lut)
    if table.family != "v2":
        raise ValueError(f"{lut} is a {table.family} table; the V2 search needs a v2 table")
    mes = MESConfig.from_dict(load_search_config(config).get("mes"))
    targets = SearchTargets(
        latency_ms=target_latency(table, target_latency_ms, target_like),
        params=int(target_params_m * 1e6) if target_params_m else None,
        mes=target_mes,
    )
    if not targets.any():
        raise ValueError("give a target: --target-latency MS, --target-like MODEL, --target-params M or --target-mes")
    lines = None
    if v1_lut:
        v1_table = LatencyTable.load(v1_lut)
        lines = {n: v1_table.predict(s) for n, s in V1_PUBLISHED.items() if not v1_table.missing(s)}
    return run_v2_search(
        net,
        table,
        targets,
        data_root(data),
        Path(output),
        mes=mes,
        actions_per_step=actions_per_step,
        calib_images=calib_images,
        eval_images=eval_images,
        lines=lines,
        lut_name=str(lut),
        supernet_name=str(supernet),
        log=log,
    )


def search_v1(
    lut: str | Path,
    output: str | Path,
    *,
    config: str | Path | None = None,
    data: str = "proxy",
    target_latency_ms: float | None = None,
    target_like: str | None = None,
    img_size: int = 32,
    steps: int = 300,
    batch_size: int = 64,
    threads: int = 1,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """V1: the MetaPath supernet of the config's ``space:`` trained (its ``train:`` block), then slimmed on a V1
    table to a latency target (``target_latency_ms``, or the table latency of ``target_like``). Writes
    ``arch.yaml`` and ``trajectory.jsonl`` into ``output``; returns :func:`~.pipeline.run_v1_search`'s summary
    with ``target_ms``."""
    torch.set_num_threads(threads)
    table = LatencyTable.load(lut)
    if table.family != "v1":
        raise ValueError(f"{lut} is a {table.family} table; V1 slimming needs a v1 table (search lut --family v1)")
    target = target_latency(table, target_latency_ms, target_like)
    if target is None:
        raise ValueError("give a target: --target-latency MS or --target-like efficientformer_l1")
    cfg = load_search_config(config)
    res = run_v1_search(
        table,
        target,
        V1Space.from_dict(cfg.get("space", {})),
        data_root(data),
        Path(output),
        img_size=img_size,
        steps=steps,
        batch_size=batch_size,
        seed=seed,
        train=cfg.get("train", {}),
        log=log,
    )
    return {**res, "target_ms": target}


def describe_arch(arch: str | Path, lut: str | Path | None = None, img_size: int = 224) -> dict[str, Any]:
    """Name, family, widths, depths and parameters (at ``img_size``) of an architecture file or a published
    model, with the table latency (calibrated and the plain block sum) when a table ``lut`` is given."""
    spec: ModelSpec = named_spec(arch)
    info: dict[str, Any] = {
        "name": spec.name,
        "family": spec.family,
        "widths": list(spec.widths),
        "depths": list(spec.depths),
        "params": count_params(spec, img_size),
    }
    if lut:
        table = LatencyTable.load(lut)
        info["table_latency_ms"] = round(table.predict(spec), 3)
        info["table_sum_ms"] = round(table.block_sum(spec), 3)
    return info
