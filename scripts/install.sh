#!/usr/bin/env bash
# Create a virtual environment (if absent) and install clip_trl with everything it needs, offline-friendly.
# Quiet apart from one progress line per step: pip's own output is kept in a log and printed only when a
# step fails or reports an ERROR (e.g. a dependency conflict), which then stops the install.
# - VENV=path picks the environment's folder (default .venv in the repository).
# - torch==2.13.0 is the small CPU build that lies on these machines' disk (a bare `torch` would pull a
#   multi-GB CUDA build); on a GPU machine, install your own torch first and this pin is skipped.
# - OpenAI's CLIP BPE vocabulary (MIT) ships inside clip_trl (clip_trl/offline/assets/), so nothing else is needed
#   for the offline tokenizer.
# - Debian's Chromium, for the test that opens the RL rollout page in a real headless browser: installed when
#   apt-get can run as root or through passwordless sudo (CI); elsewhere that one test is skipped, and the script
#   says so.
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
  echo "[1/5] creating $VENV"
  "$PYTHON" -m venv "$VENV"
else
  echo "[1/5] using $VENV"
fi
. "$VENV/bin/activate"
echo "[2/5] upgrading pip"
quietly python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  echo "[3/5] installing torch 2.13.0 (CPU build)"
  quietly python -m pip install -q torch==2.13.0
else
  echo "[3/5] torch $(python -c 'import torch; print(torch.__version__)') is already installed"
fi
echo "[4/5] installing clip_trl with its dev and docs extras"
quietly python -m pip install -q -e ".[dev,docs]"
quietly python -m pip check
if command -v chromium >/dev/null 2>&1; then
  echo "[5/5] chromium is already installed"
elif command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; then
  echo "[5/5] installing chromium (Debian package, for the rollout page's browser test)"
  AS_ROOT=""
  [ "$(id -u)" = 0 ] || AS_ROOT="sudo -n"
  export DEBIAN_FRONTEND=noninteractive
  # A fresh machine may have no package lists yet: update once if the first try cannot find the package.
  if ! $AS_ROOT apt-get install -y -q chromium >"$LOG" 2>&1; then
    if ! { $AS_ROOT apt-get update -q && $AS_ROOT apt-get install -y -q chromium; } >"$LOG" 2>&1; then
      cat "$LOG"; echo "install.sh: failed: apt-get install chromium" >&2; exit 1
    fi
  fi
else
  echo "[5/5] skipped chromium (needs apt-get as root or sudo): the rollout page's browser test will be skipped"
fi
rm -f "$LOG"
python -c 'import clip_trl, torch, transformers; print(f"done: clip_trl from {clip_trl.__path__[0]}, torch {torch.__version__}, transformers {transformers.__version__}")'
