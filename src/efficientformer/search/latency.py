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

An attention + FFN block is ``attn`` + ``ffn``. Runtimes: every CPU backend of the deployment registry
(:mod:`efficientformer.deploy.registry`; the benchmark's rows), so a block is prepared and run exactly as the
benchmark and a deployed model run it: ``torch`` (the registry's ``eager``: the training-time model in eval mode),
``deploy`` (the fused inference form from :func:`efficientformer.deploy.fuse.deploy`), ``onnxruntime`` and
``onnxruntime-int8`` (the deploy form exported with the project's ONNX exporter; its static QDQ INT8 as
``efficientformer quantize`` writes it), ``openvino``, ``openvino-bf16``, ``openvino-int8`` (that export in
OpenVINO; NNCF INT8), ``inductor-aot`` (an AOTInductor package), and the registry's other torch backends. Every
file a backend derives from a block (ONNX export, INT8 model, OpenVINO INT8 IR, AOT package) is kept in one
exports cache (:func:`export_cache_dir`) under a name made of what the block is.

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

from ..deploy.backends import BACKENDS, Backend, BackendContext, prepare_runner
from ..deploy.export import write_onnx
from ..deploy.fuse import deploy
from ..models.arch import build_from_arch
from ..models.base import ModelSpec
from ..models.efficientformer_v2 import V2_VARIANTS
from ..models.layers import ceil_div, check_img_size, to_grid
from ..utils.io import atomic_write_json
from ..utils.machine import cpu_model, isa_flags
from ..utils.optional import require
from ..utils.timing import p90, time_callable
from .predictor import KindCalibration, NetworkFeatures, features
from .space import V2Space
from .v1space import V1_PUBLISHED, V1Space

FORMAT_NAME = "efficientformer-latency-table"
FORMAT_VERSION = 1
#: a table's runtime name -> the registry backend that runs it (``torch`` is the registry's ``eager``)
RUNTIME_BACKENDS = {"torch": "eager"}


def table_runtimes() -> tuple[str, ...]:
    """Every runtime a table can be measured in: the registry's CPU backends (``torch`` for ``eager``)."""
    names = [n for n, b in BACKENDS.items() if b.runtime != "cuda"]
    return tuple(next((t for t, b in RUNTIME_BACKENDS.items() if b == n), n) for n in names)


RUNTIMES = table_runtimes()


def backend_of(runtime: str) -> Backend:
    """The registry backend of a table runtime; a one-line ``ValueError`` naming the choices otherwise."""
    name = RUNTIME_BACKENDS.get(runtime, runtime)
    if name not in BACKENDS or BACKENDS[name].runtime == "cuda":
        raise ValueError(f"--runtime must be one of {', '.join(table_runtimes())}, got {runtime!r}")
    return BACKENDS[name]


def eager_form(runtime: str) -> bool:
    """Whether ``runtime`` runs the training-time model (else the folded deploy form)."""
    return backend_of(runtime).form == "eval"


#: ``median`` (the default) or ``min``: on a shared machine, long calls are preempted more often than short ones,
#: which inflates whole-network medians relative to block medians; the minimum is the uncontended time.
STATISTICS = ("median", "min")
#: ``wall`` (the default) or ``cpu``: the process's CPU time (all its threads), which leaves out time spent
#: preempted by other processes; meaningful with one thread only (torch and ONNX Runtime then compute on the
#: calling thread, OpenVINO on its one worker thread, which is why it is the process's time, not the thread's).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


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
#: the libraries whose versions a table of a registry runtime group records (the exporter's too)
RUNTIME_LIBRARIES = {
    "onnxruntime": ("onnxruntime", "onnx", "onnxscript"),
    "openvino": ("openvino", "onnx", "onnxscript"),
}


def _version(lib: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(lib)
    except PackageNotFoundError:
        return None


def machine_stamp(threads: int, runtime: str) -> dict[str, Any]:
    """CPU model, ISA flags, thread count, runtime and library versions, load average now."""
    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    backend = BACKENDS.get(RUNTIME_BACKENDS.get(runtime, runtime))
    for lib in RUNTIME_LIBRARIES.get(backend.runtime if backend else runtime, ()):
        versions[lib] = _version(lib)
    if backend is not None and backend.precision == "int8" and backend.runtime == "openvino":
        versions["nncf"] = _version("nncf")
    return {
        "cpu_model": cpu_model(),
        "isa": [name for name, present in isa_flags().items() if present],
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "runtime": runtime,
        "backend": backend.name if backend else None,
        "precision": backend.precision if backend else None,
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
        spec = ModelSpec(
            "probe", "v2", tuple(widths), tuple(depths), num_vit=num_vit, mlp_ratios=mlp_ratios, attention=flags
        )
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


def _probe_module(
    family: str, key: str, runtime: str, img: tuple[int, int], num_classes: int, batch: int, context: int = 1
) -> tuple[nn.Module, torch.Tensor, int]:
    """``(module, example_input, copies)`` of the block an entry times, in the form the runtime runs: the block
    alone, or for a chainable kind with ``context`` > 1 a chain of that many copies (each with its own weights)."""
    kind, p = _parse(key)
    copies = context if kind in CHAINABLE else 1
    spec, stage = _probe_spec(family, kind, p, copies)
    eager = eager_form(runtime)
    model = build_from_arch(spec, img_size=img, num_classes=num_classes, distillation=True).eval()
    form = model if eager else deploy(model, img)
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
            x = x.flatten(2).transpose(1, 2) if not eager else x
        return (_EagerHead(model) if eager else _DeployHead(form)), x, 1
    if family == "v2":
        parts = []
        for blk in list(st.blocks)[:copies]:
            if eager:
                parts.append(_Residual(blk.mlp, blk.ls2) if kind == "ffn" else _Residual(blk.attn, blk.ls1))
            else:
                parts.append(blk.ffn if kind == "ffn" else blk.attn)
        return (parts[0] if copies == 1 else nn.Sequential(*parts)), x, copies
    if kind == "mb4d":
        blocks = list(st.blocks)[:copies]
        return (blocks[0] if copies == 1 else nn.Sequential(*blocks)), x, copies
    tokens = x.flatten(2).transpose(1, 2).contiguous()
    blocks = list(st.blocks)[-copies:]
    parts = [_TokenBlock(b, (gh, gw)) if eager else b for b in blocks]
    return (parts[0] if copies == 1 else nn.Sequential(*parts)), tokens, copies


#: every file a backend derives from a block or network (ONNX export, ONNX Runtime INT8 model, OpenVINO INT8 IR,
#: AOTInductor package), by what it is (shape, form, library versions), not by its weights: a latency does not
#: depend on the weight values, so a table at 2 threads, a table in another runtime reading the same ONNX file
#: (ONNX Runtime fp32 / INT8, OpenVINO), or a second check reuses every export
EXPORT_CACHE = Path("~/.cache/efficientformer/onnx-latency")


def export_cache_dir() -> Path:
    return Path(os.environ.get("EFFICIENTFORMER_EXPORT_CACHE") or EXPORT_CACHE).expanduser()


def export_stem(export_key: str, example: torch.Tensor) -> str:
    """The name under which the exports cache keeps what a backend derives from the module ``export_key`` names."""
    ident = f"{export_key}|{tuple(example.shape)}|torch {torch.__version__}|opset default"
    return hashlib.sha256(ident.encode()).hexdigest()[:20]


class _SideBySide(nn.Module):
    """Independent modules side by side (input ``i`` through module ``i`` is output ``i``): one exporter call for
    many blocks."""

    def __init__(self, parts: list[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(m(x) for m, x in zip(self.parts, xs, strict=True))


def _rename(graph, old: str, new: str) -> None:
    for v in (*graph.input, *graph.output, *graph.value_info):
        if v.name == old:
            v.name = new
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]


def export_many(items: list[tuple[Path, nn.Module, torch.Tensor]]) -> None:
    """Write the ONNX file of every ``(path, module, example)`` from ONE exporter call.

    The exporter's cost is mostly per call (tracing, decompositions, onnxscript's optimiser passes), not per
    operator: the modules are exported side by side as one graph (:class:`_SideBySide`, the project's
    :func:`~efficientformer.deploy.export.write_onnx`) and each one's subgraph (its input to its output, the
    initialisers it reads) is cut out with ``onnx.utils.Extractor`` and saved under its path with the names a
    single export has (``image`` -> ``logits``). The modules share no inputs, so nothing of one is folded into
    another; a file is written atomically (a temporary name, then renamed)."""
    if not items:
        return
    onnx = require("onnx")
    with tempfile.TemporaryDirectory(prefix="lut-many-") as tmp:
        whole = Path(tmp) / "many.onnx"
        write_onnx(_SideBySide([m.eval() for _, m, _ in items]).eval(), tuple(x for *_, x in items), whole)
        extractor = onnx.utils.Extractor(onnx.load(str(whole)))
    for i, (path, _, _) in enumerate(items):
        sub = extractor.extract_model([f"image{i}"], [f"logits{i}"])
        _rename(sub.graph, f"image{i}", "image")
        _rename(sub.graph, f"logits{i}", "logits")
        partial = path.with_name(f".{path.stem}.{os.getpid()}.tmp.onnx")
        onnx.save(sub, str(partial))
        os.replace(partial, path)


def export_missing(modules: dict[str, tuple[str, nn.Module, torch.Tensor]], log: Callable[[str], None]) -> None:
    """:func:`export_many` of the modules (``name -> (export_key, module, example)``) whose ONNX file the exports
    cache lacks; if the combined export fails, each module is exported on its own later (by its backend)."""
    cache = export_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    items = [(cache / f"{export_stem(k, x)}.onnx", m, x) for k, m, x in modules.values()]
    items = [item for item in items if not item[0].is_file()]
    try:
        export_many(items)
    except Exception as err:  # an exporter limitation with one combination: the per-module path still works
        log(
            f"exporting {len(items)} modules at once failed ({type(err).__name__}: {str(err)[:200]}); "
            "exporting them one by one"
        )


def uses_onnx(runtime: str) -> bool:
    """Whether the runtime's backend starts from the ONNX export (ONNX Runtime, OpenVINO)."""
    return backend_of(runtime).runtime in ("onnxruntime", "openvino")


def runtime_callable(
    module: nn.Module,
    example: torch.Tensor,
    runtime: str,
    threads: int,
    workdir: Path,
    export_key: str | None = None,
    keep_float: bool = True,
):
    """A zero-argument callable running ``module`` (already in the runtime's form) on ``example`` in ``runtime``,
    prepared by the deployment registry's backend of that runtime (:func:`backend_of`).

    ``export_key``: what the module is (e.g. a table key and its settings); every file the backend writes (ONNX
    export, INT8 model, AOT package) is kept in :func:`export_cache_dir` under :func:`export_stem` and reused
    instead of made again; without it, files go to ``workdir``. ``keep_float``: the INT8 backends keep the stem
    and the classifier in float (a whole network, the stem or head block), or not (an inner block).
    """
    backend = backend_of(runtime)
    if export_key is not None:
        cache = export_cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        ctx = BackendContext(threads, cache, stem=export_stem(export_key, example), keep_float=keep_float)
    else:
        ctx = BackendContext(threads, workdir, keep_float=keep_float)
    runner = prepare_runner(backend.name, module.eval(), example, ctx)
    return lambda: runner(example)


#: the entries whose INT8 form keeps float layers, as in the network: the stem's convolutions, the classifier
FLOAT_KINDS = ("stem/", "head/")


def _settings(table: LatencyTable) -> tuple:
    m = table.meta
    return (
        m.get("family"),
        m.get("runtime"),
        m.get("threads"),
        m.get("img_size"),
        m.get("batch"),
        m.get("num_classes"),
        m.get("statistic", "median"),
        m.get("clock", "wall"),
        m.get("context", 1),
    )


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
    export_batch: int = 16,
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
    simulate a crash). ``export_batch``: for a runtime that starts from the ONNX export, that many blocks are
    exported in one exporter call (:func:`export_many`; 1: one call per block).
    """
    if context < 1:
        raise ValueError(f"--context must be at least 1, got {context}")
    if family not in ("v1", "v2"):
        raise ValueError(f"--family must be v1 or v2, got {family!r}")
    ok, why = backend_of(runtime).available()
    if not ok:
        raise ValueError(f"--runtime {runtime} cannot run here: {why}")
    check_img_size(img_size, "--img-size")
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
    wanted = (
        list(keys)
        if keys is not None
        else (
            v2_space_keys(space) if family == "v2" else v1_space_keys(space)  # type: ignore[arg-type]
        )
    )
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
    probes: dict[str, tuple[nn.Module, torch.Tensor, int]] = {}

    def ident(key: str) -> str:
        return f"block {family} {key} ctx{context} img{img} classes{num_classes}"

    with tempfile.TemporaryDirectory(prefix="lut-") as workdir:
        for n, key in enumerate(bar):
            if stop_after is not None and measured >= stop_after:
                break
            with torch.no_grad():
                if uses_onnx(runtime) and export_batch > 1 and key not in probes:
                    # the next blocks' probes, and the ONNX exports not cached yet in one exporter call
                    probes = {
                        k: _probe_module(family, k, runtime, img, num_classes, batch, context)
                        for k in todo[n : n + export_batch]
                    }
                    export_missing({k: (ident(k), m, x) for k, (m, x, _) in probes.items()}, log)
                module, example, copies = probes.pop(key, None) or _probe_module(
                    family, key, runtime, img, num_classes, batch, context
                )
                fn = runtime_callable(
                    module,
                    example,
                    runtime,
                    threads,
                    Path(workdir),
                    export_key=ident(key),
                    keep_float=key.startswith(FLOAT_KINDS),
                )
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
