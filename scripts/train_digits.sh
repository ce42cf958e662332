#!/usr/bin/env bash
# The main job: set up, then train EfficientFormerV2-S0 on the embedded digits data (ImageNet folder layout).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/efficientformer train "$@"
