"""Every script in benchmarks/ (and the GPU check's tests) at least imports and parses its arguments: they run
rarely (by hand, or once on a lent GPU machine), so a moved import must fail here, not there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (REPO / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_script_imports_and_shows_help(script):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "usage" in res.stdout.lower()


def _script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("shape", [(1, 4, 7, 7), (2, 3, 5, 6)])
def test_upsample_as_nearest_and_depthwise_filter_is_bilinear(shape):
    """ort_graph.py's upsample-nearest-dw variant computes V2's bilinear x2 upsample (edges included)."""
    import torch

    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    want = torch.nn.functional.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
    got = _script("ort_graph").upsample2x_nearest_dw(x)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-6)


def _row(model, impl, backend, precision, ms):
    return {
        "model": model,
        "impl": impl,
        "backend": backend,
        "precision": precision,
        "batch": 1,
        "median_ms": ms,
        "repeat_medians_ms": [ms, ms * 1.1, ms * 0.9],
    }


def test_headline_table_picks_fastest_and_fastest_pytorch():
    headline = _script("headline")
    bench = {
        "config": {"repeats": 3, "runs": 20, "img_size": 224, "clock": "cpu"},
        "environment": {
            "threads": 1,
            "cpu_model": "CPU",
            "isa": ["AVX2"],
            "loadavg_samples": [0.5, 0.7],
            "time": "2026-12-04 22:00:00 UTC",
        },
        "rows": [
            _row("efficientformerv2_s0", "ours", "deploy", "fp32", 20.0),
            _row("efficientformerv2_s0", "ours", "inductor-aot", "fp32", 15.0),
            _row("efficientformerv2_s0", "ours", "pt2e-int8", "int8", 16.0),
            _row("efficientformerv2_s0", "ours", "onnxruntime", "fp32", 10.0),
            _row("efficientformerv2_s0", "ours", "openvino-int8", "int8", 8.0),
            _row("mobilenetv2_100", "timm", "onnxruntime-int8", "int8", 4.0),
            _row("mobilenetv2_100", "timm", "inductor-aot", "fp32", 9.0),
        ],
    }
    text = headline.table(bench, {})
    s0 = next(line for line in text.splitlines() if line.startswith("| V2-S0 "))
    cells = [c.strip() for c in s0.strip("|").split("|")]
    assert cells[1] == "openvino-int8 (int8)" and cells[2] == "8.00"
    assert cells[4] == "onnxruntime 10.00"  # fastest fp32
    assert cells[5] == "inductor-aot (fp32) 15.00"  # fastest PyTorch, compiled backends included
    assert cells[6].startswith("2.00x")  # 8 / 4 in every repeat
    assert "clock: the process's CPU time per call" in text and "[0.5, 0.7]" in text
    # no PyTorch row at all: no PyTorch column
    bench["rows"] = [r for r in bench["rows"] if headline.runtime_of(r["backend"]) != "torch"]
    assert "fastest PyTorch" not in headline.table(bench, {})
