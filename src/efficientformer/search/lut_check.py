"""``search lut-check``: does the table predict whole-network latency on the same runtime?

Every published model of the table's family and ``n_random`` random subnets of its space are timed end to end
(same runtime, threads, resolution and batch as the table, each network alone, warm-up then median) and compared
with three predictors (:mod:`.predictor`): the raw sum of their entries, the affine fit ``scale * sum + offset``
and the per-kind calibration. For each, leave-one-out (the calibration refitted without the network it predicts:
the honest figure for a new network): Kendall's tau (the ranking is what the search relies on), the mean absolute
percentage error and the share of networks within +-10%. ``--update-lut`` stores the per-kind calibration fitted
on all networks in the table, and every later prediction of the table uses it.
"""

from __future__ import annotations

import json
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..deploy.fuse import deploy
from ..models.arch import arch_to_spec, build_from_arch, spec_to_arch
from ..models.base import ModelSpec
from ..models.efficientformer_v2 import V2_VARIANTS
from ..utils.io import atomic_write_json
from ..utils.timing import time_callable, time_interleaved
from .latency import (
    CLOCKS,
    LatencyTable,
    backend_of,
    eager_form,
    export_missing,
    machine_stamp,
    network_keys,
    runtime_callable,
    summarise,
    uses_onnx,
)
from .predictor import accuracy, fit_affine, fit_kinds, kendall_tau, leave_one_out, mape
from .space import V2Space
from .v1space import V1_PUBLISHED, V1Space


def random_v1(space: V1Space, rng: random.Random) -> ModelSpec:
    widths = tuple(rng.choice(ws) for ws in space.width_choices())
    depths = tuple(rng.randint(1, d) for d in space.max_depths)
    num_vit = rng.randint(1, min(space.max_vit, depths[3]))
    return ModelSpec("efficientformer_random", "v1", widths, depths, num_vit=num_vit)


def candidate_specs(family: str, space: dict | None, n_random: int, seed: int) -> list[ModelSpec]:
    """The published models of ``family`` and ``n_random`` random points of ``space`` (a space mapping)."""
    rng = random.Random(seed)
    if family == "v2":
        v2 = V2Space.from_dict(space) if space else V2Space()
        return list(V2_VARIANTS.values()) + [v2.sample(rng) for _ in range(n_random)]
    v1 = V1Space.from_dict(space) if space else V1Space()
    return list(V1_PUBLISHED.values()) + [random_v1(v1, rng) for _ in range(n_random)]


def check_keys(family: str, space: dict | None, n_random: int, seed: int) -> list[str]:
    """The entries of exactly the networks a check with ``n_random`` and ``seed`` times (``search lut
    --for-check N``: a table for judging the predictor, without the rest of the space)."""
    return sorted({k for s in candidate_specs(family, space, n_random, seed) for k in network_keys(s)})


def check_specs(table: LatencyTable, n_random: int, seed: int) -> list[ModelSpec]:
    """The networks lut-check times: those of :func:`candidate_specs` the table has every entry for."""
    specs = candidate_specs(table.family, table.meta.get("space"), n_random, seed)
    return [s for s in specs if not table.missing(s)]


def network_form(spec: ModelSpec, table: LatencyTable) -> tuple[str, torch.nn.Module, torch.Tensor]:
    """``(export_key, module, example)`` of ``spec`` as the table's runtime runs it (eval model or deploy form)."""
    m = table.meta
    img, batch = int(m["img_size"]), int(m.get("batch", 1))
    model = build_from_arch(spec, img_size=img, num_classes=int(m.get("num_classes", 1000))).eval()
    form = model if eager_form(m["runtime"]) else deploy(model, img)
    ident = f"network {json.dumps(spec_to_arch(spec), sort_keys=True)} img{img} classes{m.get('num_classes', 1000)}"
    return ident, form, torch.randn(batch, 3, img, img)


def measure_network(
    spec: ModelSpec,
    table: LatencyTable,
    warmup: int,
    runs: int,
    workdir: Path,
    form: tuple[str, torch.nn.Module, torch.Tensor] | None = None,
) -> dict[str, float]:
    """End-to-end timing of ``spec`` with the table's settings: median, min, p90 and count (ms). ``form``: its
    :func:`network_form`, if already built."""
    m = table.meta
    ident, module, example = form or network_form(spec, table)
    fn = runtime_callable(module, example, m["runtime"], int(m.get("threads", 1)), workdir, export_key=ident)
    times = time_callable(fn, warmup, runs, CLOCKS[m.get("clock", "wall")])
    return summarise(times)


def check_table(
    table: LatencyTable,
    *,
    n_random: int = 20,
    seed: int = 0,
    warmup: int = 5,
    runs: int = 20,
    export_batch: int = 4,
    interleave: bool = True,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measure the networks, compare with the table; returns the rows and the error summary. ``export_batch``:
    for a runtime that starts from the ONNX export, that many networks are exported in one exporter call.
    ``interleave``: every network is prepared first, then timed in rounds of one call each (rotating order), so
    a busy minute of a shared machine lands on all of them alike instead of on whichever was being timed."""
    runtime = table.meta.get("runtime")
    try:
        ok, why = backend_of(str(runtime)).available()
    except ValueError:
        raise ValueError(
            f"this table was measured on runtime {runtime!r}, which this machine cannot time (check an imported "
            "table on the device it came from)"
        ) from None
    if not ok:
        raise ValueError(f"this table was measured on runtime {runtime!r}, which cannot run here: {why}")
    torch.set_num_threads(int(table.meta.get("threads", 1)))
    specs = check_specs(table, n_random, seed)
    it = specs
    if progress:
        from tqdm import tqdm

        it = tqdm(specs, desc="lut-check", unit="net")
    rows = []
    start_load = machine_stamp(int(table.meta.get("threads", 1)), table.meta["runtime"])["loadavg"]
    forms: dict[int, tuple[str, torch.nn.Module, torch.Tensor]] = {}
    fns, m = {}, table.meta
    with tempfile.TemporaryDirectory(prefix="lutcheck-") as workdir, torch.no_grad():
        for n, spec in enumerate(it):
            if uses_onnx(str(runtime)) and export_batch > 1 and n not in forms:
                # the next networks, and their ONNX exports not cached yet in one exporter call
                forms = {i: network_form(s, table) for i, s in enumerate(specs[n : n + export_batch], start=n)}
                export_missing({str(i): f for i, f in forms.items()}, log)
            rows.append(
                {
                    "name": spec.name,
                    "published": not spec.name.endswith("random"),
                    "widths": list(spec.widths),
                    "depths": list(spec.depths),
                    "arch": spec_to_arch(spec),
                    "sum_ms": table.block_sum(spec),
                }
            )
            if not interleave:
                rows[-1]["measured_stats"] = measure_network(
                    spec, table, warmup, runs, Path(workdir), forms.pop(n, None)
                )
                continue
            ident, module, example = forms.pop(n, None) or network_form(spec, table)
            fns[n] = runtime_callable(
                module, example, m["runtime"], int(m.get("threads", 1)), Path(workdir), export_key=ident
            )
        if interleave:  # every network sees the same minutes of a shared machine
            times = time_interleaved(fns, warmup, runs, progress=progress, clock=CLOCKS[m.get("clock", "wall")])
            for n, r in enumerate(rows):
                r["measured_stats"] = summarise(times[n])
    for r in rows:
        r["measured_ms"] = r["measured_stats"][m.get("statistic", "median")]
    return {"table": dict(table.meta), "summary": summarise_check(table, rows, warmup, runs, start_load), "rows": rows}


def summarise_check(
    table: LatencyTable, rows: list[dict[str, Any]], warmup: int, runs: int, start_load: list[float]
) -> dict[str, Any]:
    """Fit the calibrations on ``rows`` (adds each predictor's leave-one-out prediction to every row) and sum up
    their accuracy."""
    feats = [table.features(spec_of(r, table.family)) for r in rows]
    meas = [r["measured_ms"] for r in rows]
    pred = [f.total for f in feats]
    scale, offset = fit_affine(pred, meas)
    kinds = fit_kinds(feats, meas)
    methods = {}
    for method in ("sum", "affine", "per-kind"):
        loo = leave_one_out(feats, meas, method)
        for r, lo in zip(rows, loo, strict=True):
            r[f"loo_{method.replace('-', '_')}_ms"] = lo
        methods[method] = accuracy(loo, meas)
    for r, f in zip(rows, feats, strict=True):
        r["fitted_ms"] = kinds.predict(f)
        r["affine_ms"] = scale * r["sum_ms"] + offset
    return {
        "networks": len(rows),
        "published": sum(r["published"] for r in rows),
        "methods_leave_one_out": methods,
        "mape_raw_percent": mape(pred, meas),
        "mape_fitted_percent": mape([r["fitted_ms"] for r in rows], meas),
        "mape_fitted_loo_percent": methods["per-kind"]["mape_percent"],
        "kendall_tau": methods["per-kind"]["kendall_tau"],
        "kendall_tau_sum": kendall_tau(pred, meas),
        "within_10_percent": methods["per-kind"]["within_10_percent"],
        "affine": {"scale": scale, "offset_ms": offset},
        "calibration": kinds.to_dict(),
        "loadavg_start": start_load,
        "loadavg_end": machine_stamp(1, "torch")["loadavg"],
        "warmup": warmup,
        "runs": runs,
    }


SAME_MEASUREMENT = ("family", "runtime", "threads", "img_size", "batch", "num_classes", "statistic", "clock")


def recheck_table(table: LatencyTable, measured: str | Path, statistic: str | None = None) -> dict[str, Any]:
    """:func:`check_table` on networks an earlier check measured (``lut_check.json``), not timed again: two
    tables (say isolated and in-context) compared on exactly the same measurements. ``statistic`` (``min``,
    ``median``, ``p90``): refit on that statistic of the table entries and of the measured networks instead (every
    statistic is stored)."""
    path = Path(measured)
    if not path.is_file():
        raise FileNotFoundError(f"--measured {path} not found; pass the lut_check.json of an earlier lut-check")
    old = json.loads(path.read_text())
    if statistic is not None:
        if any(statistic not in e for e in table.entries.values()):
            raise ValueError(f"the table does not store the {statistic!r} of every entry; measure it again")
        if any(statistic not in r.get("measured_stats", {}) for r in old["rows"]):
            raise ValueError(f"{path} does not store the {statistic!r} of every network; rerun that lut-check")
        table = LatencyTable(
            {**table.meta, "statistic": statistic}, {k: {**e, "ms": e[statistic]} for k, e in table.entries.items()}
        )
        old["table"]["statistic"] = statistic
        for r in old["rows"]:
            r["measured_ms"] = r["measured_stats"][statistic]
    diff = [k for k in SAME_MEASUREMENT if old["table"].get(k) != table.meta.get(k)]
    if diff:
        raise ValueError(f"{path} measured networks with other settings ({', '.join(diff)}) than this table")
    keep = ("name", "published", "widths", "depths", "arch", "measured_ms", "measured_stats")
    rows = [{k: r[k] for k in keep if k in r} for r in old["rows"]]
    for r in rows:
        r["sum_ms"] = table.block_sum(spec_of(r, table.family))
    s = old["summary"]
    summary = summarise_check(table, rows, s["warmup"], s["runs"], s["loadavg_start"])
    summary["loadavg_end"], summary["measured_from"] = s["loadavg_end"], str(path)
    return {"table": dict(table.meta), "summary": summary, "rows": rows}


def spec_of(row: dict[str, Any], family: str) -> ModelSpec:
    """The network of a lut-check row (rows keep the architecture, so a stored check can be refitted)."""
    return arch_to_spec(row["arch"]) if "arch" in row else candidate_by_name(row["name"], family)


def candidate_by_name(name: str, family: str) -> ModelSpec:
    published = V2_VARIANTS if family == "v2" else V1_PUBLISHED
    if name not in published:
        raise ValueError(f"lut-check row {name!r} has no 'arch'; rerun lut-check to store the architectures")
    return published[name]


def write_report(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    paths = {"json": atomic_write_json(out / "lut_check.json", result)}
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return paths
    rows, s = result["rows"], result["summary"]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for published, marker, label in ((False, "o", "random subnets"), (True, "*", "published models")):
        pts = [r for r in rows if r["published"] == published]
        ax.scatter(
            [r["loo_per_kind_ms"] for r in pts],
            [r["measured_ms"] for r in pts],
            marker=marker,
            s=60 if published else 25,
            label=label,
        )
        if published:
            for r in pts:
                ax.annotate(r["name"].split("_")[-1], (r["loo_per_kind_ms"], r["measured_ms"]), fontsize=8)
    lo = min(min(r["loo_per_kind_ms"], r["measured_ms"]) for r in rows) * 0.9
    hi = max(max(r["loo_per_kind_ms"], r["measured_ms"]) for r in rows) * 1.1
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.fill_between([lo, hi], [lo / 1.1, hi / 1.1], [lo * 1.1, hi * 1.1], color="grey", alpha=0.15, label="+-10%")
    ax.set_xlabel("predicted (per-kind calibration, leave-one-out), ms")
    ax.set_ylabel("measured end to end, ms")
    m = result["table"]
    ax.set_title(
        f"{m['family']} / {m['runtime']} / {m.get('threads')} thr / {m['img_size']}px\n"
        f"per-kind calibration, leave-one-out: tau {s['kendall_tau']:.3f}  MAPE {s['mape_fitted_loo_percent']:.1f}%"
        f"  within 10% {s['within_10_percent']:.0f}%",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths["plot"] = out / "lut_check.png"
    fig.savefig(paths["plot"], dpi=120)
    plt.close(fig)
    return paths
