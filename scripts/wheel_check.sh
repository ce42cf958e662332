#!/usr/bin/env bash
# The package works outside its clone: build the wheel, install it (NOT editable) into a clean virtual
# environment under /tmp, and from a folder outside the clone run what a new user runs first.
# Dependencies: the project's .venv (same pins), or with WHEEL_CHECK_FULL=1 installed from the lock (see below).
# CI runs it after the test suite (.ci/run). Prints its own runtime at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
START=$(date +%s)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/efficientformer-wheel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
step() { echo "== wheel check ($(( $(date +%s) - START )) s): $*"; }

step "build the wheel"
# the project's setuptools builds it (torch's dependency, >= 77); without one, pip fetches the build backend itself
"$REPO/.venv/bin/pip" wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation -w "$WORK/dist" "$REPO" \
  || "$REPO/.venv/bin/pip" wheel --quiet --disable-pip-version-check --no-deps -w "$WORK/dist" "$REPO"
WHEEL=$(ls "$WORK"/dist/efficientformer-*.whl)

python3 -m venv "$WORK/venv"
if [ "${WHEEL_CHECK_FULL:-0}" = 1 ]; then
  step "install $(basename "$WHEEL")[search] and its dependencies (pinned by the lock) into a clean venv"
  "$WORK/venv/bin/pip" install --quiet --disable-pip-version-check "$WHEEL[search]" -c "$REPO/requirements/lock.txt"
else
  # The default, for CI's time: the wheel itself goes into the clean venv (not editable), while its third-party
  # dependencies, the same pinned versions, are read from the project's .venv through a one-line .pth (a plain
  # path: .venv's own .pth files, such as its editable hook to the clone, are not run). A full install downloads
  # about 5 GB (CUDA torch) and took 234-380 s here; WHEEL_CHECK_FULL=1 does it.
  step "install $(basename "$WHEEL") into a clean venv; dependencies from the project's .venv"
  "$WORK/venv/bin/pip" install --quiet --disable-pip-version-check --no-deps "$WHEEL"
  SITE=$("$WORK/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  "$REPO/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > "$SITE/project-deps.pth"
fi
"$WORK/venv/bin/python" -m pip check --disable-pip-version-check || true  # lists a missing dependency, if any

OUTSIDE="$WORK/outside"  # not the clone: nothing here but what the wheel installed
mkdir -p "$OUTSIDE"
cd "$OUTSIDE"
export PATH="$WORK/venv/bin:$PATH" EFFICIENTFORMER_CACHE="$WORK/cache" HF_HUB_OFFLINE=1 HF_HOME="$WORK/hf"
unset PYTHONPATH
python - "$WORK/venv" <<'PY'
import pathlib, sys
import efficientformer
where = pathlib.Path(efficientformer.__file__).resolve()
assert pathlib.Path(sys.argv[1]).resolve() in where.parents, f"imported from {where}, not from the installed wheel"
assert (where.parent / "recipes" / "efficientformer_l1_300e.yaml").is_file(), "the configs are not in the wheel"
print("imported from", where.parent)
PY

step "efficientformer --help / info"
efficientformer --help > /dev/null
efficientformer info efficientformerv2_s0 --img-size 64 > "$OUTSIDE/info.txt" && sed -n 1,3p "$OUTSIDE/info.txt"

step "train on the digits, one epoch, a shipped config by name (--config digits)"
efficientformer train --config digits epochs=1 output="$OUTSIDE/run" progress=false

step "predict with the trained checkpoint (CSV)"
IMAGE=$(find "$WORK/cache" -name '*.png' -print -quit)  # -quit: no broken pipe under pipefail
efficientformer predict "$IMAGE" --model efficientformerv2_s0 --checkpoint "$OUTSIDE/run/last.pth" --csv --topk 2 --no-progress

step "push --dry-run (the Hub repository folder of the run, no upload)"
efficientformer push "$OUTSIDE/run" me/efficientformerv2_s0-digits --dry-run "$OUTSIDE/hub"
python - "$OUTSIDE/hub" <<'PY'
import sys
import timm, torch
from efficientformer import create_model, load_checkpoint
folder = sys.argv[1]
theirs = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
ours = create_model("efficientformerv2_s0", num_classes=10, img_size=32)
load_checkpoint(ours, folder)
x = torch.randn(2, 3, 32, 32)
with torch.no_grad():
    assert torch.allclose(theirs(x), ours.eval()(x), atol=1e-5), "timm and efficientformer disagree"
print("timm loads the pushed folder with equal logits")
PY

# `search pipeline` is being added; run it where this build has it.
if efficientformer search pipeline --help > /dev/null 2>&1; then
  step "search pipeline --budget tiny"
  efficientformer search pipeline --budget tiny --output "$OUTSIDE/search"
else
  step "search pipeline: not in this build, skipped"
fi

step "done: the wheel works outside the clone in $(( $(date +%s) - START )) s"
