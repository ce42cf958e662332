"""`search pipeline --budget tiny` end to end, and a pipeline interrupted at any stage resumes without redoing
the stages before it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from efficientformer.cli import main
from efficientformer.data.proxy import _photos, render
from efficientformer.models.arch import load_arch
from efficientformer.search.pipeline import STAGES, Pipeline, load_pipeline_config, target_label

STAGE_EXPORT = Pipeline.stage_export
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "search" / "v2_proxy.yaml"


def _tiny_folder(root: Path) -> Path:
    from sklearn.datasets import load_digits

    digits, photos, rng = load_digits(), _photos(), np.random.default_rng(0)
    for split, n in (("train", 16), ("search", 6), ("val", 6)):
        for cls in range(3):
            folder = root / split / str(cls)
            folder.mkdir(parents=True)
            for k, i in enumerate(np.flatnonzero(digits.target == cls)[:n]):
                Image.fromarray(render(digits.images[i], photos, rng, 32)).save(folder / f"{k}.png")
    return root


def test_budgets_and_bad_keys_are_checked(tmp_path):
    tiny = load_pipeline_config(CONFIG, "tiny")
    proxy = load_pipeline_config(CONFIG, "proxy")
    assert tiny["supernet"]["steps"] < proxy["supernet"]["steps"] and tiny["space"] != proxy["space"]
    assert tiny["table"]["runtime"] == proxy["table"]["runtime"] == "onnxruntime"
    assert proxy["mes"]["sources"]["score"] == "V2 paper"
    bad = tmp_path / "bad.yaml"
    bad.write_text("pipeline:\n  tabel: {}\n")
    with pytest.raises(ValueError, match="unknown pipeline keys"):
        load_pipeline_config(bad, "proxy")
    with pytest.raises(ValueError, match="--budget"):
        load_pipeline_config(CONFIG, "huge")
    with pytest.raises(ValueError, match="neither one of our models"):  # refused before any work
        Pipeline(tiny, tmp_path / "run", target_like="mobilenet_v9", progress=False).run()
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_tiny_pipeline_runs_end_to_end_and_resumes(tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("timm")
    monkeypatch.setenv("EFFICIENTFORMER_EXPORT_CACHE", str(tmp_path / "exports"))
    cfg = load_pipeline_config(CONFIG, "tiny")
    cfg["data"] = str(_tiny_folder(tmp_path / "data"))
    out, cache = tmp_path / "run", tmp_path / "tables"
    quiet = {"table_cache": cache, "progress": False, "log": lambda *_: None}

    # 1. killed after the check, then after the supernet: the stages so far are recorded, the rest is not
    first = Pipeline(dict(cfg), tmp_path / "run0", **quiet)
    first.run(stop_after="check")
    largest = first.table().predict(first.space.largest())
    cfg["target_like"] = str(0.85 * largest)  # below the largest subnet: the search has to take steps
    with pytest.raises(ValueError, match="other settings"):  # a run folder is for one set of settings
        Pipeline(dict(cfg), tmp_path / "run0", **quiet).run()
    Pipeline(dict(cfg), out, **quiet).run(stop_after="check")
    Pipeline(dict(cfg), out, **quiet).run(stop_after="supernet")
    done = {p.stem for p in (out / "stages").glob("*.json")}
    assert done == {"table", "check", "references", "supernet"}
    before = {p.name: p.stat().st_mtime_ns for p in (out / "stages").glob("*.json")}
    table_file = json.loads((out / "stages" / "table.json").read_text())["result"]["path"]
    supernet_mtime = (out / "supernet" / "supernet.pth").stat().st_mtime_ns

    # 2. a later stage fails: what came before it stays done
    def broken(self):
        raise RuntimeError("injected failure in export")

    monkeypatch.setattr(Pipeline, "stage_export", broken)
    with pytest.raises(RuntimeError, match="injected"):
        Pipeline(dict(cfg), out, **quiet).run()
    assert (out / "stages" / "retrain.json").is_file() and not (out / "stages" / "export.json").exists()
    monkeypatch.setattr(Pipeline, "stage_export", STAGE_EXPORT)

    # 3. rerun: it continues at export and finishes, without redoing table, check, supernet, search, retrain
    pipe = Pipeline(dict(cfg), out, **quiet)
    results = pipe.run()
    done_before = ("table", "check", "references", "supernet", "search", "retrain", "ranking")
    assert all(pipe.timing[s]["cached"] for s in done_before)
    assert not pipe.timing["export"]["cached"] and not pipe.timing["measure"]["cached"]
    for name, mtime in before.items():
        assert (out / "stages" / name).stat().st_mtime_ns == mtime, name
    assert (out / "supernet" / "supernet.pth").stat().st_mtime_ns == supernet_mtime

    # the report: measured latency beside the prediction, the target measured in the same run, plots
    report = json.loads((out / "report.json").read_text())
    label = target_label(cfg["target_like"])
    searched = report["measured"][label]
    assert searched["measured_ms"] > 0 and searched["predicted_ms"] > 0
    assert report["measured"]["mobilenetv2_100"]["family"] == "timm"  # measured in the same run and runtime
    assert report["target_ms"] == {label: pytest.approx(0.85 * largest)}
    found = results["search"]["found"][label]
    assert found["stopped"] == "target met" and found["final"]["latency_ms"] <= 0.85 * largest
    assert results["search"]["evaluations"] > 1
    assert set(report["check"]["methods_leave_one_out"]) == {"sum", "affine", "per-kind"}
    assert report["rates"]["supernet_steps_per_s"] > 0 and report["rates"]["candidates_scored_per_s"] > 0
    assert report["export"][label]["max_abs_diff"] < 1e-3 and (out / report["export"][label]["onnx"]).is_file()
    # timm's MobileNetV2 trained through the same trainer and recipe, exported as it is
    timm_run = report["retrain"]["timm:mobilenetv2_100"]
    assert timm_run["runs"][0]["val_top1"] is not None and report["export"]["timm:mobilenetv2_100"]["form"] == "as is"
    assert report["retrain"][label]["runs"][0]["val_top1"] is not None
    assert f"{label} - timm:mobilenetv2_100" in report["comparisons"]
    # the supernet's ranking against stand-alone training: three distinct subnets (the searched one among them)
    ranking = report["ranking"]
    assert len({json.dumps(r["arch"], sort_keys=True) for r in ranking["subnets"]}) == 3
    assert label in {r["label"] for r in ranking["subnets"]}
    assert -1.0 <= ranking["kendall_tau"]["mean"] <= 1.0
    assert all(r["runs"][0]["val_top1"] is not None for r in ranking["subnets"])
    # the shipped report names files relative to the run folder, never the machine's temporary paths
    assert str(tmp_path) not in (out / "report.json").read_text()
    for plot in report["plots"].values():
        assert (out / plot).is_file() and (out / plot).stat().st_size > 5000
    text = (out / "report.md").read_text()
    assert "Kendall tau" in text and "mobilenetv2_100" in text and "Time per stage" in text
    arch = load_arch(found["arch"])
    assert arch["search"]["machine"]["cpu_model"]  # the found architecture carries the machine stamp

    # 4. a finished pipeline reruns from its records; the CLI prints which stages were cached
    rc = main(
        [
            "search",
            "pipeline",
            "--config",
            str(CONFIG),
            "--budget",
            "tiny",
            "--output",
            str(out),
            "--data",
            cfg["data"],
            "--table-cache",
            str(cache),
            "--target-like",
            cfg["target_like"],
        ]
    )
    assert rc == 0 and "cached stages: " + ", ".join(STAGES) in capsys.readouterr().out

    # 5. another run on the same machine reused the table and its check (same settings, same stamp)
    assert pipe.results["table"]["reused"] and pipe.results["table"]["path"] == first.results["table"]["path"]
    assert not first.results["table"]["reused"] and table_file == first.results["table"]["path"]


def test_comparison_has_the_difference_and_its_standard_error():
    from efficientformer.search.pipeline import _comparisons

    runs = [{"val_top1": 0}] * 3
    retrain = {
        "searched@s0": {"mean": 78.0, "sd": 1.0, "runs": runs},
        "s0": {"mean": 77.0, "sd": 2.0, "runs": runs, "ema_mean": 76.0, "ema_sd": 1.0},
        "one": {"mean": 70.0, "sd": None, "runs": runs[:1]},
    }
    measured = {"searched@s0": {"measured_ms": 9.0}, "s0": {"measured_ms": 10.0}}
    out = _comparisons(retrain, measured, {"searched@s0": 10.0})
    assert out["searched@s0 - s0"]["difference"] == pytest.approx(1.0)
    assert out["searched@s0 - s0"]["standard_error"] == pytest.approx((1 / 3 + 4 / 3) ** 0.5)
    assert out["searched@s0 - s0"]["ema_difference"] is None  # the searched side has no EMA figures
    assert out["searched@s0 - s0"]["latency_ratio"] == pytest.approx(0.9) and out["searched@s0 - s0"]["target"]
    assert out["searched@s0 - one"]["standard_error"] is None and not out["searched@s0 - one"]["target"]


def test_report_paths_are_relative_to_the_run_folder_whatever_the_output_was_given_as(tmp_path, monkeypatch):
    """A relative --output: the stages record paths relative to the working directory (runs/x/retrain/...); the
    report names them relative to the run folder, like the paths of an absolute --output."""
    from efficientformer.search.pipeline import _portable

    monkeypatch.chdir(tmp_path)
    ckpt = "retrain/searched@1ms/seed0/last.pth"
    record = {
        "checkpoint": f"runs/x/{ckpt}",
        "absolute": str(tmp_path / "runs" / "x" / ckpt),
        "elsewhere": "configs/search/proxy_train.yaml",
        "model": "timm:mobilenetv2_100",
        "label": "searched@1ms",
        "plot": "",
        "runs": [{"checkpoint": f"./runs/x/{ckpt}"}],
    }
    for out in (Path("runs/x"), tmp_path / "runs" / "x"):
        got = _portable(record, out)
        assert got["checkpoint"] == got["absolute"] == got["runs"][0]["checkpoint"] == ckpt
        assert (out / got["checkpoint"]).as_posix().endswith("runs/x/" + ckpt)
        assert {k: got[k] for k in ("elsewhere", "model", "label", "plot")} == {
            k: record[k] for k in ("elsewhere", "model", "label", "plot")
        }
