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
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--help"], capture_output=True,
                         text=True, timeout=120, env=env, cwd=REPO)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "usage" in res.stdout.lower()
