#!/usr/bin/env bash
# Set up, lint, type-check, then run the whole test suite (slow tests included).
# `--fast`: the fast loop instead, the tests marked `fast` in one pytest process (under 3 minutes).
# With other arguments, they go to one pytest run as they are (e.g. `bash scripts/test.sh tests/test_models.py -x`).
# Without, each test file runs in its own pytest process: in one process for the whole suite, a native library
# crashed the interpreter (SIGSEGV, at different tests in different runs) once OpenVINO, NNCF, ONNX Runtime,
# ExecuTorch, Core ML and the trackers had all been loaded into it; a crash then fails only its file, named.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests benchmarks scripts
.venv/bin/ruff format --check src tests benchmarks scripts
.venv/bin/mypy
if [ "${1:-}" = "--fast" ]; then
  shift
  exec .venv/bin/pytest -q -m fast -p no:cacheprovider "$@"
fi
if [ "$#" -gt 0 ]; then
  exec .venv/bin/pytest -q "$@"
fi
exec .venv/bin/python scripts/run_tests.py
