#!/usr/bin/env bash
# Create .venv with the exact package versions the project is tested with, then install the project (editable).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if ! cmp -s requirements/lock.txt .venv/.lock-installed 2>/dev/null; then
  .venv/bin/pip install --quiet --disable-pip-version-check -r requirements/lock.txt
  cp requirements/lock.txt .venv/.lock-installed
fi
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps -e .
