"""``search lut-check``: does the sum of table entries predict whole-network latency on the same runtime?

Every published model of the table's family and ``n_random`` random subnets of its space are timed end to end
(same runtime, threads, resolution and batch as the table, each network alone, warm-up then median) and compared
with the raw sum of their entries and with an affine fit ``measured ~ scale * sum + offset``. We report the mean
absolute percentage error (raw, fitted in-sample and fitted leave-one-out, which is the honest figure for new
networks) and Kendall's tau between predicted and measured (the ranking is what the search relies on).
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..deploy.fuse import deploy
from ..models.arch import build_from_arch
from ..models.base import ModelSpec
from ..models.efficientformer_v2 import V2_VARIANTS
from ..utils.io import atomic_write_json
from ..utils.timing import time_callable
from .latency import CLOCKS, LatencyTable, machine_stamp, runtime_callable, summarise
from .space import V2Space
from .v1space import V1_PUBLISHED, V1Space


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's tau-b of two equally long sequences."""
    n = len(a)
    concordant = discordant = ties_a = ties_b = 0
    for i in range(n):
        for j in range(i + 1, n):
            da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif da == db:
                concordant += 1
            else:
                discordant += 1
    denom = np.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
    return float((concordant - discordant) / denom) if denom else 0.0


def mape(pred: list[float], meas: list[float]) -> float:
    return float(100.0 * np.mean([abs(p - m) / m for p, m in zip(pred, meas, strict=True)]))


def fit_affine(pred: list[float], meas: list[float]) -> tuple[float, float]:
    """Least squares ``meas ~ scale * pred + offset`` in relative error (each point weighted by 1/meas)."""
    x, y = np.asarray(pred), np.asarray(meas)
    w = 1.0 / y
    A = np.stack([x * w, w], axis=1)
    scale, offset = np.linalg.lstsq(A, y * w, rcond=None)[0]
    return float(scale), float(offset)


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


def check_specs(table: LatencyTable, n_random: int, seed: int) -> list[ModelSpec]:
    """The networks lut-check times: those of :func:`candidate_specs` the table has every entry for."""
    specs = candidate_specs(table.family, table.meta.get("space"), n_random, seed)
    return [s for s in specs if not table.missing(s)]


def measure_network(spec: ModelSpec, table: LatencyTable, warmup: int, runs: int, workdir: Path) -> float:
    m = table.meta
    img, batch, threads = int(m["img_size"]), int(m.get("batch", 1)), int(m.get("threads", 1))
    model = build_from_arch(spec, img_size=img, num_classes=int(m.get("num_classes", 1000))).eval()
    form = model if m["runtime"] == "torch" else deploy(model, img)
    example = torch.randn(batch, 3, img, img)
    fn = runtime_callable(form, example, m["runtime"], threads, workdir)
    times = time_callable(fn, warmup, runs, CLOCKS[m.get("clock", "wall")])
    return summarise(times)[m.get("statistic", "median")]


def check_table(
    table: LatencyTable,
    *,
    n_random: int = 20,
    seed: int = 0,
    warmup: int = 5,
    runs: int = 20,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measure the networks, compare with the table; returns the rows and the error summary."""
    if table.meta.get("runtime") not in ("torch", "deploy", "onnxruntime"):
        raise ValueError(
            f"this table was measured on runtime {table.meta.get('runtime')!r}; lut-check can only time torch, "
            "deploy or onnxruntime here (check an imported table on the device it came from)"
        )
    torch.set_num_threads(int(table.meta.get("threads", 1)))
    specs = check_specs(table, n_random, seed)
    it = specs
    if progress:
        from tqdm import tqdm

        it = tqdm(specs, desc="lut-check", unit="net")
    rows = []
    start_load = machine_stamp(int(table.meta.get("threads", 1)), table.meta["runtime"])["loadavg"]
    with tempfile.TemporaryDirectory(prefix="lutcheck-") as workdir, torch.no_grad():
        for spec in it:
            rows.append(
                {
                    "name": spec.name,
                    "published": not spec.name.endswith("random"),
                    "widths": list(spec.widths),
                    "depths": list(spec.depths),
                    "sum_ms": table.block_sum(spec),
                    "measured_ms": measure_network(spec, table, warmup, runs, Path(workdir)),
                }
            )
    pred = [r["sum_ms"] for r in rows]
    meas = [r["measured_ms"] for r in rows]
    scale, offset = fit_affine(pred, meas)
    loo = []
    for i in range(len(rows)):
        s, o = fit_affine(pred[:i] + pred[i + 1 :], meas[:i] + meas[i + 1 :])
        loo.append(s * pred[i] + o)
    for r, lo in zip(rows, loo, strict=True):
        r["fitted_ms"] = scale * r["sum_ms"] + offset
        r["loo_fitted_ms"] = lo
    fitted = [r["fitted_ms"] for r in rows]
    summary = {
        "networks": len(rows),
        "published": sum(r["published"] for r in rows),
        "mape_raw_percent": mape(pred, meas),
        "mape_fitted_percent": mape(fitted, meas),
        "mape_fitted_loo_percent": mape(loo, meas),
        "kendall_tau": kendall_tau(pred, meas),
        "calibration": {"scale": scale, "offset_ms": offset},
        "loadavg_start": start_load,
        "loadavg_end": machine_stamp(1, "torch")["loadavg"],
        "warmup": warmup,
        "runs": runs,
    }
    return {"table": dict(table.meta), "summary": summary, "rows": rows}


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
        ax.scatter([r["fitted_ms"] for r in pts], [r["measured_ms"] for r in pts], marker=marker, s=60 if published
                   else 25, label=label)  # fmt: skip
        if published:
            for r in pts:
                ax.annotate(r["name"].split("_")[-1], (r["fitted_ms"], r["measured_ms"]), fontsize=8)
    lo = min(min(r["fitted_ms"], r["measured_ms"]) for r in rows) * 0.9
    hi = max(max(r["fitted_ms"], r["measured_ms"]) for r in rows) * 1.1
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel("predicted (calibrated table sum), ms")
    ax.set_ylabel("measured end to end, ms")
    m = result["table"]
    ax.set_title(
        f"{m['family']} / {m['runtime']} / {m.get('threads')} thr / {m['img_size']}px\n"
        f"MAPE raw {s['mape_raw_percent']:.1f}%  fitted(LOO) {s['mape_fitted_loo_percent']:.1f}%  "
        f"tau {s['kendall_tau']:.3f}",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths["plot"] = out / "lut_check.png"
    fig.savefig(paths["plot"], dpi=120)
    plt.close(fig)
    return paths
