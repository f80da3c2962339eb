#!/usr/bin/env bash
# Create a virtual environment (if absent) and install clip_trl with everything it needs, offline-friendly.
# Quiet apart from one progress line per step: pip's own output is kept in a log and printed only when a
# step fails or reports an ERROR (e.g. a dependency conflict), which then stops the install.
# - VENV=path picks the environment's folder (default .venv in the repository).
# - torch==2.13.0 is the small CPU build that lies on these machines' disk (a bare `torch` would pull a
#   multi-GB CUDA build); on a GPU machine, install your own torch first and this pin is skipped.
# - OpenAI's CLIP BPE vocabulary (MIT) ships inside clip_trl (clip_trl/assets/), so nothing else is needed
#   for the offline tokenizer.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
LOG="$(mktemp -t clip_trl-install.XXXXXX.log)"
export PIP_DISABLE_PIP_VERSION_CHECK=1

quietly() {  # run a pip command; show its output only if it fails or prints an ERROR line
  if ! "$@" >"$LOG" 2>&1; then
    cat "$LOG"; echo "install.sh: failed: $*" >&2; exit 1
  fi
  if grep -q "ERROR" "$LOG"; then
    grep "ERROR" "$LOG"; echo "install.sh: pip reported an error: $*" >&2; exit 1
  fi
}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[1/4] creating $VENV"
  "$PYTHON" -m venv "$VENV"
else
  echo "[1/4] using $VENV"
fi
. "$VENV/bin/activate"
echo "[2/4] upgrading pip"
quietly python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  echo "[3/4] installing torch 2.13.0 (CPU build)"
  quietly python -m pip install -q torch==2.13.0
else
  echo "[3/4] torch $(python -c 'import torch; print(torch.__version__)') is already installed"
fi
echo "[4/4] installing clip_trl with its dev and docs extras"
quietly python -m pip install -q -e ".[dev,docs]"
quietly python -m pip check
rm -f "$LOG"
python -c 'import clip_trl, torch, transformers; print(f"done: clip_trl from {clip_trl.__path__[0]}, torch {torch.__version__}, transformers {transformers.__version__}")'
