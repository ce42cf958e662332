"""Latency lookup tables: every block the search can produce, timed in isolation where the model will run.

A table maps an entry key to the median wall time (ms) of that block at its stage's resolution. A network's
predicted latency is the sum of the entries of its blocks (plus, once ``search lut-check`` has fitted one, an
affine correction ``scale * sum + offset`` that absorbs per-call overheads and cache effects the isolated
blocks do not see).

Entry keys (stages numbered 1-4; ``w`` width, ``h`` FFN hidden width, ``i``/``o`` input/output width):

======================  ===========================================================================
V2 ``stem/w{w}``        the two stride-2 convs (3 -> w/2 -> w) at the input resolution
V2 ``ffn/s{k}/w{w}/h{h}`` one FFN residual branch, ``x + ls * mlp(x)``, hidden ``h = int(w * ratio)``
V2 ``attn/s{k}/w{w}``   one attention residual branch (stage 3 with its stride-2 grid and upsample)
V2 ``down/s{k}/i{i}/o{o}`` the conv downsample into stage 2 or 3
V2 ``dual/i{i}/o{o}``   the dual-path (conv + attention) downsample into stage 4
V1 ``mb4d/s{k}/w{w}``   one Meta4D block (pool mixer + conv MLP)
V1 ``mb3d/w{w}``        one Meta3D block (LayerNorm + attention, LayerNorm + MLP) on stage-4 tokens
V1 ``down/s{k}/i{i}/o{o}`` the conv downsample into stage k
``head/w{w}``           final norm, global pool and classifier
======================  ===========================================================================

An attention + FFN block is ``attn`` + ``ffn``. Runtimes: ``torch`` (the eager model), ``deploy`` (the fused
inference form from :func:`efficientformer.deploy.fuse.deploy`), ``onnxruntime`` (the deploy form exported with
the project's ONNX exporter, run by ONNX Runtime on CPU).

Tables measured elsewhere (a phone with Core ML or ExecuTorch, say) are imported from CSV with the columns
``key,ms`` (see :func:`import_table` and ``docs/search.md``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..deploy.export import write_onnx
from ..deploy.fuse import deploy
from ..models.arch import build_from_arch
from ..models.base import ModelSpec
from ..models.efficientformer_v2 import V2_VARIANTS
from ..models.layers import ceil_div, to_grid
from ..utils.io import atomic_write_json
from ..utils.machine import cpu_model, isa_flags
from ..utils.timing import ort_session, p90, time_callable
from .predictor import KindCalibration, NetworkFeatures, features
from .space import V2Space
from .v1space import V1_PUBLISHED, V1Space

FORMAT_NAME = "efficientformer-latency-table"
FORMAT_VERSION = 1
RUNTIMES = ("torch", "deploy", "onnxruntime")
#: ``median`` (the default) or ``min``: on a shared machine, long calls are preempted more often than short ones,
#: which inflates whole-network medians relative to block medians; the minimum is the uncontended time.
STATISTICS = ("median", "min")
#: ``wall`` (the default) or ``cpu``: the calling thread's CPU time, which leaves out time spent preempted by
#: other processes; meaningful with one thread only (torch and ONNX Runtime then compute on the calling thread).
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


class LatencyTableError(ValueError):
    """A table that cannot answer the question asked of it; the message says what to do."""


# ---------------------------------------------------------------------------------------------------------------
# Which entries a network uses
# ---------------------------------------------------------------------------------------------------------------
def network_keys(spec: ModelSpec) -> list[str]:
    """The table entries whose sum is ``spec``'s latency (repeated keys are repeated)."""
    W, D = spec.widths, spec.depths
    keys = [f"stem/w{W[0]}"]
    for i in range(4):
        k = i + 1
        if spec.family == "v2":
            if i in (1, 2):
                keys.append(f"down/s{k}/i{W[i - 1]}/o{W[i]}")
            elif i == 3:
                keys.append(f"dual/i{W[2]}/o{W[3]}")
            for j in range(D[i]):
                if spec.has_attention(i, j):
                    keys.append(f"attn/s{k}/w{W[i]}")
                keys.append(f"ffn/s{k}/w{W[i]}/h{int(W[i] * spec.mlp_ratios[i][j])}")
        else:
            if i > 0:
                keys.append(f"down/s{k}/i{W[i - 1]}/o{W[i]}")
            n3d = spec.num_vit if i == 3 else 0
            keys += [f"mb4d/s{k}/w{W[i]}"] * (D[i] - n3d)
            keys += [f"mb3d/w{W[i]}"] * n3d
    keys.append(f"head/w{W[3]}")
    return keys


def v2_space_keys(space: V2Space, published: bool = True) -> list[str]:
    """Every entry a subnet of ``space`` can use (plus, with ``published``, those of the published V2 models)."""
    ws = space.widths
    keys = [f"stem/w{w}" for w in ws[0]]
    for i in range(4):
        for w in ws[i]:
            keys += [f"ffn/s{i + 1}/w{w}/h{h}" for h in sorted({int(w * r) for r in space.ratios})]
            if i >= 2:
                keys.append(f"attn/s{i + 1}/w{w}")
    keys += [f"down/s2/i{a}/o{b}" for a in ws[0] for b in ws[1]]
    keys += [f"down/s3/i{a}/o{b}" for a in ws[1] for b in ws[2]]
    keys += [f"dual/i{a}/o{b}" for a in ws[2] for b in ws[3]]
    keys += [f"head/w{w}" for w in ws[3]]
    for spec in V2_VARIANTS.values() if published else ():
        keys += network_keys(spec)
    return list(dict.fromkeys(keys))


def v1_space_keys(space: V1Space) -> list[str]:
    ws = space.width_choices()
    keys = [f"stem/w{w}" for w in ws[0]]
    for i in range(4):
        keys += [f"mb4d/s{i + 1}/w{w}" for w in ws[i]]
        if i > 0:
            keys += [f"down/s{i + 1}/i{a}/o{b}" for a in ws[i - 1] for b in ws[i]]
    keys += [f"mb3d/w{w}" for w in ws[3]]
    keys += [f"head/w{w}" for w in ws[3]]
    for spec in V1_PUBLISHED.values():
        keys += network_keys(spec)
    return list(dict.fromkeys(keys))


# ---------------------------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------------------------
class LatencyTable:
    """Entry key -> median milliseconds, with the settings and machine it was measured on."""

    def __init__(self, meta: dict[str, Any], entries: dict[str, dict[str, float]] | None = None) -> None:
        self.meta = meta
        self.entries: dict[str, dict[str, float]] = entries or {}

    @property
    def family(self) -> str:
        return self.meta["family"]

    @property
    def calibration(self) -> KindCalibration:
        """The stored calibration (``lut-check --update-lut``): per-kind, affine, or the plain sum (scale 1)."""
        return KindCalibration.from_dict(self.meta.get("calibration") or {"method": "sum"})

    def ms(self, key: str) -> float:
        try:
            return float(self.entries[key]["ms"])
        except KeyError:
            raise LatencyTableError(
                f"the latency table has no entry {key!r}; rebuild it with `efficientformer search lut` for this "
                "search space (or add the entry to the imported CSV)"
            ) from None

    def block_sum(self, spec: ModelSpec) -> float:
        if spec.family != self.family:
            raise LatencyTableError(f"{spec.name} is a {spec.family} model but this is a {self.family} table")
        return sum(self.ms(k) for k in network_keys(spec))

    def features(self, spec: ModelSpec) -> NetworkFeatures:
        """The network's table entries summed per block kind and stage, and its number of blocks."""
        if spec.family != self.family:
            raise LatencyTableError(f"{spec.name} is a {spec.family} model but this is a {self.family} table")
        return features(network_keys(spec), self.ms)

    def predict(self, spec: ModelSpec) -> float:
        """Predicted end-to-end latency (ms): the stored calibration applied to the network's entries."""
        return self.calibration.predict(self.features(spec))

    def missing(self, spec: ModelSpec) -> list[str]:
        return [k for k in dict.fromkeys(network_keys(spec)) if k not in self.entries]

    def to_dict(self) -> dict[str, Any]:
        return {**self.meta, "entries": self.entries}

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"latency table not found: {path}; build one with `efficientformer search lut`")
        if path.suffix.lower() == ".csv":
            return import_table(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise LatencyTableError(f"{path} is not JSON ({err.msg}); pass a table written by `search lut`") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise LatencyTableError(f"{path} is not a latency table (no 'format: {FORMAT_NAME}')")
        entries = data.pop("entries", {})
        for key, value in entries.items():
            if not isinstance(value, dict) or not isinstance(value.get("ms"), int | float) or value["ms"] < 0:
                raise LatencyTableError(f"{path}: entry {key!r} must be {{'ms': non-negative number}}, got {value!r}")
        return cls(data, entries)


KEY_PATTERN = re.compile(
    r"^(stem/w\d+|head/w\d+|ffn/s[1-4]/w\d+/h\d+|attn/s[34]/w\d+|down/s[2-4]/i\d+/o\d+|dual/i\d+/o\d+|"
    r"mb4d/s[1-4]/w\d+|mb3d/w\d+)$"
)


def import_table(
    path: str | Path, family: str | None = None, img_size: int | None = None, runtime: str | None = None
) -> LatencyTable:
    """A table measured elsewhere, from CSV: a header row ``key,ms`` then one row per entry.

    Lines starting with ``#`` are comments; ``# family: v2``, ``# img_size: 224``, ``# runtime: coreml`` and
    ``# device: iPhone 12`` comment lines fill in the table's settings (arguments override them).
    """
    path = Path(path)
    meta: dict[str, Any] = {}
    rows: list[str] = []
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            name, sep, value = line[1:].partition(":")
            if sep:
                meta[name.strip()] = value.strip()
        elif line.strip():
            rows.append(line)
    reader = csv.DictReader(rows)
    if reader.fieldnames is None or not {"key", "ms"} <= set(reader.fieldnames):
        raise LatencyTableError(f"{path}: the CSV must start with a header row 'key,ms'")
    entries = {}
    for n, row in enumerate(reader, start=2):
        key = (row["key"] or "").strip()
        if not KEY_PATTERN.match(key):
            raise LatencyTableError(f"{path} row {n}: {key!r} is not an entry key (e.g. ffn/s3/w96/h288)")
        try:
            ms = float(row["ms"])
        except (TypeError, ValueError):
            raise LatencyTableError(f"{path} row {n}: ms must be a number, got {row['ms']!r}") from None
        if ms < 0 or not np.isfinite(ms):
            raise LatencyTableError(f"{path} row {n}: ms must be a finite non-negative number, got {ms}")
        entries[key] = {"ms": ms}
    fam = family or meta.get("family") or ("v1" if any(k.startswith("mb") for k in entries) else "v2")
    if fam not in ("v1", "v2"):
        raise LatencyTableError(f"{path}: family must be v1 or v2, got {fam!r}")
    table_meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "family": fam,
        "runtime": runtime or meta.get("runtime", "imported"),
        "img_size": int(img_size or meta.get("img_size", 224)),
        "source": f"imported from {path.name}",
        "machine": {"device": meta.get("device", "unknown")},
        "complete": True,
    }
    return LatencyTable(table_meta, entries)


# ---------------------------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------------------------
def machine_stamp(threads: int, runtime: str) -> dict[str, Any]:
    """CPU model, ISA flags, thread count, runtime and library versions, load average now."""
    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    if runtime == "onnxruntime":
        try:
            import onnxruntime

            versions["onnxruntime"] = onnxruntime.__version__
        except ImportError:
            versions["onnxruntime"] = None
    return {
        "cpu_model": cpu_model(),
        "isa": [name for name, present in isa_flags().items() if present],
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "runtime": runtime,
        "platform": platform.platform(),
        "versions": versions,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _parse(key: str) -> tuple[str, dict[str, int]]:
    kind, *parts = key.split("/")
    return kind, {p[0]: int(p[1:]) for p in parts}


class _Residual(nn.Module):
    """``x + scale * branch(x)``: one residual branch of an eager V2 block."""

    def __init__(self, branch: nn.Module, scale: nn.Module) -> None:
        super().__init__()
        self.branch, self.scale = branch, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.scale(self.branch(x))


class _TokenBlock(nn.Module):
    """An eager Meta3D block on (B, N, C) tokens of a fixed grid."""

    def __init__(self, block: nn.Module, grid: tuple[int, int]) -> None:
        super().__init__()
        self.block, self.grid = block, grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x, self.grid)


class _EagerHead(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model._final_norm(x))


class _DeployHead(nn.Module):
    def __init__(self, dst: nn.Module) -> None:
        super().__init__()
        self.dst = dst

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dst.spec.family == "v1":  # (B, N, C) tokens
            w = self.dst.spec.widths[-1]
            return self.dst.head(torch.nn.functional.layer_norm(x, (w,), eps=self.dst.norm_eps).mean(dim=1))
        return self.dst.head(x.mean(dim=(2, 3)))


#: block kinds whose output has the input's shape: the ones a context table times as a chain of copies
CHAINABLE = ("ffn", "attn", "mb4d", "mb3d")


def _probe_spec(family: str, kind: str, p: dict[str, int], repeat: int = 1) -> tuple[ModelSpec, int]:
    """A minimal network holding the block of an entry (``repeat`` copies of it in its stage for a chainable
    kind); returns it and the 0-based stage the block is in."""
    if family == "v2":
        widths = [16, 32, 64, 128]
        depths = [1, 1, 1, 1]
        attn = [[False], [False], [False], [False]]
        ratios = [[1.0], [1.0], [1.0], [1.0]]
        stage = {"stem": 0, "head": 3, "dual": 3}.get(kind, p.get("s", 1) - 1)
        if kind in ("stem",):
            widths[0] = p["w"]
        elif kind == "head":
            widths[3] = p["w"]
        elif kind in ("down", "dual"):
            widths[stage - 1], widths[stage] = p["i"], p["o"]
        else:
            widths[stage] = p["w"]
            depths[stage] = repeat
            ratios[stage] = [(p["h"] + 0.5) / p["w"] if kind == "ffn" else 1.0] * repeat  # int(w * r) == h
            attn[stage] = [kind == "attn"] * repeat
        mlp_ratios = tuple(tuple(r) for r in ratios)
        flags = tuple(tuple(a) for a in attn)
        num_vit = max(sum(flags[2]), sum(flags[3]))
        spec = ModelSpec("probe", "v2", tuple(widths), tuple(depths), num_vit=num_vit, mlp_ratios=mlp_ratios,
                         attention=flags)  # fmt: skip
        return spec, stage
    widths = [16, 32, 64, 128]
    depths, num_vit = [1, 1, 1, 2], 1
    stage = {"stem": 0, "head": 3, "mb3d": 3}.get(kind, p.get("s", 1) - 1)
    if kind == "stem":
        widths[0] = p["w"]
    elif kind in ("head", "mb3d", "mb4d"):
        widths[stage] = p["w"]
        if kind == "mb3d":
            depths[3], num_vit = 1 + repeat, repeat
        else:
            depths[stage] = repeat + (1 if stage == 3 else 0)
    elif kind == "down":
        widths[stage - 1], widths[stage] = p["i"], p["o"]
    return ModelSpec("probe", "v1", tuple(widths), tuple(depths), num_vit=num_vit), stage


def _probe_module(family: str, key: str, runtime: str, img: tuple[int, int], num_classes: int, batch: int,
                  context: int = 1) -> tuple[nn.Module, torch.Tensor, int]:  # fmt: skip
    """``(module, example_input, copies)`` of the block an entry times, in the form the runtime runs: the block
    alone, or for a chainable kind with ``context`` > 1 a chain of that many copies (each with its own weights)."""
    kind, p = _parse(key)
    copies = context if kind in CHAINABLE else 1
    spec, stage = _probe_spec(family, kind, p, copies)
    model = build_from_arch(spec, img_size=img, num_classes=num_classes, distillation=True).eval()
    form = model if runtime == "torch" else deploy(model, img)
    h, w = img
    grids = [(ceil_div(h, 2 ** (i + 2)), ceil_div(w, 2 ** (i + 2))) for i in range(4)]
    st = form.stages[stage]
    if kind == "stem":
        return form.stem, torch.randn(batch, 3, h, w), 1
    if kind in ("down", "dual"):
        c, (gh, gw) = spec.widths[stage - 1], grids[stage - 1]
        return st.downsample, torch.randn(batch, c, gh, gw), 1
    c, (gh, gw) = spec.widths[stage], grids[stage]
    x = torch.randn(batch, c, gh, gw)
    if kind == "head":
        if family == "v1":
            x = x.flatten(2).transpose(1, 2) if runtime != "torch" else x
        return (_EagerHead(model) if runtime == "torch" else _DeployHead(form)), x, 1
    if family == "v2":
        parts = []
        for blk in list(st.blocks)[:copies]:
            if runtime == "torch":
                parts.append(_Residual(blk.mlp, blk.ls2) if kind == "ffn" else _Residual(blk.attn, blk.ls1))
            else:
                parts.append(blk.ffn if kind == "ffn" else blk.attn)
        return (parts[0] if copies == 1 else nn.Sequential(*parts)), x, copies
    if kind == "mb4d":
        blocks = list(st.blocks)[:copies]
        return (blocks[0] if copies == 1 else nn.Sequential(*blocks)), x, copies
    tokens = x.flatten(2).transpose(1, 2).contiguous()
    blocks = list(st.blocks)[-copies:]
    parts = [_TokenBlock(b, (gh, gw)) if runtime == "torch" else b for b in blocks]
    return (parts[0] if copies == 1 else nn.Sequential(*parts)), tokens, copies


#: ONNX files of blocks and networks, by what they are (shape, form, library versions), not by their weights: a
#: latency does not depend on the weight values, so a table at 2 threads or a second check reuses every export
EXPORT_CACHE = Path("~/.cache/efficientformer/onnx-latency")


def export_cache_dir() -> Path:
    return Path(os.environ.get("EFFICIENTFORMER_EXPORT_CACHE") or EXPORT_CACHE).expanduser()


def runtime_callable(module: nn.Module, example: torch.Tensor, runtime: str, threads: int, workdir: Path,
                     export_key: str | None = None):  # fmt: skip
    """A zero-argument callable running ``module`` on ``example`` in ``runtime`` (module already in its form).

    ``export_key`` (ONNX Runtime): what the module is (e.g. a table key and its settings); the export is kept in
    :func:`export_cache_dir` under a hash of it and the library versions, and reused instead of exported again.
    """
    module = module.eval()
    if runtime == "onnxruntime":
        if export_key is not None:
            ident = f"{export_key}|{tuple(example.shape)}|torch {torch.__version__}|opset default"
            path = export_cache_dir() / f"{hashlib.sha256(ident.encode()).hexdigest()[:20]}.onnx"
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = Path(tempfile.mkstemp(suffix=".onnx", dir=path.parent)[1])
                write_onnx(module, example, tmp)
                os.replace(tmp, path)  # atomic: a killed export never leaves a half file under the final name
        else:
            path = Path(tempfile.mkstemp(suffix=".onnx", dir=workdir)[1])
            write_onnx(module, example, path)
        sess = ort_session(path, threads)
        name = sess.get_inputs()[0].name
        feed = {name: example.numpy()}
        if export_key is None:
            path.unlink(missing_ok=True)
        return lambda: sess.run(None, feed)

    def call():
        with torch.inference_mode():
            return module(example)

    return call


def _settings(table: LatencyTable) -> tuple:
    m = table.meta
    return (m.get("family"), m.get("runtime"), m.get("threads"), m.get("img_size"), m.get("batch"),
            m.get("num_classes"), m.get("statistic", "median"), m.get("clock", "wall"),
            m.get("context", 1))  # fmt: skip


def summarise(times: list[float]) -> dict[str, float]:
    """The statistics a table entry keeps of its timed calls (ms)."""
    return {"median": statistics.median(times), "min": min(times), "p90": p90(times), "n": len(times)}


def build_table(
    output: str | Path,
    family: str,
    runtime: str,
    *,
    threads: int = 1,
    img_size: int = 224,
    batch: int = 1,
    num_classes: int = 1000,
    warmup: int = 5,
    runs: int = 25,
    space: V2Space | V1Space | None = None,
    statistic: str = "median",
    clock: str = "wall",
    keys: Iterable[str] | None = None,
    context: int = 1,
    progress: bool = True,
    save_every_s: float = 2.0,
    stop_after: int | None = None,
    log: Callable[[str], None] = print,
) -> LatencyTable:
    """Measure (or finish measuring) a table; it is saved as it grows, so an interrupted build resumes.

    ``keys`` restricts the entries (default: every entry of ``space`` plus the published models of the family).
    ``context`` > 1 times every shape-preserving block (FFN, attention, Meta4D, Meta3D) as a chain of that many
    copies and stores the time per copy: the block fed by a block, as inside a network (nn-Meter's point, see
    :mod:`.predictor`). ``stop_after`` measures at most that many new entries and returns (used by tests to
    simulate a crash).
    """
    if context < 1:
        raise ValueError(f"--context must be at least 1, got {context}")
    if family not in ("v1", "v2"):
        raise ValueError(f"--family must be v1 or v2, got {family!r}")
    if runtime not in RUNTIMES:
        raise ValueError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if img_size % 32 or img_size < 32:
        raise ValueError(f"--img-size must be a positive multiple of 32, got {img_size}")
    if threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    if statistic not in STATISTICS:
        raise ValueError(f"--statistic must be one of {', '.join(STATISTICS)}, got {statistic!r}")
    if clock not in CLOCKS:
        raise ValueError(f"--clock must be one of {', '.join(CLOCKS)}, got {clock!r}")
    if clock == "cpu" and threads != 1:
        raise ValueError("--clock cpu measures one thread's CPU time; use it with --threads 1")
    if space is None:
        space = V2Space() if family == "v2" else V1Space()
    wanted = list(keys) if keys is not None else (
        v2_space_keys(space) if family == "v2" else v1_space_keys(space)  # type: ignore[arg-type]
    )  # fmt: skip
    output = Path(output)
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "family": family,
        "runtime": runtime,
        "threads": threads,
        "img_size": img_size,
        "batch": batch,
        "num_classes": num_classes,
        "warmup": warmup,
        "runs": runs,
        "statistic": statistic,
        "clock": clock,
        "context": context,
        "source": "measured",
        "space": space.to_dict(),
        "machine": machine_stamp(threads, runtime),
        "complete": False,
    }
    table = LatencyTable(meta)
    if output.exists():
        old = LatencyTable.load(output)
        if _settings(old) != _settings(table):
            raise ValueError(
                f"{output} was measured with other settings (family, runtime, threads, img_size, batch, classes = "
                f"{_settings(old)}); pass another --output or delete it"
            )
        table.entries = old.entries
        table.meta["resumed_from"] = old.meta.get("machine", {})
        if old.meta.get("machine", {}).get("cpu_model") != meta["machine"]["cpu_model"]:
            raise ValueError(f"{output} was measured on another CPU ({old.meta['machine'].get('cpu_model')})")
    todo = [k for k in wanted if k not in table.entries]
    if not todo:
        table.meta["complete"] = True
        table.save(output)
        return table
    log(f"latency table {output}: {len(wanted) - len(todo)} of {len(wanted)} entries present, measuring {len(todo)}")
    torch.set_num_threads(threads)
    img = to_grid(img_size)
    bar = todo
    if progress:
        from tqdm import tqdm

        bar = tqdm(todo, desc=f"lut {family}/{runtime}", unit="entry")
    last_save = time.monotonic()
    measured = 0
    with tempfile.TemporaryDirectory(prefix="lut-") as workdir:
        for key in bar:
            if stop_after is not None and measured >= stop_after:
                break
            with torch.no_grad():
                module, example, copies = _probe_module(family, key, runtime, img, num_classes, batch, context)
                ident = f"block {family} {key} ctx{context} img{img} classes{num_classes}"
                fn = runtime_callable(module, example, runtime, threads, Path(workdir), export_key=ident)
                times = [t / copies for t in time_callable(fn, warmup, runs, CLOCKS[clock])]
            stats = summarise(times)
            table.entries[key] = {"ms": stats[statistic], **stats}
            measured += 1
            if time.monotonic() - last_save > save_every_s:
                table.save(output)
                last_save = time.monotonic()
    table.meta["complete"] = all(k in table.entries for k in wanted)
    table.meta["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    table.save(output)
    return table
