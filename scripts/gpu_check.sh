#!/usr/bin/env bash
# The training runtime's GPU checks, in one short call on a machine with a CUDA GPU (see docs/training.md):
# NCCL collectives, bf16 + channels_last + torch.compile + EMA training, evaluation, checkpoint and resume, a few
# dense steps, and (tests/gpu/test_cuda_preemption.py) a SIGUSR1 stop with a mid-epoch checkpoint, gradient
# accumulation (DDP no_sync when there are two GPUs) and the torchrun --max-restarts resume, under torchrun on NCCL.
# Prints the environment and the tests' output; exits non-zero when a check fails. Extra arguments go to pytest
# (e.g. -k preemption).
set -euo pipefail
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    echo "usage: scripts/gpu_check.sh [PYTEST ARGS...]   (PYTHON=... picks the interpreter when there is no .venv)"
    exit 0
fi
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
"$PY" - <<'PYEOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "devices", torch.cuda.device_count())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0), "nccl", ".".join(map(str, torch.cuda.nccl.version())))
PYEOF
PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} exec "$PY" -m pytest -q -s -rs tests/gpu "$@"
