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
3. ``references``: the reference models (the targets and the config's ``references``; timm names such as
   ``mobilenetv2_100`` or ``timm:mobilenetv2_100`` are timm's models) measured end to end in the same runtime,
   threads and resolution.
4. ``supernet``: the weight-sharing supernet trained with the sandwich rule on the training runtime.
5. ``search``: the greedy MES walk, once, down to the lowest target; each target (a reference's measured
   latency, or a number in ms) gets the first point of the walk at or below it (what a walk stopped at that
   target would have returned), labelled ``searched@<target>``.
6. ``retrain``: every searched model and the config's ``retrain.references`` (ours, architecture files or
   ``timm:NAME``) trained from scratch, ``seeds`` seeds each, with the same recipe and budget (``retrain.config``).
7. ``ranking``: does the supernet rank architectures as stand-alone training does? ``ranking.subnets`` points
   of the space spread over the latency range (the searched models, the published models in the space, the
   smallest and largest subnet, random subnets at latency quantiles) retrained like the rest and scored on the
   supernet; Kendall's tau between the two.
8. ``export``: every trained model (seed 0) in its deploy form (timm's models as they are), exported to ONNX,
   checked against PyTorch.
9. ``measure``: the searched models and the references timed end to end, interleaved, beside the prediction.
10. ``report``: ``report.md``, ``report.json`` (paths relative to the run folder) and the plots.

Budgets: ``tiny`` (CI: a tiny space, a few steps, minutes), ``proxy`` (this machine, the bundled proxy task),
``full`` (ImageNet on a cluster: the same stages, the config's ``budgets.full`` block sets the data and sizes).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
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
from ..models.factory import TIMM_PREFIX, create_model, is_timm_name
from ..models.registry import get_spec, resolve_name
from ..runtime.checkpoint import read_checkpoint
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
from .predictor import kendall_tau
from .space import V2Space, arch_key
from .supernet import load_supernet, save_supernet
from .train import SubnetEvaluator, SupernetConfig, load_split, train_supernet
from .v1 import V1MetaSupernet, V1PathEvaluator, slim, train_v1_supernet
from .v1space import V1Space

STAGES = ("table", "check", "references", "supernet", "search", "retrain", "ranking", "export", "measure", "report")
BUDGETS = ("tiny", "proxy", "full")
PROXY_SIZE = 64
TABLE_CACHE = Path("~/.cache/efficientformer/latency-tables")

#: the pipeline's settings; a config's ``pipeline:`` block overrides them, its ``budgets.<budget>:`` block
#: overrides that (and may hold a ``space:`` of its own)
DEFAULTS: dict[str, Any] = {
    "data": "proxy",
    "table": {
        "runtime": "onnxruntime",
        "threads": 1,
        "clock": "cpu",
        "img_size": 224,
        "warmup": 5,
        "runs": 25,
        "context": 1,
        "statistic": "median",
    },
    "check": {"random": 30, "seed": 0, "warmup": 5, "runs": 20},
    "references": ["mobilenetv2_100", "efficientformerv2_s0"],
    "target_like": "efficientformerv2_s0",
    "supernet": {"img_size": 32, "steps": 300, "batch_size": 48, "num_random": 1, "lr": 2e-3, "eval_images": 0},
    "search": {"actions_per_step": 4, "calib_images": 192, "eval_images": None},
    "retrain": {
        "config": "configs/search/proxy_train.yaml",
        "seeds": 3,
        "references": ["efficientformerv2_s0"],
        "overrides": {},
    },
    "ranking": {"subnets": 0, "seeds": 1, "seed": 0},
    "measure": {"warmup": 5, "runs": 30},
}


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
    if is_timm_name(name):
        return None
    try:
        return get_spec(resolve_name(name)[0])
    except (KeyError, ValueError):
        return None


def measure_key(name: str) -> str:
    """The name a reference is measured under: ``timm:mobilenetv2_100`` and ``mobilenetv2_100`` are one model."""
    return name[len(TIMM_PREFIX) :] if is_timm_name(name) else name


def target_label(target: Any) -> str:
    """``searched@mobilenetv2_100``, ``searched@7.5ms``: the searched model of one target."""
    return f"searched@{float(target):g}ms" if _is_number(target) else f"searched@{measure_key(str(target))}"


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

    def __init__(
        self,
        cfg: dict[str, Any],
        output: str | Path,
        *,
        target_like: str | None = None,
        table_cache: str | Path | None = None,
        progress: bool = True,
        log: Callable[[str], None] = print,
    ) -> None:
        self.cfg = cfg
        if target_like is not None:  # "a,b": several targets, one walk (see the module docstring)
            parts = [t.strip() for t in str(target_like).split(",") if t.strip()]
            cfg["target_like"] = parts[0] if len(parts) == 1 else parts
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
            raise ValueError(
                f"{self.out} holds a pipeline run with other settings ({saved}); pass another --output "
                "or delete it (its finished stages would not match these settings)"
            )
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
                self.timing[name] = {
                    "seconds": round(seconds, 2),
                    **extra,
                    "cached": False,
                    "loadavg": [round(x, 2) for x in os.getloadavg()],
                }
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
        ident = {
            "settings": t,
            "space": self.space.to_dict(),
            "cpu": stamp["cpu_model"],
            "isa": stamp["isa"],
            "versions": stamp["versions"],
            "keys": self.table_keys(),
        }
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
        name = f"v2_{t['runtime']}_t{t['threads']}_{t['img_size']}px_{t['clock']}_{digest}.json"
        return self.table_cache / name

    def stage_table(self) -> tuple[dict, dict]:
        t = self.cfg["table"]
        path = self.table_path()
        reused = path.is_file() and bool(LatencyTable.load(path).meta.get("complete"))
        if reused:
            self.log(f"[pipeline] reusing the latency table {path} (same settings and machine stamp)")
        table = build_table(
            path,
            "v2",
            t["runtime"],
            threads=int(t["threads"]),
            img_size=int(t["img_size"]),
            warmup=int(t["warmup"]),
            runs=int(t["runs"]),
            space=self.space,
            statistic=t["statistic"],
            clock=t["clock"],
            context=int(t["context"]),
            keys=self.table_keys(),
            progress=self.progress,
            log=self.log,
        )
        return {
            "path": str(path),
            "entries": len(table.entries),
            "reused": reused,
            "machine": table.meta["machine"],
        }, {}

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
            result = check_table(
                table,
                n_random=int(c["random"]),
                seed=int(c["seed"]),
                warmup=int(c["warmup"]),
                runs=int(c["runs"]),
                progress=self.progress,
                log=self.log,
            )
            atomic_write_json(cached, result)
        paths = write_report(result, self.out / "check")
        table.meta["calibration"] = {**result["summary"]["calibration"], "from": str(cached)}
        table.save(self.results["table"]["path"])
        s = result["summary"]
        return {
            "summary": {
                k: s[k]
                for k in (
                    "networks",
                    "published",
                    "methods_leave_one_out",
                    "calibration",
                    "loadavg_start",
                    "loadavg_end",
                )
            },
            "json": str(paths["json"]),
            "plot": str(paths.get("plot", "")),
        }, {}

    # -- 3. references ---------------------------------------------------------------------------------------------
    def targets(self) -> list[Any]:
        """The targets (reference names or numbers in ms): ``target_like`` is one or a list."""
        t = self.cfg["target_like"]
        targets = [] if t is None else list(t) if isinstance(t, list | tuple) else [t]
        labels = [target_label(x) for x in targets]
        if len(set(labels)) != len(labels):
            raise ValueError(f"target_like names a target twice: {targets}")
        return targets

    def reference_names(self) -> list[str]:
        """The models measured beside the searched ones: ``references``, the named targets and the retrained
        references (each once, under :func:`measure_key`)."""
        names: list[str] = []
        extra = [t for t in self.targets() if not _is_number(t)] + list(self.cfg["retrain"]["references"])
        for name in list(self.cfg["references"]) + extra:
            if measure_key(str(name)) not in names:
                names.append(measure_key(str(name)))
        return names

    def check_references(self) -> None:
        for name in self.reference_names() + list(self.cfg["retrain"]["references"]):
            if reference_spec(name) is None and not require("timm").is_model(measure_key(name)):
                raise ValueError(
                    f"reference {name!r} is neither one of our models, an architecture file, a latency "
                    "in ms nor a timm model name (e.g. mobilenetv2_100)"
                )

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
                    out[label] = {
                        "predicted_ms": table.predict(spec) if not table.missing(spec) else None,
                        "params": count_params(spec, img),
                        "family": "ours",
                    }
                else:
                    timm = require("timm")
                    net = timm.create_model(measure_key(str(model)), pretrained=False, num_classes=1000).eval()
                    out[label] = {
                        "predicted_ms": None,
                        "params": sum(p.numel() for p in net.parameters()),
                        "family": "timm",
                    }
                fns[label] = runtime_callable(net, example, t["runtime"], int(t["threads"]), Path(tmp))
            times = _interleaved(fns, int(m["warmup"]), int(m["runs"]), CLOCKS[t["clock"]], self.progress)
        for label, ts in times.items():  # the statistic the table holds, so prediction and measurement agree
            stats = summarise(ts)
            out[label]["measured_ms"] = stats[t["statistic"]]
            out[label]["measured_stats"] = stats
        out["_stamp"] = {
            "runtime": t["runtime"],
            "threads": t["threads"],
            "img_size": img,
            "clock": t["clock"],
            "statistic": t["statistic"],
            "runs": m["runs"],
            "loadavg": [round(x, 2) for x in os.getloadavg()],
        }
        return out

    def target_ms(self) -> dict[str, float]:
        """Each target's latency (ms), by its label (:func:`target_label`)."""
        targets = self.targets()
        if not targets:
            raise ValueError("give the pipeline a target: --target-like MODEL or --target-like MS")
        return {
            target_label(t): float(t)
            if _is_number(t)
            else float(self.results["references"][measure_key(str(t))]["measured_ms"])
            for t in targets
        }

    # -- 4. supernet -----------------------------------------------------------------------------------------------
    def stage_supernet(self) -> tuple[dict, dict]:
        s = self.cfg["supernet"]
        out = self.out / "supernet"
        scfg = load_config(
            SupernetConfig,
            None,
            [],
            data=str(self.root),
            output=str(out),
            img_size=int(s["img_size"]),
            steps=int(s["steps"]),
            batch_size=int(s["batch_size"]),
            lr=float(s["lr"]),
            num_random=int(s["num_random"]),
            eval_images=int(s["eval_images"]),
            threads=int(self.cfg["table"]["threads"]),
            progress=self.progress,
        )
        start = time.perf_counter()
        net, metrics = train_supernet(scfg, self.space, self.root)
        seconds = time.perf_counter() - start
        save_supernet(net, out / "supernet.pth", data=str(self.root))
        metrics = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        return (
            {"path": str(out / "supernet.pth"), "metrics": metrics},
            {"steps": int(s["steps"]), "steps_per_s": round(int(s["steps"]) / seconds, 3)},
        )

    # -- 5. search -------------------------------------------------------------------------------------------------
    def stage_search(self) -> tuple[dict, dict]:
        s = self.cfg["search"]
        net = load_supernet(self.results["supernet"]["path"])
        table = self.table()
        targets = self.target_ms()
        out = self.out / "search"
        res = run_v2_search(
            net,
            table,
            SearchTargets(latency_ms=min(targets.values())),
            self.root,
            out,
            mes=self.mes,
            actions_per_step=int(s["actions_per_step"]),
            calib_images=int(s["calib_images"]),
            eval_images=s["eval_images"],
            lines={
                k: v["measured_ms"]
                for k, v in self.results["references"].items()
                if not k.startswith("_") and v["family"] == "timm"
            },
            log=self.log,
        )
        rows = [json.loads(line) for line in (out / "trajectory.jsonl").read_text().splitlines()[1:]]
        stamp = load_arch(res["arch"])["search"]
        found = {}
        for label, ms in targets.items():  # the first point of the walk at or below each target
            row = next((r for r in rows if r["latency_ms"] <= ms), rows[-1])
            extra = {
                **stamp,
                "accuracy_heldout": row["accuracy"],
                "table_latency_ms": row["latency_ms"],
                "params": row["params"],
                "mes": row["mes"],
                "target_ms": ms,
                "step": row["step"],
                "stopped": "target met" if row["latency_ms"] <= ms else stamp["stopped"],
            }
            arch = {**row["arch"], "name": "efficientformerv2_searched", "search": extra}
            path = save_arch(arch, out / f"{label.replace('@', '_at_')}.yaml")
            final = {k: row[k] for k in ("accuracy", "latency_ms", "params", "mes", "arch")}
            found[label] = {
                "arch": str(path),
                "target_ms": ms,
                "step": row["step"],
                "stopped": extra["stopped"],
                "final": final,
            }
        res["found"] = found
        return res, {
            "candidates": res["evaluations"],
            "candidates_per_s": round(res["evaluations"] / res["seconds"], 3),
        }

    def searched(self) -> dict[str, str]:
        """``{searched@<target>: architecture file}``."""
        return {label: info["arch"] for label, info in self.results["search"]["found"].items()}

    # -- 6. retrain ------------------------------------------------------------------------------------------------
    def retrain_models(self) -> dict[str, str]:
        models = self.searched()
        for name in self.cfg["retrain"]["references"]:
            models[name] = name
        return models

    def retrain_run(self, model: str, folder: Path, seed: int) -> dict[str, Any]:
        """One training run of the recipe (``retrain.config`` + ``overrides``), or its summary when it finished."""
        r = self.cfg["retrain"]
        summary_path = folder / "summary.json"
        if summary_path.is_file():  # a seed that finished before an interruption
            summary = json.loads(summary_path.read_text())
        else:
            self.log(f"[pipeline] train {model} seed {seed} -> {folder}")
            overrides = {
                **(r.get("overrides") or {}),
                "model": str(model),
                "data": str(self.root),
                "output": str(folder),
                "seed": seed,
                "progress": self.progress,
            }
            summary = train(build_config(r["config"], overrides))
        return {
            "seed": seed,
            "val_top1": summary.get("val_top1"),
            "ema_top1": summary.get("ema_top1"),
            "checkpoint": summary.get("checkpoint"),
            "seconds": summary.get("seconds"),
        }

    def stage_retrain(self) -> tuple[dict, dict]:
        r = self.cfg["retrain"]
        out: dict[str, Any] = {}
        started = time.perf_counter()
        for label, model in self.retrain_models().items():
            folder = self.out / "retrain" / label.replace(":", "_")
            runs = [self.retrain_run(model, folder / f"seed{seed}", seed) for seed in range(int(r["seeds"]))]
            out[label] = {"model": str(model), "runs": runs, **_spread(runs)}
        return out, {
            "seconds_per_run": round(
                (time.perf_counter() - started) / max(1, sum(len(v["runs"]) for v in out.values())), 2
            )
        }

    # -- 7. ranking -----------------------------------------------------------------------------------------------
    def ranking_subnets(self) -> dict[str, ModelSpec]:
        """``ranking.subnets`` points of the space spread over the latency range: the searched models and the
        retrained references in the space, the published models in it, the smallest and the largest subnet, and
        random subnets (seeded) nearest to evenly spaced table latencies between the smallest and the largest."""
        n, table, space = int(self.cfg["ranking"]["subnets"]), self.table(), self.space
        chosen: dict[str, ModelSpec] = {}
        fixed = [(label, reference_spec(model)) for label, model in self.retrain_models().items()]
        fixed += [*V2_VARIANTS.items(), ("smallest", space.smallest()), ("largest", space.largest())]
        for label, spec in fixed:  # each network once
            if (
                spec is not None
                and space.contains(spec)
                and arch_key(spec) not in {arch_key(x) for x in chosen.values()}
            ):
                chosen[label] = spec
        lo, hi = table.predict(space.smallest()), table.predict(space.largest())
        rng = random.Random(int(self.cfg["ranking"]["seed"]))
        pool = [space.sample(rng) for _ in range(400)]
        pool = [(table.predict(x), x) for x in pool if not table.missing(x)]
        keys = {arch_key(x) for x in chosen.values()}
        wanted = max(0, n - len(chosen))
        for k in range(wanted):
            aim = lo + (hi - lo) * (k + 1) / (wanted + 1)
            free = [(abs(ms - aim), i) for i, (ms, x) in enumerate(pool) if arch_key(x) not in keys]
            if not free:
                break
            spec = pool[min(free)[1]][1]
            keys.add(arch_key(spec))
            chosen[f"random{k}"] = spec
        return chosen

    def stage_ranking(self) -> tuple[dict, dict]:
        rk = self.cfg["ranking"]
        if int(rk["subnets"]) <= 0:
            return {"subnets": []}, {}
        started = time.perf_counter()
        table, seeds = self.table(), int(rk["seeds"])
        net = load_supernet(self.results["supernet"]["path"])
        img = net.img_size[0]
        s = self.cfg["search"]
        eval_x, eval_y = load_split(held_out_split(self.root, self.log), img, limit=s["eval_images"])
        calib_x, _ = load_split(self.root / "train", img, limit=int(s["calib_images"]))
        evaluator = SubnetEvaluator(net, eval_x, eval_y, calib_x)
        retrained = self.results["retrain"]
        rows = []
        for label, spec in self.ranking_subnets().items():
            if label in retrained:
                runs = retrained[label]["runs"][:seeds]
            else:
                arch = save_arch(
                    {**spec_to_arch(spec), "name": "efficientformerv2_custom"}, self.out / "ranking" / f"{label}.yaml"
                )
                runs = [self.retrain_run(str(arch), self.out / "ranking" / label / f"seed{k}", k) for k in range(seeds)]
            rows.append(
                {
                    "label": label,
                    "arch": spec_to_arch(spec),
                    "predicted_ms": table.predict(spec),
                    "params": count_params(spec, int(self.cfg["table"]["img_size"])),
                    "supernet_top1": evaluator(spec),
                    "runs": runs,
                    **_spread(runs),
                }
            )
        sup = [r["supernet_top1"] for r in rows]
        tau = {
            key: kendall_tau(sup, [r[key] for r in rows]) if all(r[key] is not None for r in rows) else None
            for key in ("mean", "ema_mean")
        }
        out = {
            "subnets": rows,
            "kendall_tau": tau,
            "seeds": seeds,
            "supernet_img_size": img,
            "latency_range_ms": [min(r["predicted_ms"] for r in rows), max(r["predicted_ms"] for r in rows)],
        }
        return out, {"seconds_per_subnet": round((time.perf_counter() - started) / len(rows), 2)}

    # -- 8. export -------------------------------------------------------------------------------------------------
    def stage_export(self) -> tuple[dict, dict]:
        ort = require("onnxruntime")
        out = {}
        for label, info in self.results["retrain"].items():
            run = info["runs"][0]
            ckpt = read_checkpoint(run["checkpoint"], "export")  # our training checkpoint, one-line errors
            classes = len(ckpt["class_names"])
            img = int(ckpt.get("config", {}).get("img_size") or self.cfg["supernet"]["img_size"])
            distill = (ckpt.get("config", {}).get("distillation") or "none") != "none"
            model = create_model(
                info["model"], num_classes=classes, img_size=img, distillation=distill, checkpoint=run["checkpoint"]
            ).eval()
            form = model if is_timm_name(info["model"]) else deploy(model, img)  # timm's models: no deploy form
            path = self.out / "export" / f"{label.replace(':', '_')}.onnx"
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
            out[label] = {
                "onnx": str(path),
                "img_size": img,
                "classes": classes,
                "max_abs_diff": diff,
                "form": "as is" if form is model else "deploy",
            }
        return out, {}

    # -- 9. measure ------------------------------------------------------------------------------------------------
    def stage_measure(self) -> tuple[dict, dict]:
        models: dict[str, Any] = {k: arch_to_spec(load_arch(v)) for k, v in self.searched().items()}
        for name in self.reference_names():
            models[name] = name
        return self.measure(models), {}

    # -- 10. report ------------------------------------------------------------------------------------------------
    def stage_report(self) -> tuple[dict, dict]:
        report = build_report(self)
        return {
            "report_md": str(self.out / "report.md"),
            "report_json": str(self.out / "report.json"),
            "plots": report["plots"],
        }, {}


def run_search_pipeline(
    config: str | Path,
    output: str | Path,
    *,
    budget: str = "proxy",
    target_like: str | None = None,
    data: str | None = None,
    table_cache: str | Path | None = None,
) -> Pipeline:
    """Run (or continue) every stage of the pipeline of ``config`` at ``budget`` in the run folder ``output``;
    ``data`` overrides the config's data, ``target_like`` its targets (comma-separated: one walk). Returns the
    finished :class:`Pipeline` (its ``results`` and per-stage ``timing``, ``cached`` for stages done before)."""
    cfg = load_pipeline_config(config, budget)
    if data:
        cfg["data"] = data
    pipeline = Pipeline(cfg, output, target_like=target_like, table_cache=table_cache)
    pipeline.run()
    return pipeline


def _spread(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample sd over seeds of the final top-1 (``mean``/``sd``) and of the EMA model's (``ema_*``)."""
    out: dict[str, Any] = {}
    for key, prefix in (("val_top1", ""), ("ema_top1", "ema_")):
        accs = [x[key] for x in runs if x.get(key) is not None]
        out[f"{prefix}mean"] = statistics.mean(accs) if accs else None
        out[f"{prefix}sd"] = statistics.stdev(accs) if len(accs) > 1 else None
    return out


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _interleaved(
    fns: dict[str, Callable[[], object]],
    warmup: int,
    runs: int,
    clock: Callable[[], float],
    progress: bool,
    blocks: int = 5,
) -> dict[str, list[float]]:
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


def run_v2_search(
    net,
    table: LatencyTable,
    targets: SearchTargets,
    root: Path,
    out: Path,
    *,
    mes: MESConfig | None = None,
    actions_per_step: int = 1,
    calib_images: int = 256,
    eval_images: int | None = None,
    lines: dict[str, float] | None = None,
    lut_name: str = "",
    supernet_name: str = "",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
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
        log(
            f"step {row['step']:3d} {row['action'][:60]:60s} acc {row['accuracy']:6.2f}  "
            f"lat {row['latency_ms']:7.2f} ms  params {row['params'] / 1e6:6.2f}M  MES {row['mes']:8.3f}  "
            f"({time.time() - started:.0f} s)"
        )

    search = GreedySearch(
        net.space, evaluator, table.predict, params=lambda s: count_params(s, img_lut), mes=mes, log=show
    )
    result = search.run(targets, actions_per_step=actions_per_step)
    final = result.final
    extra = {
        "search": {
            "accuracy_heldout": final.accuracy,
            "table_latency_ms": final.latency_ms,
            "params": final.params,
            "mes": final.mes,
            "lut": lut_name,
            "supernet": supernet_name,
            "stopped": result.stopped,
            "evaluations": result.evaluations,
            "machine": table.meta.get("machine", {}),
        }
    }
    arch_path = save_arch({**spec_to_arch(final.spec), **extra}, out / "arch.yaml")
    write_trajectory(result, out / "trajectory.jsonl", mes)
    published = {n: search.point(s) for n, s in V2_VARIANTS.items() if net.space.contains(s) and not table.missing(s)}
    title = f"greedy MES search on the {table.meta.get('runtime')} table"
    plot = plot_trajectory(result, out / "trajectory.png", published, lines, title=title)
    seconds = round(time.time() - started, 2)
    summary = {
        "arch": str(arch_path),
        "final": final.to_dict(),
        "stopped": result.stopped,
        "evaluations": result.evaluations,
        "seconds": seconds,
        "published": {n: p.to_dict() for n, p in published.items()},
        "targets": targets.__dict__,
        "trajectory": str(out / "trajectory.jsonl"),
        "plot": str(plot) if plot else None,
    }
    atomic_write_json(out / "summary.json", summary)
    atomic_torch_save({"model": net.extract(final.spec).state_dict()}, out / "supernet_weights.pth")
    return summary


def run_v1_search(
    table: LatencyTable,
    target_ms: float,
    space: V1Space,
    root: Path,
    out: Path,
    *,
    img_size: int,
    steps: int,
    batch_size: int,
    seed: int = 0,
    train: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """V1: the MetaPath supernet trained on the runtime, then latency-driven slimming to ``target_ms``; writes
    ``arch.yaml`` (with the machine stamp) and ``trajectory.jsonl`` into ``out``; returns the summary with the
    time of each part (supernet steps/s, paths scored/s)."""
    images, labels = load_split(root / "train", img_size)
    eval_x, eval_y = load_split(held_out_split(root, log), img_size)
    net = V1MetaSupernet(space, num_classes=int(labels.max()) + 1, img_size=img_size)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    train_v1_supernet(
        net, images, labels, output=out / "supernet", steps=steps, batch_size=batch_size, seed=seed, **(train or {})
    )
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
    timing.update(
        search_seconds=round(search_s, 2), paths_scored=scored[0], paths_per_s=round(scored[0] / max(search_s, 1e-9), 3)
    )
    extra = {
        "search": {
            "accuracy_heldout": result.accuracy,
            "table_latency_ms": result.latency_ms,
            "target_ms": target_ms,
            "seconds": round(done - started, 1),
            "timing": timing,
            "machine": table.meta.get("machine", {}),
        }
    }
    arch_path = save_arch({**spec_to_arch(spec), **extra}, out / "arch.yaml")
    with (out / "trajectory.jsonl").open("w") as f:
        for row in result.trajectory:
            f.write(json.dumps(row) + "\n")
    return {
        "arch": str(arch_path),
        "spec": spec,
        "accuracy": result.accuracy,
        "latency_ms": result.latency_ms,
        "timing": timing,
    }


# ---------------------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------------------
def build_report(p: Pipeline) -> dict[str, Any]:
    r = p.results
    measured = {k: v for k, v in r["measure"].items() if not k.startswith("_")}
    retrain = r["retrain"]
    plots = _plots(p, measured, retrain)
    search = {k: r["search"][k] for k in ("found", "stopped", "evaluations", "seconds")}
    rates = {
        "supernet_steps_per_s": p.timing["supernet"].get("steps_per_s"),
        "candidates_scored_per_s": p.timing["search"].get("candidates_per_s"),
        "retrain_seconds_per_run": p.timing["retrain"].get("seconds_per_run"),
    }
    report = {
        "config": p.cfg["config"],
        "budget": p.cfg["budget"],
        "target_like": p.cfg["target_like"],
        "target_ms": p.target_ms(),
        "machine": r["table"]["machine"],
        "table": r["table"]["path"],
        "check": r["check"]["summary"],
        "measured": r["measure"],
        "retrain": retrain,
        "recipe": {
            "config": p.cfg["retrain"]["config"],
            "overrides": p.cfg["retrain"]["overrides"],
            "seeds": p.cfg["retrain"]["seeds"],
        },
        "ranking": r["ranking"],
        "export": r["export"],
        "search": search,
        "stages": p.timing,
        "rates": rates,
        "plots": plots,
        "comparisons": _comparisons(retrain, measured, p.target_ms()),
    }
    report = _portable(report, p.out)
    atomic_write_json(p.out / "report.json", report)
    atomic_write_text(p.out / "report.md", _markdown(p, report))
    return report


def _portable(obj: Any, out: Path) -> Any:
    """``obj`` with every path made shareable: inside the run folder relative to it (also a path the stages
    recorded relative to the working directory, as they do for a relative ``--output``), other absolute paths in
    the working directory relative to it, under the home folder as ``~/...`` (the table cache), anything else (a
    temporary folder) by its file name alone."""
    if isinstance(obj, dict):
        return {k: _portable(v, out) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_portable(v, out) for v in obj]
    if not isinstance(obj, str):
        return obj
    if not obj.startswith("/"):
        if "/" not in obj:  # a name, a number, or a file of the working directory: nothing to rebase
            return obj
        # a relative path is relative to the working directory; inside the run folder it becomes relative to that
        try:
            return str(Path(obj).resolve().relative_to(out.resolve()))
        except (ValueError, OSError):
            return obj
    path = Path(obj)
    for base, prefix in ((out.resolve(), ""), (Path.cwd().resolve(), ""), (Path.home().resolve(), "~/")):
        try:
            return prefix + str(path.resolve().relative_to(base))
        except ValueError:
            continue
    return path.name


def _comparisons(
    retrain: dict[str, Any], measured: dict[str, Any] | None = None, targets: dict[str, float] | None = None
) -> dict[str, dict[str, Any]]:
    """Each searched model's mean accuracy minus each retrained reference's (``searched@x - ref``), final and EMA
    top-1, with the difference's standard error (sd^2/n summed over both sides) where both have at least two
    seeds, and both measured latencies; ``target`` marks the pair a search aimed at."""
    measured, targets = measured or {}, targets or {}
    out: dict[str, dict[str, Any]] = {}
    for label, s in retrain.items():
        if not label.startswith("searched") or s["mean"] is None:
            continue
        for name, r in retrain.items():
            if name.startswith("searched") or r["mean"] is None:
                continue
            row: dict[str, Any] = {"seeds": min(len(s["runs"]), len(r["runs"]))}
            for prefix in ("", "ema_"):
                a, b = s.get(f"{prefix}mean"), r.get(f"{prefix}mean")
                sa, sb = s.get(f"{prefix}sd"), r.get(f"{prefix}sd")
                row[f"{prefix}difference"] = a - b if a is not None and b is not None else None
                row[f"{prefix}standard_error"] = (
                    math.sqrt(sa**2 / len(s["runs"]) + sb**2 / len(r["runs"]))
                    if sa is not None and sb is not None
                    else None
                )
            ms_s, ms_r = (
                measured.get(label, {}).get("measured_ms"),
                measured.get(measure_key(name), {}).get("measured_ms"),
            )
            row.update(
                searched_ms=ms_s,
                reference_ms=ms_r,
                latency_ratio=ms_s / ms_r if ms_s is not None and ms_r is not None else None,
                target=label == target_label(measure_key(name)) and label in targets,
            )
            out[f"{label} - {name}"] = row
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
    for k, (label, info) in enumerate(p.results["search"]["found"].items()):
        f = info["final"]
        ax.plot(f["latency_ms"], f["accuracy"], "*", ms=14, color=f"C{k + 3}", label=label)
    for name, pt in p.results["search"]["published"].items():
        ax.plot(pt["latency_ms"], pt["accuracy"], "ks", ms=6)
        ax.annotate(
            name.replace("efficientformerv2_", "V2-").upper(),
            (pt["latency_ms"], pt["accuracy"]),
            fontsize=8,
            xytext=(4, -10),
            textcoords="offset points",
        )
    for name, m in measured.items():
        if m["family"] == "timm":
            ax.axvline(m["measured_ms"], color="tab:green", ls=":", lw=1.2)
            ax.text(
                m["measured_ms"],
                ax.get_ylim()[0],
                f" {name} (measured)",
                rotation=90,
                fontsize=7,
                va="bottom",
                color="tab:green",
            )
    for ms in p.target_ms().values():
        ax.axvline(ms, color="tab:red", ls="--", lw=0.8)
    ax.set_xlabel("predicted latency (ms; timm models: measured); dashed: targets")
    ax.set_ylabel("held-out accuracy on the supernet (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    plots["trajectory"] = str(p.out / "trajectory.png")
    fig.savefig(plots["trajectory"], dpi=100)
    plt.close(fig)
    # predicted against measured: the check's networks (leave-one-out) and this run's models
    check = json.loads(Path(p.results["check"]["json"]).read_text())
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.scatter(
        [x["loo_per_kind_ms"] for x in check["rows"]],
        [x["measured_ms"] for x in check["rows"]],
        s=18,
        label="table check (leave-one-out)",
    )
    ours = {k: v for k, v in measured.items() if v["predicted_ms"] is not None}
    ax.scatter(
        [v["predicted_ms"] for v in ours.values()],
        [v["measured_ms"] for v in ours.values()],
        marker="*",
        s=90,
        c="tab:red",
        label="this run's models",
    )
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
    fig.savefig(plots["latency"], dpi=100)
    plt.close(fig)
    # accuracy against measured latency, error bars over seeds
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for label, info in retrain.items():
        key = label if label.startswith("searched") else measure_key(info["model"])
        if key not in measured or info["mean"] is None:
            continue
        ax.errorbar(
            measured[key]["measured_ms"],
            info["mean"],
            yerr=info["sd"] or 0.0,
            fmt="o",
            capsize=4,
            label=f"{label} ({len(info['runs'])} seeds)",
        )
    ax.set_xlabel(
        f"measured latency, {p.cfg['table']['runtime']}, {p.cfg['table']['threads']} thread(s), "
        f"{p.cfg['table']['img_size']} px (ms)"
    )
    ax.set_ylabel("val top-1 after retraining (%, mean +- sd)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    plots["accuracy"] = str(p.out / "accuracy_vs_latency.png")
    fig.savefig(plots["accuracy"], dpi=100)
    plt.close(fig)
    rows = p.results["ranking"]["subnets"]
    if rows:  # the supernet's score against stand-alone training
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        sc = ax.scatter(
            [r["supernet_top1"] for r in rows],
            [r["mean"] for r in rows],
            c=[r["predicted_ms"] for r in rows],
            cmap="viridis",
            s=30,
        )
        for r in rows:
            ax.annotate(r["label"].replace("efficientformerv2_", "V2-"), (r["supernet_top1"], r["mean"]), fontsize=7)
        fig.colorbar(sc, label="predicted latency (ms)")
        tau = p.results["ranking"]["kendall_tau"]["mean"]
        ax.set_title(f"Kendall tau {tau:.2f} over {len(rows)} subnets" if tau is not None else "", fontsize=9)
        ax.set_xlabel("supernet held-out top-1 (%)")
        ax.set_ylabel(f"stand-alone val top-1 (%, {p.results['ranking']['seeds']} seed(s))")
        fig.tight_layout()
        plots["ranking"] = str(p.out / "ranking.png")
        fig.savefig(plots["ranking"], dpi=100)
        plt.close(fig)
    return plots


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def _markdown(p: Pipeline, rep: dict[str, Any]) -> str:
    t, m = p.cfg["table"], rep["machine"]
    targets = ", ".join(f"{k} = {v:.3f} ms" for k, v in rep["target_ms"].items())
    lines = [
        f"# Search pipeline report ({rep['budget']} budget)",
        "",
        f"Config `{rep['config']}`; targets: {targets}. Machine: "
        f"{m.get('cpu_model')} [{' '.join(m.get('isa', []))}], {t['runtime']}, {t['threads']} thread(s), "
        f"{t['img_size']} px, {t['clock']} clock; load average at the table {m.get('loadavg')}.",
        "",
        "## Latency predictor (leave-one-out over the table check's networks)",
        "",
        "| predictor | Kendall tau | MAPE | within +-10% |",
        "|---|---|---|---|",
    ]
    for method, a in rep["check"]["methods_leave_one_out"].items():
        lines.append(
            f"| {method} | {a['kendall_tau']:.3f} | {a['mape_percent']:.1f}% | {a['within_10_percent']:.0f}% |"
        )
    lines += [
        "",
        f"## Measured end to end ({rep['measured']['_stamp']['statistic']} of "
        f"{rep['measured']['_stamp']['runs']} runs in 5 alternating turns, load "
        f"{rep['measured']['_stamp']['loadavg']})",
        "",
        "| model | predicted | measured | error | params |",
        "|---|---|---|---|---|",
    ]
    for name, v in rep["measured"].items():
        if name.startswith("_"):
            continue
        pred = v["predicted_ms"]
        err = f"{100 * (pred - v['measured_ms']) / v['measured_ms']:+.1f}%" if pred is not None else "-"
        lines.append(f"| {name} | {pred:.3f} ms |" if pred is not None else f"| {name} | - |")
        lines[-1] += f" {v['measured_ms']:.3f} ms | {err} | {v['params'] / 1e6:.2f} M |"
    rc = rep["recipe"]
    lines += [
        "",
        f"## Retrained (`{rc['config']}` with {rc['overrides']}, the same for every model)",
        "",
        "| model | seeds | val top-1 mean | sd | EMA top-1 mean | sd | val top-1 per seed |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, info in rep["retrain"].items():
        accs = ", ".join(f"{x['val_top1']:.2f}" for x in info["runs"] if x["val_top1"] is not None)
        lines.append(
            f"| {label} | {len(info['runs'])} | {_fmt(info['mean'])} | {_fmt(info['sd'])} | "
            f"{_fmt(info.get('ema_mean'))} | {_fmt(info.get('ema_sd'))} | {accs} |"
        )
    if rep["comparisons"]:
        lines += [
            "",
            "| comparison | seeds | difference (s.e.) | EMA difference (s.e.) | latency (ms) | ratio |",
            "|---|---|---|---|---|---|",
        ]
        for name, d in rep["comparisons"].items():
            lines.append(
                f"| {name}{' (target)' if d['target'] else ''} | {d['seeds']} | "
                f"{_fmt(d['difference'], '+.2f')} ({_fmt(d['standard_error'])}) | "
                f"{_fmt(d['ema_difference'], '+.2f')} ({_fmt(d['ema_standard_error'])}) | "
                f"{_fmt(d['searched_ms'], '.3f')} vs {_fmt(d['reference_ms'], '.3f')} | "
                f"{_fmt(d['latency_ratio'], '.3f')} |"
            )
    rk = rep["ranking"]
    if rk["subnets"]:
        tau = rk["kendall_tau"]
        lines += [
            "",
            f"## Supernet ranking: Kendall tau {_fmt(tau['mean'], '.3f')} (final top-1), "
            f"{_fmt(tau['ema_mean'], '.3f')} (EMA top-1) over {len(rk['subnets'])} subnets, "
            f"{rk['seeds']} seed(s) each, supernet at {rk['supernet_img_size']} px",
            "",
            "| subnet | predicted ms | params | supernet top-1 | stand-alone top-1 | EMA top-1 |",
            "|---|---|---|---|---|---|",
        ]
        for r in sorted(rk["subnets"], key=lambda r: r["predicted_ms"]):
            lines.append(
                f"| {r['label']} | {r['predicted_ms']:.2f} | {r['params'] / 1e6:.2f} M | "
                f"{r['supernet_top1']:.2f} | {_fmt(r['mean'])} | {_fmt(r['ema_mean'])} |"
            )
    s = rep["search"]
    lines += ["", f"Search: {s['stopped']} after {s['evaluations']} subnet evaluations ({s['seconds']:.0f} s)."]
    for label, f in s["found"].items():
        lines.append(
            f"- {label}: `{f['arch']}`, step {f['step']}, table latency {f['final']['latency_ms']:.3f} ms "
            f"(target {f['target_ms']:.3f} ms), supernet top-1 {f['final']['accuracy']:.2f}%"
        )
    lines += ["", "## Time per stage", "", "| stage | seconds | rate | cached |", "|---|---|---|---|"]
    for name, tm in rep["stages"].items():
        rate = ", ".join(f"{k} {v}" for k, v in tm.items() if k.endswith(("_per_s", "per_run", "per_subnet")))
        lines.append(f"| {name} | {tm.get('seconds', 0):.1f} | {rate} | {tm.get('cached')} |")
    lines += ["", "Plots: " + ", ".join(f"[{k}]({Path(v).name})" for k, v in rep["plots"].items()), ""]
    return "\n".join(lines) + "\n"
