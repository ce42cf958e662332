#!/usr/bin/env bash
# Set up, lint, then run the whole test suite (slow tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests
.venv/bin/ruff format --check src tests
exec .venv/bin/pytest -q "$@"
