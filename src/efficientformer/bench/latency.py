"""Latency / throughput benchmark: our models in every backend of the one registry
(:mod:`efficientformer.deploy.backends`: PyTorch eager / deploy / compiled / INT8, ONNX Runtime fp32 / INT8,
OpenVINO fp32 / bf16 / INT8, CUDA) against timm's implementation of the same network with the same weights and
against mobile baselines (MobileNetV2 / V3-Large / V4-Conv-Small), in one run.

Method (why each step is there: benchmarks/README.md, "Measurement"):

* glibc's allocator thresholds are pinned first (:func:`~efficientformer.utils.machine.pin_allocator`), so a
  model's page-fault behaviour no longer depends on which models ran before it in the process;
* every candidate is built and warmed up first; then the candidates are timed in *groups* (by default one group
  per model and runtime: torch and ONNX Runtime never share a round, their idle workers would steal each other's
  cores), every group runs its rounds interleaved (one call of each candidate per round, rotating order), and the
  groups take turns block by block (:func:`~efficientformer.utils.timing.time_blocks`), so every ratio compares
  rows that saw the same minutes of a shared machine;
* a square GEMM in fp32 (and bf16 where the CPU has it natively) is timed as a group of its own: its GFLOP/s is
  the ceiling each row's achieved GFLOP/s (2 x MACs x batch / median) is divided by;
* the whole interleaved run is repeated (``repeats``, 3 by default): each ratio is computed per repeat and given as
  the median with its spread; the load average is sampled before, between the repeats and after, and a one-line
  warning says when it exceeded the thread count;
* the JSON stamps CPU model, ISA extensions, threads, library versions, the scheduler group and the load average
  samples, and each row's minor page faults per call.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch import nn

from ..deploy.backends import BACKENDS, BackendContext, get_backend, random_calibration
from ..deploy.fuse import deploy
from ..models import cards
from ..models.arch import is_arch_path
from ..models.checkpoint import load_checkpoint
from ..models.factory import create_model
from ..models.facts import BASELINE_TOP1, FACTS
from ..models.layers import check_img_size
from ..models.registry import family_of, list_models, resolve_name
from ..utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from ..utils.machine import bf16_support, faults_per_call, gemm_probe, machine_report, pin_allocator
from ..utils.timing import BENCHMARK_CLOCKS, p90, time_blocks

#: the mobile baselines a row can be compared with (timm's models, random weights: a speed comparison)
BASELINES = ("mobilenetv2_100", "mobilenetv3_large_100", "mobilenetv4_conv_small")
INTERLEAVE = ("model", "runtime")

#: Published ImageNet top-1 (%) of the 300-epoch models (the papers' figure 1) and the baseline, from the facts table.
PUBLISHED_TOP1 = {**{name: f.top1[300] for name, f in FACTS.items()}, **BASELINE_TOP1}


@dataclass
class BenchConfig:
    models: list[str]
    backends: list[str] = field(default_factory=lambda: ["eager", "deploy", "onnxruntime"])
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    threads: int = 2
    img_size: int = 224
    warmup: int = 10
    runs: int = 50
    timm_rows: bool = True
    baseline: bool = True
    baselines: list[str] = field(default_factory=lambda: ["mobilenetv2_100"])
    repeats: int = 3  # the whole interleaved run, repeated: each ratio's spread is over the repeats
    clock: str = "wall"  # or "cpu": the process's CPU time (one thread on a shared machine)
    channels_last: bool = False
    interleave: str = "model"
    blocks: int = 0  # 0: the groups alternate every round
    ceiling: bool = True
    pin_allocator: bool = True


@dataclass
class BenchRow:
    model: str
    impl: str  # "ours" or "timm"
    backend: str
    batch: int
    median_ms: float
    p90_ms: float
    throughput: float
    params_m: float
    top1: float | None
    runs: int
    precision: str = "fp32"
    gmacs: float | None = None  # per image
    gflops: float | None = None  # achieved: 2 * MACs * batch / median
    ceiling_frac: float | None = None  # gflops / the GEMM ceiling of the row's precision (int8 rows: fp32's)
    faults_per_call: float | None = None  # minor page faults per call, after warm-up
    min_ms: float | None = None
    times_ms: list[float] = field(default_factory=list)  # every timed call, in order (for spread analyses)
    repeat_medians_ms: list[float] = field(default_factory=list)  # the median of each repeat of the run


def parse_list(text: str, kind: type = str) -> list:
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise ValueError(f"expected a comma-separated list, got {text!r}")
    try:
        return [kind(t) for t in items]
    except ValueError:
        raise ValueError(f"expected a comma-separated list of {kind.__name__}, got {text!r}") from None


def resolve_models(text: str) -> list[str]:
    """Model names (any accepted spelling), ``all``, or architecture files (``.yaml``/``.yml``/``.json``, as
    ``efficientformer search`` writes them), comma-separated."""
    if text.strip().lower() == "all":
        return list_models()
    out = []
    for n in parse_list(text):
        if is_arch_path(n):
            if not Path(n).expanduser().is_file():
                raise FileNotFoundError(f"architecture file not found: {n}")
            out.append(n)
        else:
            out.append(resolve_name(n)[0])
    return out


def load_average() -> float:
    """The 1-minute load average (its own function so that a test can fake a busy machine)."""
    return os.getloadavg()[0]


def environment(threads: int) -> dict:
    import numpy

    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}
    for mod in ("onnxruntime", "onnx", "timm", "torchao", "openvino", "nncf"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = None
    return {
        "device": "cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        **machine_report(threads),
        "platform": platform.platform(),
        "versions": versions,
        "loadavg_start": os.getloadavg(),
    }


def _timm():
    try:
        import timm
    except ImportError:
        return None
    return timm


def _timm_model(timm, name: str, img: int) -> nn.Module | None:
    """timm's model at ``img`` px (V2 takes ``img_size``; V1 only runs at 224), or None if it cannot run there."""
    if is_arch_path(name):
        return None
    kwargs = {"img_size": img} if family_of(name) == "v2" else {}
    try:
        model = timm.create_model(name, pretrained=False, **kwargs).eval()
        with torch.inference_mode():
            model(torch.zeros(1, 3, img, img))
    except Exception:  # timm raises shape errors of several kinds for unsupported resolutions
        return None
    return model


def _validate(cfg: BenchConfig) -> None:
    for b in cfg.backends:
        get_backend(b)  # one line naming the choices
    check_img_size(cfg.img_size, "--img-size")
    if cfg.threads < 1 or any(b < 1 for b in cfg.batch_sizes) or cfg.runs < 1 or cfg.warmup < 0:
        raise ValueError("--threads, --batch-size and --runs must be positive (and --warmup not negative)")
    if cfg.clock not in BENCHMARK_CLOCKS:
        raise ValueError(f"--clock must be one of {', '.join(BENCHMARK_CLOCKS)}, got {cfg.clock!r}")
    if cfg.repeats < 1:
        raise ValueError(f"--repeats must be positive, got {cfg.repeats}")
    if cfg.interleave not in INTERLEAVE:
        raise ValueError(f"--interleave must be one of {', '.join(INTERLEAVE)}, got {cfg.interleave!r}")
    if cfg.blocks < 0:
        raise ValueError(f"--blocks must be 0 (alternate every round) or positive, got {cfg.blocks}")
    unknown = [b for b in cfg.baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline {unknown[0]!r}; choose from {', '.join(BASELINES)}")


def _add_candidate(
    cands: dict,
    notes: list[str],
    log: Callable[[str], None],
    key: tuple,
    make: Callable[[], Callable[[], object]],
    params: int,
    macs: int,
) -> None:
    """Build one timed call; a backend failing for one model is a note, not a lost run."""
    log(f"building {' '.join(map(str, key))}")
    try:
        cands[key] = make(), params, macs
    except Exception as e:  # compilers and exporters raise many kinds; the message is what the reader needs
        text = str(e).strip()
        msg = text.splitlines()[-1] if text else type(e).__name__
        notes.append(f"{key[1]} {key[0]} {key[2]} (batch {key[3]}) failed to build: {msg[:200]}")
        log(notes[-1])


def _stem(name: str) -> str:
    return Path(name).stem if is_arch_path(name) else name


def load_warning(loads: list[float], threads: int) -> str | None:
    """One line when the load average exceeded the thread count at some point of the run, else None."""
    worst = max(loads)
    if worst <= threads:
        return None
    return (
        f"warning: load average reached {worst:.2f} during the run, above the {threads} thread(s) timed: other "
        "work shared the cores; read ratios with their spread, not absolute times"
    )


def run_benchmark(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict:
    """Measure every (model, implementation, backend, batch) row; returns the JSON-able result.

    For each batch size, every candidate (all models, implementations and backends, the baselines and the GEMM
    ceiling probes) is built and warmed up first, then all are timed in alternating blocks of interleaved rounds
    (see the module docstring), and that whole run is repeated ``cfg.repeats`` times: each row's median is over
    all its calls, each ratio is given per repeat with its median and spread. The load average is sampled before,
    between the repeats and after; above the thread count, a one-line warning goes into the result.
    """
    _validate(cfg)
    notes: list[str] = []
    if cfg.pin_allocator:
        notes.append(pin_allocator())
    torch.set_num_threads(cfg.threads)
    env = environment(cfg.threads)
    loads = [load_average()]
    backends = []
    for name in cfg.backends:
        ok, why = get_backend(name).available()
        if ok:
            backends.append(name)
        else:
            notes.append(f"{name} not timed: {why}")
    baselines = list(cfg.baselines) if cfg.baseline else []
    timm = _timm() if (cfg.timm_rows or baselines) else None
    if timm is None and (cfg.timm_rows or baselines):
        notes.append("timm is not installed: no timm or baseline rows")
    tmp = Path(tempfile.mkdtemp(prefix="ef-bench-"))
    img = cfg.img_size

    def make(backend: str, model: nn.Module, stem: str, xin: torch.Tensor) -> Callable[[], object]:
        b = get_backend(backend)
        calib = random_calibration(xin, 16 if b.runtime != "torch" else 4) if b.calibrates else []
        runner = b.prepare(model, xin, BackendContext(cfg.threads, tmp, calib, stem))
        return lambda: runner(xin)

    rows: list[BenchRow] = []
    comparisons: list[dict] = []
    try:
        built = []  # (name, ours, fused, foreign, params, macs)
        for name in cfg.models:
            ours = create_model(name, img_size=img).eval()
            foreign = None
            if timm is not None and cfg.timm_rows:
                # timm's model, randomly initialised, and ours loaded from its state dict: same weights.
                foreign = _timm_model(timm, name, img)
                if foreign is None:
                    notes.append(f"timm's {name} cannot run at {img} px: no timm rows for it")
                else:
                    load_checkpoint(ours, foreign.state_dict())
                    ours.eval()
            fused = deploy(ours)
            if cfg.channels_last:
                fused = fused.to(memory_format=torch.channels_last)
            params = sum(p.numel() for p in ours.parameters())
            built.append((name, ours, fused, foreign, params, cards.count_macs(ours, img)))
        base_models = []
        for bname in baselines if timm is not None else []:
            bmodel = timm.create_model(bname, pretrained=False).eval()
            base_models.append(
                (bname, bmodel, sum(p.numel() for p in bmodel.parameters()), cards.count_macs(bmodel, img))
            )

        for batch in cfg.batch_sizes:
            x = torch.randn(batch, 3, img, img)
            xf = x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x
            # key (model, impl, backend, batch) -> (callable, params, macs)
            cands: dict[tuple[str, str, str, int], tuple[Callable[[], object], int, int]] = {}
            add = partial(_add_candidate, cands, notes, log)
            for name, ours, fused, foreign, params, macs in built:
                for backend in backends:
                    b = get_backend(backend)
                    form, xin = (ours, x) if b.form == "eval" else (fused, xf if b.runtime == "torch" else x)
                    add(
                        (name, "ours", backend, batch),
                        partial(make, backend, form, f"{_stem(name)}-ours-b{batch}", xin),
                        params,
                        macs,
                    )
                    if foreign is not None and b.foreign_rows:
                        stem = f"{_stem(name)}-timm-b{batch}"
                        add((name, "timm", backend, batch), partial(make, backend, foreign, stem, x), params, macs)
            for bname, bmodel, bparams, bmacs in base_models:
                for backend in backends:
                    if get_backend(backend).baseline_rows:
                        add(
                            (bname, "timm", backend, batch),
                            partial(make, backend, bmodel, f"{bname}-b{batch}", x),
                            bparams,
                            bmacs,
                        )

            groups: dict[tuple[str, str], dict] = {}
            for key, (fn, _, _) in cands.items():
                runtime = BACKENDS[key[2]].runtime
                groups.setdefault((runtime, key[0] if cfg.interleave == "model" else "*"), {})[key] = fn
            ceilings: dict[str, tuple[tuple, float]] = {}
            if cfg.ceiling:
                probes = {}
                for prec in ("fp32", "bf16") if bf16_support()[0] else ("fp32",):
                    fn, flops = gemm_probe(torch.float32 if prec == "fp32" else torch.bfloat16)
                    key = ("gemm-1024", "ceiling", prec, batch)
                    probes[key], ceilings[prec] = fn, (key, flops)
                groups[("torch", "ceiling")] = probes
            log(
                f"batch {batch}: timing {len(cands)} candidates in {len(groups)} groups, {cfg.repeats} repeat(s) of "
                f"{cfg.warmup} warm-up + {cfg.runs} rounds"
            )
            blocks = min(cfg.blocks, cfg.runs) if cfg.blocks else cfg.runs
            times: dict = {}
            repeat_medians: dict = {}
            for rep in range(cfg.repeats):
                part = time_blocks(
                    groups,
                    cfg.warmup if rep == 0 else min(cfg.warmup, 2),
                    cfg.runs,
                    blocks,
                    progress=True,
                    clock=BENCHMARK_CLOCKS[cfg.clock],
                )
                loads.append(load_average())
                for key, values in part.items():
                    times.setdefault(key, []).extend(values)
                    repeat_medians.setdefault(key, []).append(statistics.median(values))
            ceiling_gflops = {
                prec: flops / statistics.median(times[key]) / 1e6 for prec, (key, flops) in ceilings.items()
            }
            for prec, gf in ceiling_gflops.items():
                env[f"gemm_ceiling_{prec}_gflops_b{batch}"] = round(gf, 1)
                log(f"GEMM ceiling {prec}: {gf:.1f} GFLOP/s")
            batch_rows = []
            for key, (fn, params, macs) in cands.items():
                model_name, impl, backend, b = key
                med = statistics.median(times[key])
                prec = BACKENDS[backend].precision
                gflops = 2.0 * macs * b / med / 1e6
                ceiling = ceiling_gflops.get(prec if prec in ceiling_gflops else "fp32")
                row = BenchRow(
                    model_name,
                    impl,
                    backend,
                    b,
                    med,
                    p90(times[key]),
                    b * 1e3 / med,
                    params / 1e6,
                    PUBLISHED_TOP1.get(model_name),
                    cfg.runs,
                    prec,
                    macs / 1e9,
                    gflops,
                    gflops / ceiling if ceiling else None,
                    faults_per_call(fn, 3),
                    min(times[key]),
                    [round(t, 4) for t in times[key]],
                    [round(t, 4) for t in repeat_medians[key]],
                )
                batch_rows.append(row)
                log(
                    f"{model_name:22s} {impl:5s} {backend:17s} b={b:<3d} median {med:8.2f} ms  p90 {row.p90_ms:8.2f}"
                    f"  {gflops:6.1f} GFLOP/s"
                )
            rows += batch_rows
            comparisons += compare(batch_rows, batch, baselines)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    loads.append(load_average())
    env["loadavg_end"] = os.getloadavg()
    env["loadavg_samples"] = [round(v, 2) for v in loads]
    warning = load_warning(loads, cfg.threads)
    if warning:
        log(warning)
    alternation = f"in {cfg.blocks} blocks" if cfg.blocks else "every round"
    allocator = "pinned" if cfg.pin_allocator else "not pinned"
    env["method"] = (
        f"groups by {cfg.interleave} and runtime, interleaved rounds (rotating order), groups alternating "
        f"{alternation}; the whole run repeated {cfg.repeats}x; clock: "
        f"{'wall time' if cfg.clock == 'wall' else 'process CPU time'}; allocator {allocator}"
    )
    return {
        "config": asdict(cfg),
        "environment": env,
        "rows": [asdict(r) for r in rows],
        "comparisons": comparisons,
        "notes": notes,
        "warnings": [warning] if warning else [],
    }


#: (name, numerator backend(s), denominator backend): ratio = median(numerator) / median(denominator) for our rows;
#: with several numerators, the fastest one present is used (and named).
RATIOS = (
    ("pytorch / onnxruntime (fp32)", ("deploy", "compile", "inductor", "inductor-cpp", "inductor-aot"), "onnxruntime"),
    ("openvino / onnxruntime (fp32)", ("openvino",), "onnxruntime"),
    ("inductor-bf16 speed-up over inductor fp32", ("inductor",), "inductor-bf16"),
    ("pt2e-int8 speed-up over inductor fp32", ("inductor",), "pt2e-int8"),
    ("onnxruntime-int8 speed-up over onnxruntime fp32", ("onnxruntime",), "onnxruntime-int8"),
    ("openvino-bf16 speed-up over openvino fp32", ("openvino",), "openvino-bf16"),
    ("openvino-int8 speed-up over openvino fp32", ("openvino",), "openvino-int8"),
)


def _spread(values: list[float]) -> dict:
    mid = statistics.median(values)
    return {
        "value": mid,
        "values": values,
        "min": min(values),
        "max": max(values),
        "spread_pct": 100 * (max(values) - min(values)) / mid if mid else 0.0,
    }


def compare(rows: list[BenchRow], batch: int, baselines: list[str] | tuple[str, ...] = BASELINES) -> list[dict]:
    """The ratios the goals are stated in (see :data:`RATIOS`), every model against each baseline in the same
    backend, and fastest against fastest (each network's fastest backend of the run). The numerators are chosen on
    the medians over all repeats; each ratio is then computed per repeat and given as its median and spread."""
    by = {(r.model, r.impl, r.backend): r for r in rows if r.batch == batch}
    med = {k: r.median_ms for k, r in by.items()}
    out = []

    def add(model: str, label: str, num: tuple, den: tuple) -> None:
        a, b = by[num].repeat_medians_ms or [by[num].median_ms], by[den].repeat_medians_ms or [by[den].median_ms]
        vals = [x / y for x, y in zip(a, b, strict=False)] or [med[num] / med[den]]
        out.append(
            {
                "model": model,
                "batch": batch,
                "ratio": label,
                "numerator": num[2],
                "denominator": den[0] if den[0] != model else den[2],
                **_spread(vals),
            }
        )

    models = sorted({r.model for r in rows if r.impl == "ours" and r.batch == batch})
    base_fastest = {}
    for base in baselines:
        mine = [(v, k) for k, v in med.items() if k[0] == base]
        if mine:
            base_fastest[base] = min(mine)[1]
    for model in models:
        for label, nums, den in RATIOS:
            present = [(med[(model, "ours", n)], n) for n in nums if (model, "ours", n) in med]
            if not present or (model, "ours", den) not in med:
                continue
            add(model, label, (model, "ours", min(present)[1]), (model, "ours", den))
        for base in baselines:
            for backend in BACKENDS:
                if (base, "timm", backend) in med and (model, "ours", backend) in med:
                    add(model, f"vs {base} in {backend}", (model, "ours", backend), (base, "timm", backend))
        fastest = min((v, k) for k, v in med.items() if k[0] == model and k[1] == "ours")[1]
        for base, bkey in base_fastest.items():
            add(model, f"fastest vs {base} fastest ({bkey[2]})", fastest, bkey)
    return out


def to_markdown(result: dict) -> str:
    env = result["environment"]
    cfg = result["config"]
    v = env["versions"]
    ceilings = ", ".join(
        f"{k.split('_')[2]} {val:.0f} GFLOP/s (batch {k.rsplit('_b', 1)[1]})"
        for k, val in env.items()
        if k.startswith("gemm_ceiling_")
    )
    lines = [
        f"Device: {env['device']} ({env['cpu_model']}; {', '.join(env.get('isa', [])) or 'ISA unknown'}; "
        f"{env.get('bf16', '')}), {env['threads']} thread(s); torch {v['torch']}, onnxruntime {v.get('onnxruntime')}, "
        f"timm {v.get('timm')}, openvino {v.get('openvino')}; {cfg['img_size']} px; {cfg.get('repeats', 1)} repeat(s) "
        f"of {cfg['warmup']} warm-up + {cfg['runs']} timed rounds "
        f"({env.get('method', '')}; {env.get('omp_wait_policy', 'OMP_WAIT_POLICY not recorded')}); "
        f"GEMM ceiling {ceilings or 'not measured'}; load average "
        f"{tuple(round(x, 2) for x in env['loadavg_start'])} -> "
        f"{tuple(round(x, 2) for x in env.get('loadavg_end', ()))} (1-min samples before, between repeats, after: "
        f"{env.get('loadavg_samples', 'not recorded')}); {env['time']}",
        *[f"\n**{w}**" for w in result.get("warnings", [])],
        "",
        "| model | impl | backend | prec. | batch | median (ms) | repeats' medians (ms) | p90 (ms) | img/s | GFLOP/s "
        "| of ceiling | faults/call | params (M) | top-1 (pub.) | vs timm same backend |",
        "|---|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by_key = {(r["model"], r["impl"], r["backend"], r["batch"]): r for r in result["rows"]}

    def num(value, fmt: str, scale: float = 1.0) -> str:
        return "" if value is None else format(value * scale, fmt)

    for r in result["rows"]:
        ref_backend = "eager" if r["backend"] == "deploy" else r["backend"]
        ref = by_key.get((r["model"], "timm", ref_backend, r["batch"]))
        speed = f"{ref['median_ms'] / r['median_ms']:.2f}x" if ref and r["impl"] == "ours" else ""
        lines.append(
            f"| {r['model']} | {r['impl']} | {r['backend']} | {r.get('precision', 'fp32')} | {r['batch']} "
            f"| {r['median_ms']:.2f} | {' / '.join(f'{m:.2f}' for m in r.get('repeat_medians_ms', []))} "
            f"| {r['p90_ms']:.2f} | {r['throughput']:.1f} | {num(r.get('gflops'), '.1f')} "
            f"| {num(r.get('ceiling_frac'), '.1f', 100)}{'%' if r.get('ceiling_frac') is not None else ''} "
            f"| {num(r.get('faults_per_call'), '.0f')} | {r['params_m']:.2f} | {num(r['top1'], '.1f')} | {speed} |"
        )
    if result.get("comparisons"):
        lines += [
            "",
            "| model | batch | ratio | numerator | value (median of repeats) | spread (min-max) |",
            "|---|---:|---|---|---:|---:|",
        ]
        for c in result["comparisons"]:
            spread = f"{c['min']:.3f}-{c['max']:.3f} ({c['spread_pct']:.1f}%)" if "min" in c else ""
            lines.append(
                f"| {c['model']} | {c['batch']} | {c['ratio']} | {c['numerator']} | {c['value']:.3f} | {spread} |"
            )
    lines += [f"\nNote: {n}" for n in result.get("notes", [])]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """Latency against published top-1 and against parameters (batch-1 rows), in the spirit of the papers' fig. 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batch = min(r["batch"] for r in result["rows"])
    rows = [r for r in result["rows"] if r["batch"] == batch]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    series: dict[str, list[dict]] = {}
    for r in rows:
        # one line per family: joining V1 and V2 points by latency would draw a meaningless zigzag
        family = family_of(r["model"])  # None for a baseline or an architecture file: a series of its own
        family = family.upper() if family else r["model"]
        series.setdefault(f"{r['impl']} {r['backend']} {family}", []).append(r)
    for ax, key, label in ((axes[0], "top1", "published ImageNet top-1 (%)"), (axes[1], "params_m", "params (M)")):
        for s_name, s_rows in sorted(series.items()):
            pts = sorted((r["median_ms"], r[key], r["model"]) for r in s_rows if r[key] is not None)
            if not pts:
                continue
            style = "--" if s_name.endswith("V1") else "-"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=s_name, linewidth=1, linestyle=style)
            if s_name.startswith("ours deploy") or "mobilenet" in pts[0][2]:
                for lat, y, m in pts:
                    ax.annotate(
                        m.replace("efficientformer", "EF").replace("mobilenetv2_100", "MNv2"),
                        (lat, y),
                        fontsize=7,
                        xytext=(3, 3),
                        textcoords="offset points",
                    )
        ax.set_xscale("log")
        ax.set_xlabel(f"latency, batch {batch} (ms, median, log scale)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    env = result["environment"]
    fig.suptitle(f"{env['cpu_model']}, {env['threads']} thread(s), {result['config']['img_size']} px", fontsize=9)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, lambda f: f.write(buf.getvalue()))


def write_outputs(result: dict, out_dir: str | Path, stem: str = "benchmark") -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md", "png": out_dir / f"{stem}.png"}
    atomic_write_json(paths["json"], json.loads(json.dumps(result)))
    atomic_write_text(paths["md"], to_markdown(result))
    plot(result, paths["png"])
    return paths


def __getattr__(name: str) -> object:
    # the MAC count is the models layer's (models.cards.count_macs, the one the model cards use)
    if name == "count_macs":
        warnings.warn(
            "efficientformer.bench.latency.count_macs is deprecated; use efficientformer.models.cards.count_macs",
            DeprecationWarning,
            stacklevel=2,
        )
        return cards.count_macs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
