"""Latency / throughput benchmark: our models (eager, deploy, compiled, ONNX Runtime fp32 / INT8) against timm's
implementation of the same network with the same weights and against MobileNetV2, all in one run.

Method: the thread count is pinned (torch and ONNX Runtime), every candidate gets ``warmup`` untimed calls, then
``runs`` rounds in which every candidate runs one batch (interleaved, so all rows share the machine's state); we
report the median and the 90th percentile of the per-call wall time, and throughput = batch / median.
The environment (CPU model, threads, library versions, load average before and after, which shows whether the
machine was shared) is stamped into the JSON.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..models.factory import create_model
from ..models.facts import BASELINE_TOP1, FACTS
from ..models.registry import list_models, resolve_name
from ..utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from ..utils.timing import ort_session, p90, time_interleaved

BACKENDS = ("eager", "deploy", "compile", "onnxruntime", "onnxruntime-int8")

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
    channels_last: bool = False


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


def parse_list(text: str, kind: type = str) -> list:
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise ValueError(f"expected a comma-separated list, got {text!r}")
    try:
        return [kind(t) for t in items]
    except ValueError:
        raise ValueError(f"expected a comma-separated list of {kind.__name__}, got {text!r}") from None


def resolve_models(text: str) -> list[str]:
    if text.strip().lower() == "all":
        return list_models()
    return [resolve_name(n)[0] for n in parse_list(text)]


def environment(threads: int) -> dict:
    import numpy

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}
    for mod in ("onnxruntime", "onnx", "timm"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = None
    return {
        "device": "cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "platform": platform.platform(),
        "versions": versions,
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
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
    kwargs = {"img_size": img} if "v2" in name else {}
    try:
        model = timm.create_model(name, pretrained=False, **kwargs).eval()
        with torch.inference_mode():
            model(torch.zeros(1, 3, img, img))
    except Exception:  # timm raises shape errors of several kinds for unsupported resolutions
        return None
    return model


def _export_plain_onnx(model: nn.Module, path: Path, img: int, batch: int) -> None:
    """ONNX export of any model (ours or timm's) with the exporter and settings of `efficientformer export`."""
    from ..deploy.export import write_onnx

    write_onnx(model, torch.randn(batch, 3, img, img), path)


def _int8_from(fp32: Path, out: Path, img: int, n_calib: int = 16) -> None:
    """Static INT8 as `efficientformer quantize` writes it, calibrated on random inputs: a speed measurement only."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from ..deploy.quantize import quantize_static_qdq

    class Reader:
        def __init__(self) -> None:
            g = torch.Generator().manual_seed(0)
            self.data = [{"image": torch.randn(1, 3, img, img, generator=g).numpy()} for _ in range(n_calib)]

        def get_next(self):
            return self.data.pop() if self.data else None

    prep = out.with_suffix(".prep.onnx")
    quant_pre_process(str(fp32), str(prep), skip_symbolic_shape=True)
    quantize_static_qdq(prep, out, Reader())
    prep.unlink(missing_ok=True)


def run_benchmark(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict:
    """Measure every (model, implementation, backend, batch) row; returns the JSON-able result.

    For each batch size, every candidate (all models, implementations and backends, and the MobileNetV2
    baseline) is built first, then all are timed interleaved (see :func:`time_interleaved`), so a row and the
    rows it is compared with were measured over the same minutes of the machine's life.
    """
    from ..deploy.fuse import deploy

    for b in cfg.backends:
        if b not in BACKENDS:
            raise ValueError(f"unknown backend {b!r}; choose from {', '.join(BACKENDS)}")
    if cfg.img_size % 32 or cfg.img_size < 32:
        raise ValueError(f"--img-size must be a positive multiple of 32, got {cfg.img_size}")
    if cfg.threads < 1 or any(b < 1 for b in cfg.batch_sizes) or cfg.runs < 1 or cfg.warmup < 0:
        raise ValueError("--threads, --batch-size and --runs must be positive (and --warmup not negative)")
    torch.set_num_threads(cfg.threads)
    env = environment(cfg.threads)
    timm = _timm() if (cfg.timm_rows or cfg.baseline) else None
    notes: list[str] = []
    if timm is None and (cfg.timm_rows or cfg.baseline):
        notes.append("timm is not installed: no timm or MobileNetV2 rows")
    tmp = Path(tempfile.mkdtemp(prefix="ef-bench-"))
    img = cfg.img_size

    def torch_fn(m, x):
        def fn():
            with torch.inference_mode():
                m(x)

        return fn

    def ort_fn(model_name, impl, model, batch, int8: bool):
        path = tmp / f"{model_name}-{impl}-b{batch}.onnx"
        if not path.exists():
            _export_plain_onnx(model, path, img, batch)
        if int8:
            q = path.with_suffix(".int8.onnx")
            if not q.exists():
                _int8_from(path, q, img)
            path = q
        sess = ort_session(path, cfg.threads)
        x = torch.randn(batch, 3, img, img).numpy()
        return lambda: sess.run(None, {"image": x})

    # (model, impl, backend, batch) -> (callable, params); filled per batch size, then timed together
    rows: list[BenchRow] = []
    try:
        built = []  # (name, ours, fused, foreign, params)
        for name in cfg.models:
            ours = create_model(name, img_size=img).eval()
            foreign = None
            if timm is not None and cfg.timm_rows:
                # timm's model, randomly initialised, and ours loaded from its state dict: same weights.
                from ..models.checkpoint import load_checkpoint

                foreign = _timm_model(timm, name, img)
                if foreign is None:
                    notes.append(f"timm's {name} cannot run at {img} px: no timm rows for it")
                else:
                    load_checkpoint(ours, foreign.state_dict())
                    ours.eval()
            fused = deploy(ours)
            if cfg.channels_last:
                fused = fused.to(memory_format=torch.channels_last)
            built.append((name, ours, fused, foreign, sum(p.numel() for p in ours.parameters())))
        baseline = timm.create_model("mobilenetv2_100", pretrained=False).eval() if timm and cfg.baseline else None

        for batch in cfg.batch_sizes:
            x = torch.randn(batch, 3, img, img)
            xf = x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x
            cands: dict[tuple[str, str, str, int], tuple[Callable[[], object], int]] = {}
            for name, ours, fused, foreign, params in built:
                for backend in cfg.backends:
                    key = (name, "ours", backend, batch)
                    if backend == "eager":
                        cands[key] = torch_fn(ours, x), params
                        if foreign is not None:
                            cands[(name, "timm", backend, batch)] = torch_fn(foreign, x), params
                    elif backend == "deploy":
                        cands[key] = torch_fn(fused, xf), params
                    elif backend == "compile":
                        # the plain ops of the deploy form; inductor does its own fusion
                        cands[key] = torch_fn(torch.compile(fused), xf), params
                        if foreign is not None:
                            cands[(name, "timm", backend, batch)] = torch_fn(torch.compile(foreign), x), params
                    else:
                        int8 = backend.endswith("int8")
                        log(f"exporting {name} for {backend} (batch {batch})")
                        cands[key] = ort_fn(name, "ours", fused, batch, int8), params
                        if foreign is not None:
                            cands[(name, "timm", backend, batch)] = ort_fn(name, "timm", foreign, batch, int8), params
            if baseline is not None:
                params = sum(p.numel() for p in baseline.parameters())
                cands[("mobilenetv2_100", "timm", "eager", batch)] = torch_fn(baseline, x), params
                for backend in cfg.backends:
                    if backend.startswith("onnxruntime"):
                        fn = ort_fn("mobilenetv2_100", "timm", baseline, batch, backend.endswith("int8"))
                        cands[("mobilenetv2_100", "timm", backend, batch)] = fn, params
            # PyTorch and ONNX Runtime each keep a pool of worker threads that spin for a while after a call; with
            # more than one thread, interleaving the two runtimes makes one's spinning workers steal cores from the
            # other. So each runtime's candidates are interleaved among themselves, one runtime after the other.
            times: dict = {}
            for runtime in ("torch", "onnxruntime"):
                is_ort = runtime == "onnxruntime"
                group = {k: fn for k, (fn, _) in cands.items() if k[2].startswith("onnxruntime") == is_ort}
                if group:
                    log(f"batch {batch}: timing {len(group)} {runtime} candidates interleaved, "
                        f"{cfg.warmup} warm-up + {cfg.runs} rounds")  # fmt: skip
                    times.update(time_interleaved(group, cfg.warmup, cfg.runs, progress=True))
            for key, (_, params) in cands.items():
                model_name, impl, backend, b = key
                med = statistics.median(times[key])
                row = BenchRow(
                    model_name, impl, backend, b, med, p90(times[key]), b * 1e3 / med, params / 1e6,
                    PUBLISHED_TOP1.get(model_name), cfg.runs,
                )  # fmt: skip
                rows.append(row)
                log(f"{model_name:22s} {impl:5s} {backend:17s} b={b:<3d} median {med:8.2f} ms  p90 {row.p90_ms:8.2f}")
    finally:
        for p in tmp.glob("*"):
            p.unlink(missing_ok=True)
        tmp.rmdir()
    env["loadavg_end"] = os.getloadavg()
    env["method"] = "interleaved per runtime: one call of every candidate per round, rotating order"
    return {"config": asdict(cfg), "environment": env, "rows": [asdict(r) for r in rows], "notes": notes}


def to_markdown(result: dict) -> str:
    env = result["environment"]
    cfg = result["config"]
    v = env["versions"]
    lines = [
        f"Device: {env['device']} ({env['cpu_model']}), {env['threads']} thread(s); torch {v['torch']}, "
        f"onnxruntime {v.get('onnxruntime')}, timm {v.get('timm')}; {cfg['img_size']} px, fp32 unless noted; "
        f"{cfg['warmup']} warm-up + {cfg['runs']} timed runs; load average "
        f"{tuple(round(x, 2) for x in env['loadavg_start'])} -> "
        f"{tuple(round(x, 2) for x in env.get('loadavg_end', ()))}; {env['time']}",
        "",
        "| model | impl | backend | batch | median (ms) | p90 (ms) | img/s | params (M) | top-1 (pub.) "
        "| vs timm same backend |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by_key = {(r["model"], r["impl"], r["backend"], r["batch"]): r for r in result["rows"]}
    for r in result["rows"]:
        ref_backend = "eager" if r["backend"] == "deploy" else r["backend"]
        ref = by_key.get((r["model"], "timm", ref_backend, r["batch"]))
        speed = f"{ref['median_ms'] / r['median_ms']:.2f}x" if ref and r["impl"] == "ours" else ""
        top1 = "" if r["top1"] is None else f"{r['top1']:.1f}"
        lines.append(
            f"| {r['model']} | {r['impl']} | {r['backend']} | {r['batch']} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} "
            f"| {r['throughput']:.1f} | {r['params_m']:.2f} | {top1} | {speed} |"
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
        m = r["model"]
        family = "V2" if m.startswith("efficientformerv2") else "V1" if m.startswith("efficientformer") else m
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
