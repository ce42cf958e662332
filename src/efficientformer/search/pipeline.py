"""``efficientformer search pipeline``: one command from latency table to a measured, trained, exported model.

Stages, in order, each writing into one run folder (``--output DIR``) and each cached: a stage that finished
wrote ``stages/<name>.json`` (its result and its time) atomically, and a rerun takes that file instead of doing
the work again, so a killed pipeline goes on where it stopped and a finished one reruns in seconds. Work inside
a stage resumes too: the table and the supernet checkpoint are saved as they grow, every retrained seed is a run
of the training runtime with its own ``last.pth``.

1. ``table``: the latency table of the space in the target runtime. Tables live in a cache shared by runs
   (``~/.cache/efficientformer/latency-tables``) under a name made of their settings and the machine's stamp
   (CPU model, ISA, library versions); a matching one is reused (or finished, when a build was interrupted).
2. ``check``: end-to-end latency of the published models in the space and ``random`` random subnets against
   the table; fits the per-kind calibration (:mod:`.predictor`), stored in the table for every later prediction.
3. ``references``: the reference models (``--target-like`` and the config's ``references``; timm names such as
   ``mobilenetv2_100`` are timm's models) measured end to end in the same runtime, threads and resolution.
4. ``supernet``: the weight-sharing supernet trained with the sandwich rule on the training runtime.
5. ``search``: the greedy MES walk to the target (a reference's measured latency, or a number in ms).
6. ``retrain``: the searched model and the config's ``retrain.references`` trained from scratch, ``seeds``
   seeds each, with the same recipe and budget (``retrain.config``).
7. ``export``: every trained model (seed 0) in its deploy form, exported to ONNX, checked against PyTorch.
8. ``measure``: the searched model and the references timed end to end, interleaved, beside the prediction.
9. ``report``: ``report.md``, ``report.json`` and the plots.

Budgets: ``tiny`` (CI: a tiny space, a few steps, minutes), ``proxy`` (this machine, the bundled proxy task),
``full`` (ImageNet on a cluster: the same stages, the config's ``budgets.full`` block sets the data and sizes).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from ..data.proxy import prepare_proxy
from ..deploy.export import write_onnx
from ..deploy.fuse import deploy
from ..models.arch import arch_to_spec, build_from_arch, is_arch_path, load_arch, save_arch, spec_to_arch
from ..models.base import ModelSpec
from ..models.efficientformer_v2 import V2_VARIANTS
from ..models.factory import create_model
from ..models.registry import get_spec, resolve_name
from ..runtime.config import load_config
from ..train.config import build_config
from ..train.engine import train
from ..utils.io import atomic_torch_save, atomic_write_json, atomic_write_text
from ..utils.optional import require
from ..utils.recipes import resolve_config
from .greedy import GreedySearch, MESConfig, SearchTargets, plot_trajectory, write_trajectory
from .latency import CLOCKS, LatencyTable, build_table, machine_stamp, runtime_callable, summarise, v2_space_keys
from .lut_check import check_table, write_report
from .params import count_params
from .space import V2Space
from .supernet import load_supernet, save_supernet
from .train import SubnetEvaluator, SupernetConfig, load_split, train_supernet
from .v1 import V1MetaSupernet, V1PathEvaluator, slim, train_v1_supernet
from .v1space import V1Space

STAGES = ("table", "check", "references", "supernet", "search", "retrain", "export", "measure", "report")
BUDGETS = ("tiny", "proxy", "full")
PROXY_SIZE = 64
TABLE_CACHE = Path("~/.cache/efficientformer/latency-tables")

#: the pipeline's settings; a config's ``pipeline:`` block overrides them, its ``budgets.<budget>:`` block
#: overrides that (and may hold a ``space:`` of its own)
DEFAULTS: dict[str, Any] = {
    "data": "proxy",
    "table": {"runtime": "onnxruntime", "threads": 1, "clock": "cpu", "img_size": 224, "warmup": 5, "runs": 25,
              "context": 1, "statistic": "median"},
    "check": {"random": 30, "seed": 0, "warmup": 5, "runs": 20},
    "references": ["mobilenetv2_100", "efficientformerv2_s0"],
    "target_like": "efficientformerv2_s0",
    "supernet": {"img_size": 32, "steps": 300, "batch_size": 48, "num_random": 1, "lr": 2e-3, "eval_images": 0},
    "search": {"actions_per_step": 4, "calib_images": 192, "eval_images": None},
    "retrain": {"config": "configs/search/proxy_train.yaml", "seeds": 3, "references": ["efficientformerv2_s0"],
                "overrides": {}},
    "measure": {"warmup": 5, "runs": 30},
}  # fmt: skip


def data_root(data: str) -> Path:
    """``proxy`` (the bundled proxy task, written once) or an ImageNet-style folder with ``train/``."""
    if data == "proxy":
        return prepare_proxy(size=PROXY_SIZE)
    root = Path(data).expanduser()
    if not (root / "train").is_dir():
        raise FileNotFoundError(f"{root} has no train/ folder (expected train/<class>/... and search/ or val/)")
    return root


def held_out_split(root: Path, log: Callable[[str], None] = print) -> Path:
    """The split subnets are scored on: ``search/`` (kept apart from ``val/``, which is for final results)."""
    for split in ("search", "val"):
        if (root / split).is_dir():
            if split == "val":
                log(f"note: {root} has no search/ split; scoring subnets on val/ (keep val/ for final results)")
            return root / split
    raise FileNotFoundError(f"{root} has neither search/ nor val/ to score subnets on")


def reference_spec(name: str) -> ModelSpec | None:
    """Our model behind a reference name or architecture file; ``None`` for another library's model (timm)."""
    if is_arch_path(name):
        return arch_to_spec(load_arch(name))
    try:
        return get_spec(resolve_name(name)[0])
    except (KeyError, ValueError):
        return None


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def load_pipeline_config(path: str | Path, budget: str) -> dict[str, Any]:
    """The settings of ``budget`` from a search config (``space:``, ``mes:``, ``pipeline:``, ``budgets:``)."""
    if budget not in BUDGETS:
        raise ValueError(f"--budget must be one of {', '.join(BUDGETS)}, got {budget!r}")
    path = resolve_config(path)  # a path, or a shipped config by name (search/v2_proxy); one line if neither
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a mapping (space:, mes:, pipeline:, budgets:)")
    over = (raw.get("budgets") or {}).get(budget) or {}
    cfg = _merge(_merge(DEFAULTS, raw.get("pipeline") or {}), {k: v for k, v in over.items() if k != "space"})
    cfg["space"] = over.get("space", raw.get("space") or {})
    cfg["mes"] = raw.get("mes") or {}
    cfg["budget"] = budget
    cfg["config"] = str(path)
    unknown = set(cfg) - set(DEFAULTS) - {"space", "mes", "budget", "config"}
    if unknown:
        raise ValueError(f"{path}: unknown pipeline keys {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    return cfg


class Pipeline:
    """The stages of the module docstring over one run folder. ``stop_after``: a stage name to stop after (a
    test's interruption)."""

    def __init__(self, cfg: dict[str, Any], output: str | Path, *, target_like: str | None = None,
                 table_cache: str | Path | None = None, progress: bool = True,
                 log: Callable[[str], None] = print) -> None:  # fmt: skip
        self.cfg = cfg
        if target_like is not None:
            cfg["target_like"] = target_like
        self.out = Path(output)
        self.space = V2Space.from_dict(cfg["space"]) if cfg["space"] else V2Space()
        self.mes = MESConfig.from_dict(cfg.get("mes"))
        cache = table_cache or os.environ.get("EFFICIENTFORMER_TABLE_CACHE") or TABLE_CACHE
        self.table_cache = Path(cache).expanduser()
        self.progress, self.log = progress, log
        self.results: dict[str, Any] = {}
        self.timing: dict[str, dict[str, Any]] = {}
        self._root: Path | None = None

    # -- plumbing ------------------------------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        if self._root is None:
            self._root = data_root(self.cfg["data"])
        return self._root

    def _stage_file(self, name: str) -> Path:
        return self.out / "stages" / f"{name}.json"

    def run(self, stop_after: str | None = None) -> dict[str, Any]:
        if stop_after is not None and stop_after not in STAGES:
            raise ValueError(f"stop_after must be one of {', '.join(STAGES)}, got {stop_after!r}")
        self.check_references()  # before any work: a typo in a model name is one line now, not after the table
        saved = self.out / "pipeline.yaml"
        settings = yaml.safe_dump(self.cfg, sort_keys=False)
        if saved.is_file() and yaml.safe_load(saved.read_text()) != yaml.safe_load(settings):
            raise ValueError(f"{self.out} holds a pipeline run with other settings ({saved}); pass another --output "
                             "or delete it (its finished stages would not match these settings)")  # fmt: skip
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(saved, settings)
        stages = STAGES
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(stages), desc="search pipeline", unit="stage")
        for name in stages:
            path = self._stage_file(name)
            if path.is_file():
                record = json.loads(path.read_text())
                self.results[name] = record["result"]
                self.timing[name] = {**record["timing"], "cached": True}
            else:
                self.log(f"[pipeline] stage {name}")
                start = time.perf_counter()
                result, extra = getattr(self, f"stage_{name}")()
                seconds = time.perf_counter() - start
                self.results[name] = result
                self.timing[name] = {"seconds": round(seconds, 2), **extra, "cached": False,
                                     "loadavg": [round(x, 2) for x in os.getloadavg()]}  # fmt: skip
                atomic_write_json(path, {"result": result, "timing": self.timing[name]})
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(name)
            if name == stop_after:
                break
        if bar is not None:
            bar.close()
        return self.results

    # -- 1. table ------------------------------------------------------------------------------------------------
    def table_keys(self) -> list[str]:
        """The space's entries (the published models inside the space are points of it)."""
        return v2_space_keys(self.space, published=False)

    def table_path(self) -> Path:
        t = self.cfg["table"]
        stamp = machine_stamp(int(t["threads"]), t["runtime"])
        ident = {"settings": t, "space": self.space.to_dict(), "cpu": stamp["cpu_model"], "isa": stamp["isa"],
                 "versions": stamp["versions"], "keys": self.table_keys()}  # fmt: skip
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
        name = f"v2_{t['runtime']}_t{t['threads']}_{t['img_size']}px_{t['clock']}_{digest}.json"
        return self.table_cache / name

    def stage_table(self) -> tuple[dict, dict]:
        t = self.cfg["table"]
        path = self.table_path()
        reused = path.is_file() and bool(LatencyTable.load(path).meta.get("complete"))
        if reused:
            self.log(f"[pipeline] reusing the latency table {path} (same settings and machine stamp)")
        table = build_table(path, "v2", t["runtime"], threads=int(t["threads"]), img_size=int(t["img_size"]),
                            warmup=int(t["warmup"]), runs=int(t["runs"]), space=self.space, statistic=t["statistic"],
                            clock=t["clock"], context=int(t["context"]), keys=self.table_keys(),
                            progress=self.progress, log=self.log)  # fmt: skip
        return {"path": str(path), "entries": len(table.entries), "reused": reused,
                "machine": table.meta["machine"]}, {}  # fmt: skip

    def table(self) -> LatencyTable:
        return LatencyTable.load(self.results["table"]["path"])

    # -- 2. check ------------------------------------------------------------------------------------------------
    def stage_check(self) -> tuple[dict, dict]:
        c = self.cfg["check"]
        table = self.table()
        tag = f"r{c['random']}_s{c['seed']}_w{c['warmup']}_n{c['runs']}"
        cached = Path(str(self.results["table"]["path"]).removesuffix(".json") + f".check_{tag}.json")
        if cached.is_file():
            self.log(f"[pipeline] reusing the table check {cached}")
            result = json.loads(cached.read_text())
        else:
            result = check_table(table, n_random=int(c["random"]), seed=int(c["seed"]), warmup=int(c["warmup"]),
                                 runs=int(c["runs"]), progress=self.progress, log=self.log)  # fmt: skip
            atomic_write_json(cached, result)
        paths = write_report(result, self.out / "check")
        table.meta["calibration"] = {**result["summary"]["calibration"], "from": str(cached)}
        table.save(self.results["table"]["path"])
        s = result["summary"]
        return {"summary": {k: s[k] for k in ("networks", "published", "methods_leave_one_out", "calibration",
                                              "loadavg_start", "loadavg_end")},
                "json": str(paths["json"]), "plot": str(paths.get("plot", ""))}, {}  # fmt: skip

    # -- 3. references ---------------------------------------------------------------------------------------------
    def reference_names(self) -> list[str]:
        names = list(self.cfg["references"])
        target = self.cfg["target_like"]
        if target is not None and not _is_number(target) and target not in names:
            names.append(str(target))
        return names

    def check_references(self) -> None:
        for name in self.reference_names() + list(self.cfg["retrain"]["references"]):
            if reference_spec(name) is None and not require("timm").is_model(name):
                raise ValueError(f"reference {name!r} is neither one of our models, an architecture file, a latency "
                                 "in ms nor a timm model name (e.g. mobilenetv2_100)")  # fmt: skip

    def stage_references(self) -> tuple[dict, dict]:
        names = self.reference_names()
        if not names:
            return {}, {}
        return self.measure({name: name for name in names}), {}

    def measure(self, models: dict[str, str | ModelSpec]) -> dict[str, dict[str, Any]]:
        """End-to-end latency of ``models`` (names, architecture files or specs) in the table's runtime, threads,
        resolution and clock, in alternating turns (:func:`_interleaved`); with our models, the table's
        prediction beside it."""
        t, m = self.cfg["table"], self.cfg["measure"]
        table = self.table()
        torch.set_num_threads(int(t["threads"]))
        img = int(t["img_size"])
        fns, out = {}, {}
        with tempfile.TemporaryDirectory(prefix="pipeline-") as tmp, torch.no_grad():
            for label, model in models.items():
                spec = model if isinstance(model, ModelSpec) else reference_spec(model)
                example = torch.randn(1, 3, img, img)
                if spec is not None:
                    net = deploy(build_from_arch(spec, img_size=img, num_classes=1000).eval(), img)
                    out[label] = {"predicted_ms": table.predict(spec) if not table.missing(spec) else None,
                                  "params": count_params(spec, img), "family": "ours"}  # fmt: skip
                else:
                    timm = require("timm")
                    net = timm.create_model(str(model), pretrained=False, num_classes=1000).eval()
                    out[label] = {"predicted_ms": None, "params": sum(p.numel() for p in net.parameters()),
                                  "family": "timm"}  # fmt: skip
                fns[label] = runtime_callable(net, example, t["runtime"], int(t["threads"]), Path(tmp))
            times = _interleaved(fns, int(m["warmup"]), int(m["runs"]), CLOCKS[t["clock"]], self.progress)
        for label, ts in times.items():  # the statistic the table holds, so prediction and measurement agree
            stats = summarise(ts)
            out[label]["measured_ms"] = stats[t["statistic"]]
            out[label]["measured_stats"] = stats
        out["_stamp"] = {"runtime": t["runtime"], "threads": t["threads"], "img_size": img, "clock": t["clock"],
                         "statistic": t["statistic"],
                         "runs": m["runs"], "loadavg": [round(x, 2) for x in os.getloadavg()]}  # fmt: skip
        return out

    def target_ms(self) -> float:
        target = self.cfg["target_like"]
        if target is None:
            raise ValueError("give the pipeline a target: --target-like MODEL or --target-like MS")
        if _is_number(target):
            return float(target)
        return float(self.results["references"][str(target)]["measured_ms"])

    # -- 4. supernet -----------------------------------------------------------------------------------------------
    def stage_supernet(self) -> tuple[dict, dict]:
        s = self.cfg["supernet"]
        out = self.out / "supernet"
        scfg = load_config(SupernetConfig, None, [], data=str(self.root), output=str(out), img_size=int(s["img_size"]),
                           steps=int(s["steps"]), batch_size=int(s["batch_size"]), lr=float(s["lr"]),
                           num_random=int(s["num_random"]), eval_images=int(s["eval_images"]),
                           threads=int(self.cfg["table"]["threads"]), progress=self.progress)  # fmt: skip
        start = time.perf_counter()
        net, metrics = train_supernet(scfg, self.space, self.root)
        seconds = time.perf_counter() - start
        save_supernet(net, out / "supernet.pth", data=str(self.root))
        metrics = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        return ({"path": str(out / "supernet.pth"), "metrics": metrics},
                {"steps": int(s["steps"]), "steps_per_s": round(int(s["steps"]) / seconds, 3)})  # fmt: skip

    # -- 5. search -------------------------------------------------------------------------------------------------
    def stage_search(self) -> tuple[dict, dict]:
        s = self.cfg["search"]
        net = load_supernet(self.results["supernet"]["path"])
        table = self.table()
        target = self.target_ms()
        res = run_v2_search(net, table, SearchTargets(latency_ms=target), self.root, self.out / "search",
                            mes=self.mes, actions_per_step=int(s["actions_per_step"]),
                            calib_images=int(s["calib_images"]), eval_images=s["eval_images"],
                            lines={k: v["measured_ms"] for k, v in self.results["references"].items()
                                   if not k.startswith("_") and v["family"] == "timm"},
                            log=self.log)  # fmt: skip
        return res, {
            "candidates": res["evaluations"],
            "candidates_per_s": round(res["evaluations"] / res["seconds"], 3),
        }

    # -- 6. retrain ------------------------------------------------------------------------------------------------
    def retrain_models(self) -> dict[str, str]:
        models = {"searched": self.results["search"]["arch"]}
        for name in self.cfg["retrain"]["references"]:
            models[name] = name
        return models

    def stage_retrain(self) -> tuple[dict, dict]:
        r = self.cfg["retrain"]
        out: dict[str, Any] = {}
        started = time.perf_counter()
        for label, model in self.retrain_models().items():
            runs = []
            for seed in range(int(r["seeds"])):
                folder = self.out / "retrain" / label / f"seed{seed}"
                summary_path = folder / "summary.json"
                if summary_path.is_file():  # a seed that finished before an interruption
                    summary = json.loads(summary_path.read_text())
                else:
                    self.log(f"[pipeline] retrain {label} seed {seed}")
                    overrides = {**(r.get("overrides") or {}), "model": str(model), "data": str(self.root),
                                 "output": str(folder), "seed": seed, "progress": self.progress}  # fmt: skip
                    summary = train(build_config(r["config"], overrides))
                runs.append({"seed": seed, "val_top1": summary.get("val_top1"), "ema_top1": summary.get("ema_top1"),
                             "checkpoint": summary.get("checkpoint"), "seconds": summary.get("seconds")})  # fmt: skip
            accs = [x["val_top1"] for x in runs if x["val_top1"] is not None]
            out[label] = {"model": str(model), "runs": runs, "mean": statistics.mean(accs) if accs else None,
                          "sd": statistics.stdev(accs) if len(accs) > 1 else None}  # fmt: skip
        return out, {"seconds_per_run": round((time.perf_counter() - started) / max(1, sum(
            len(v["runs"]) for v in out.values())), 2)}  # fmt: skip

    # -- 7. export -------------------------------------------------------------------------------------------------
    def stage_export(self) -> tuple[dict, dict]:
        ort = require("onnxruntime")
        out = {}
        for label, info in self.results["retrain"].items():
            run = info["runs"][0]
            ckpt = torch.load(run["checkpoint"], map_location="cpu", weights_only=True)
            classes = len(ckpt["class_names"])
            img = int(ckpt.get("config", {}).get("img_size") or self.cfg["supernet"]["img_size"])
            distill = (ckpt.get("config", {}).get("distillation") or "none") != "none"
            model = create_model(info["model"], num_classes=classes, img_size=img, distillation=distill,
                                 checkpoint=run["checkpoint"]).eval()  # fmt: skip
            form = deploy(model, img)
            path = self.out / "export" / f"{label}.onnx"
            path.parent.mkdir(parents=True, exist_ok=True)
            x = torch.randn(2, 3, img, img, generator=torch.Generator().manual_seed(0))
            write_onnx(form, x, path)
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            with torch.no_grad():
                ref = model(x)
            got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
            diff = float((got - ref).abs().max())
            if not diff < 1e-3:
                raise ValueError(f"the ONNX export of {label} differs from PyTorch by {diff:.2e} (limit 1e-3)")
            out[label] = {"onnx": str(path), "img_size": img, "classes": classes, "max_abs_diff": diff}
        return out, {}

    # -- 8. measure ------------------------------------------------------------------------------------------------
    def stage_measure(self) -> tuple[dict, dict]:
        models: dict[str, Any] = {"searched": arch_to_spec(load_arch(self.results["search"]["arch"]))}
        for name in self.reference_names():
            models[name] = name
        return self.measure(models), {}

    # -- 9. report -------------------------------------------------------------------------------------------------
    def stage_report(self) -> tuple[dict, dict]:
        report = build_report(self)
        return {"report_md": str(self.out / "report.md"), "report_json": str(self.out / "report.json"),
                "plots": report["plots"]}, {}  # fmt: skip


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _interleaved(fns: dict[str, Callable[[], object]], warmup: int, runs: int, clock: Callable[[], float],
                 progress: bool, blocks: int = 5) -> dict[str, list[float]]:  # fmt: skip
    """ms per call of each candidate, timed as the table check times a network (calls back to back, caches warm,
    with the table's clock: CPU time with one thread, else wall time) but in ``blocks`` turns (A B C A B C ...),
    so that a drift of a shared machine lands on every candidate alike."""
    keys = list(fns)
    times: dict[str, list[float]] = {k: [] for k in keys}
    sizes = [runs // blocks + (1 if i < runs % blocks else 0) for i in range(blocks)]
    turns = [(b, k) for b, size in enumerate(sizes) if size for k in keys]
    if progress:
        from tqdm import tqdm

        turns = tqdm(turns, desc="measure", unit="turn", leave=False)
    for b, k in turns:
        for _ in range(warmup):  # every turn starts warm: another model ran in between
            fns[k]()
        for _ in range(sizes[b]):
            t0 = clock()
            fns[k]()
            times[k].append((clock() - t0) * 1e3)
    return times


def run_v2_search(net, table: LatencyTable, targets: SearchTargets, root: Path, out: Path, *,
                  mes: MESConfig | None = None, actions_per_step: int = 1, calib_images: int = 256,
                  eval_images: int | None = None, lines: dict[str, float] | None = None, lut_name: str = "",
                  supernet_name: str = "", log: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    """The greedy MES search on a trained supernet: writes ``arch.yaml``, ``trajectory.jsonl``/``.png``,
    ``summary.json`` and ``supernet_weights.pth`` into ``out``; returns the summary (with ``arch``)."""
    mes = mes or MESConfig()
    img = net.img_size[0]
    eval_x, eval_y = load_split(held_out_split(root, log), img, limit=eval_images)
    calib_x, _ = load_split(root / "train", img, limit=calib_images)
    evaluator = SubnetEvaluator(net, eval_x, eval_y, calib_x)
    img_lut = int(table.meta.get("img_size", 224))
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    def show(row: dict) -> None:
        log(f"step {row['step']:3d} {row['action'][:60]:60s} acc {row['accuracy']:6.2f}  "
            f"lat {row['latency_ms']:7.2f} ms  params {row['params'] / 1e6:6.2f}M  MES {row['mes']:8.3f}  "
            f"({time.time() - started:.0f} s)")  # fmt: skip

    search = GreedySearch(net.space, evaluator, table.predict, params=lambda s: count_params(s, img_lut), mes=mes,
                          log=show)  # fmt: skip
    result = search.run(targets, actions_per_step=actions_per_step)
    final = result.final
    extra = {"search": {"accuracy_heldout": final.accuracy, "table_latency_ms": final.latency_ms,
                        "params": final.params, "mes": final.mes, "lut": lut_name, "supernet": supernet_name,
                        "stopped": result.stopped, "evaluations": result.evaluations,
                        "machine": table.meta.get("machine", {})}}  # fmt: skip
    arch_path = save_arch({**spec_to_arch(final.spec), **extra}, out / "arch.yaml")
    write_trajectory(result, out / "trajectory.jsonl", mes)
    published = {n: search.point(s) for n, s in V2_VARIANTS.items() if net.space.contains(s) and not table.missing(s)}
    title = f"greedy MES search on the {table.meta.get('runtime')} table"
    plot = plot_trajectory(result, out / "trajectory.png", published, lines, title=title)
    seconds = round(time.time() - started, 2)
    summary = {"arch": str(arch_path), "final": final.to_dict(), "stopped": result.stopped,
               "evaluations": result.evaluations, "seconds": seconds,
               "published": {n: p.to_dict() for n, p in published.items()}, "targets": targets.__dict__,
               "trajectory": str(out / "trajectory.jsonl"), "plot": str(plot) if plot else None}  # fmt: skip
    atomic_write_json(out / "summary.json", summary)
    atomic_torch_save({"model": net.extract(final.spec).state_dict()}, out / "supernet_weights.pth")
    return summary


def run_v1_search(table: LatencyTable, target_ms: float, space: V1Space, root: Path, out: Path, *, img_size: int,
                  steps: int, batch_size: int, seed: int = 0, train: dict[str, Any] | None = None,
                  log: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    """V1: the MetaPath supernet trained on the runtime, then latency-driven slimming to ``target_ms``; writes
    ``arch.yaml`` (with the machine stamp) and ``trajectory.jsonl`` into ``out``; returns the summary with the
    time of each part (supernet steps/s, paths scored/s)."""
    images, labels = load_split(root / "train", img_size)
    eval_x, eval_y = load_split(held_out_split(root, log), img_size)
    net = V1MetaSupernet(space, num_classes=int(labels.max()) + 1, img_size=img_size)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    train_v1_supernet(net, images, labels, output=out / "supernet", steps=steps, batch_size=batch_size, seed=seed,
                      **(train or {}))  # fmt: skip
    trained = time.perf_counter()
    evaluator = V1PathEvaluator(net, eval_x, eval_y, images[:256])
    scored = [0]

    def evaluate(path) -> float:
        scored[0] += 1
        return evaluator(path)

    def show(row: dict) -> None:
        log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))

    result = slim(net.argmax_path(), net.importance, evaluate, table.predict, target_ms, space, log=show)
    done = time.perf_counter()
    spec = result.final.spec()
    train_s, search_s = trained - started, done - trained
    timing = {"supernet_seconds": round(train_s, 2), "supernet_steps_per_s": round(steps / train_s, 3)}
    timing.update(search_seconds=round(search_s, 2), paths_scored=scored[0],
                  paths_per_s=round(scored[0] / max(search_s, 1e-9), 3))  # fmt: skip
    extra = {"search": {"accuracy_heldout": result.accuracy, "table_latency_ms": result.latency_ms,
                        "target_ms": target_ms, "seconds": round(done - started, 1), "timing": timing,
                        "machine": table.meta.get("machine", {})}}  # fmt: skip
    arch_path = save_arch({**spec_to_arch(spec), **extra}, out / "arch.yaml")
    with (out / "trajectory.jsonl").open("w") as f:
        for row in result.trajectory:
            f.write(json.dumps(row) + "\n")
    return {"arch": str(arch_path), "spec": spec, "accuracy": result.accuracy, "latency_ms": result.latency_ms,
            "timing": timing}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------------------
def build_report(p: Pipeline) -> dict[str, Any]:
    r = p.results
    measured = {k: v for k, v in r["measure"].items() if not k.startswith("_")}
    retrain = r["retrain"]
    plots = _plots(p, measured, retrain)
    report = {"config": p.cfg["config"], "budget": p.cfg["budget"], "target_like": p.cfg["target_like"],
              "target_ms": p.target_ms(), "machine": r["table"]["machine"], "table": r["table"]["path"],
              "check": r["check"]["summary"], "measured": r["measure"], "retrain": retrain, "export": r["export"],
              "search": {k: r["search"][k] for k in ("arch", "final", "stopped", "evaluations", "seconds")},
              "stages": p.timing, "plots": plots, "comparisons": _comparisons(retrain)}  # fmt: skip
    atomic_write_json(p.out / "report.json", report)
    atomic_write_text(p.out / "report.md", _markdown(p, report))
    return report


def _comparisons(retrain: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The searched model's mean accuracy minus each retrained reference's, with the difference's standard error
    (sd^2/n summed over both sides) where both have at least two seeds."""
    out: dict[str, dict[str, Any]] = {}
    s = retrain.get("searched")
    if not s or s["mean"] is None:
        return out
    for name, r in retrain.items():
        if name == "searched" or r["mean"] is None:
            continue
        se = None
        if s["sd"] is not None and r["sd"] is not None:
            se = math.sqrt(s["sd"] ** 2 / len(s["runs"]) + r["sd"] ** 2 / len(r["runs"]))
        out[name] = {"difference": s["mean"] - r["mean"], "standard_error": se,
                     "seeds": min(len(s["runs"]), len(r["runs"]))}  # fmt: skip
    return out


def _plots(p: Pipeline, measured: dict, retrain: dict) -> dict[str, str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    plots = {}
    # the search trajectory: published V2 models scored by the supernet, timm references as measured lines
    traj = [json.loads(line) for line in Path(p.results["search"]["trajectory"]).read_text().splitlines()[1:]]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.plot([t["latency_ms"] for t in traj], [t["accuracy"] for t in traj], "-o", ms=3, lw=1, label="greedy walk")
    ax.plot(traj[-1]["latency_ms"], traj[-1]["accuracy"], "r*", ms=14, label="searched")
    for name, pt in p.results["search"]["published"].items():
        ax.plot(pt["latency_ms"], pt["accuracy"], "ks", ms=6)
        ax.annotate(name.replace("efficientformerv2_", "V2-").upper(), (pt["latency_ms"], pt["accuracy"]),
                    fontsize=8, xytext=(4, -10), textcoords="offset points")  # fmt: skip
    for name, m in measured.items():
        if m["family"] == "timm":
            ax.axvline(m["measured_ms"], color="tab:green", ls=":", lw=1.2)
            ax.text(m["measured_ms"], ax.get_ylim()[0], f" {name} (measured)", rotation=90, fontsize=7,
                    va="bottom", color="tab:green")  # fmt: skip
    ax.axvline(p.target_ms(), color="tab:red", ls="--", lw=0.8, label="target")
    ax.set_xlabel("predicted latency (ms; timm models: measured)")
    ax.set_ylabel("held-out accuracy on the supernet (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    plots["trajectory"] = str(p.out / "trajectory.png")
    fig.savefig(plots["trajectory"], dpi=120)
    plt.close(fig)
    # predicted against measured: the check's networks (leave-one-out) and this run's models
    check = json.loads(Path(p.results["check"]["json"]).read_text())
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.scatter([x["loo_per_kind_ms"] for x in check["rows"]], [x["measured_ms"] for x in check["rows"]], s=18,
               label="table check (leave-one-out)")  # fmt: skip
    ours = {k: v for k, v in measured.items() if v["predicted_ms"] is not None}
    ax.scatter([v["predicted_ms"] for v in ours.values()], [v["measured_ms"] for v in ours.values()], marker="*",
               s=90, c="tab:red", label="this run's models")  # fmt: skip
    for k, v in ours.items():
        ax.annotate(k.replace("efficientformerv2_", "V2-"), (v["predicted_ms"], v["measured_ms"]), fontsize=8)
    vals = [x["measured_ms"] for x in check["rows"]] + [v["measured_ms"] for v in ours.values()]
    lo, hi = min(vals) * 0.85, max(vals) * 1.15
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.fill_between([lo, hi], [lo / 1.1, hi / 1.1], [lo * 1.1, hi * 1.1], color="grey", alpha=0.15, label="+-10%")
    ax.set_xlabel("predicted (ms)")
    ax.set_ylabel("measured end to end (ms)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    plots["latency"] = str(p.out / "predicted_vs_measured.png")
    fig.savefig(plots["latency"], dpi=120)
    plt.close(fig)
    # accuracy against measured latency, error bars over seeds
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for label, info in retrain.items():
        key = "searched" if label == "searched" else info["model"]
        if key not in measured or info["mean"] is None:
            continue
        ax.errorbar(measured[key]["measured_ms"], info["mean"], yerr=info["sd"] or 0.0, fmt="o", capsize=4,
                    label=f"{label} ({len(info['runs'])} seeds)")  # fmt: skip
    for name, m in measured.items():
        if m["family"] == "timm":
            ax.axvline(m["measured_ms"], color="tab:green", ls=":", lw=1.2, label=f"{name} latency")
    ax.set_xlabel(f"measured latency, {p.cfg['table']['runtime']} (ms)")
    ax.set_ylabel("val top-1 after retraining (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    plots["accuracy"] = str(p.out / "accuracy_vs_latency.png")
    fig.savefig(plots["accuracy"], dpi=120)
    plt.close(fig)
    return plots


def _markdown(p: Pipeline, rep: dict[str, Any]) -> str:
    t, m = p.cfg["table"], rep["machine"]
    lines = [f"# Search pipeline report ({rep['budget']} budget)", "",
             f"Config `{rep['config']}`; target: {rep['target_like']} = {rep['target_ms']:.3f} ms. Machine: "
             f"{m.get('cpu_model')} [{' '.join(m.get('isa', []))}], {t['runtime']}, {t['threads']} thread(s), "
             f"{t['img_size']} px, {t['clock']} clock; load average at the table {m.get('loadavg')}.", "",
             "## Latency predictor (leave-one-out over the table check's networks)", "",
             "| predictor | Kendall tau | MAPE | within +-10% |", "|---|---|---|---|"]  # fmt: skip
    for method, a in rep["check"]["methods_leave_one_out"].items():
        lines.append(
            f"| {method} | {a['kendall_tau']:.3f} | {a['mape_percent']:.1f}% | {a['within_10_percent']:.0f}% |"
        )
    lines += ["", f"## Measured end to end ({rep['measured']['_stamp']['statistic']} of "
              f"{rep['measured']['_stamp']['runs']} runs in 5 alternating turns, load "
              f"{rep['measured']['_stamp']['loadavg']})", "", "| model | predicted | measured | error | params |",
              "|---|---|---|---|---|"]  # fmt: skip
    for name, v in rep["measured"].items():
        if name.startswith("_"):
            continue
        pred = v["predicted_ms"]
        err = f"{100 * (pred - v['measured_ms']) / v['measured_ms']:+.1f}%" if pred is not None else "-"
        lines.append(f"| {name} | {pred:.3f} ms |" if pred is not None else f"| {name} | - |")
        lines[-1] += f" {v['measured_ms']:.3f} ms | {err} | {v['params'] / 1e6:.2f} M |"
    lines += ["", "## Retrained (same recipe and budget)", "", "| model | seeds | val top-1 mean | sd | runs |",
              "|---|---|---|---|---|"]  # fmt: skip
    for label, info in rep["retrain"].items():
        mean = f"{info['mean']:.2f}%" if info["mean"] is not None else "-"
        sd = f"{info['sd']:.2f}" if info["sd"] is not None else "-"
        accs = ", ".join(f"{x['val_top1']:.2f}" for x in info["runs"] if x["val_top1"] is not None)
        lines.append(f"| {label} | {len(info['runs'])} | {mean} | {sd} | {accs} |")
    for name, d in rep["comparisons"].items():
        lines.append(f"\nsearched - {name}: {d['difference']:+.2f} points, standard error "
                     f"{d['standard_error']:.2f} ({d['seeds']} seeds each)" if d["standard_error"] is not None else
                     f"\nsearched - {name}: {d['difference']:+.2f} points (one seed: no standard error)")  # fmt: skip
    s = rep["search"]
    lines += ["", f"Searched: `{s['arch']}`, {s['stopped']} after {s['evaluations']} subnet evaluations, "
              f"table latency {s['final']['latency_ms']:.3f} ms.", "", "## Time per stage", "",
              "| stage | seconds | rate | cached |", "|---|---|---|---|"]  # fmt: skip
    for name, tm in rep["stages"].items():
        rate = ", ".join(f"{k} {v}" for k, v in tm.items() if k.endswith("_per_s"))
        lines.append(f"| {name} | {tm.get('seconds', 0):.1f} | {rate} | {tm.get('cached')} |")
    lines += ["", "Plots: " + ", ".join(f"[{k}]({Path(v).name})" for k, v in rep["plots"].items()), ""]
    lines.append("timm references are measured for latency only; they are not retrained by the pipeline.")
    return "\n".join(lines) + "\n"
