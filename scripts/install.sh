#!/usr/bin/env bash
# Create .venv (if absent) and install clip_trl with everything it needs, offline-friendly:
# - torch==2.13.0 is the small CPU build that lies on these machines' disk (a bare `torch` would pull a
#   multi-GB CUDA build); on a GPU machine, install your own torch first and this pin is skipped.
# - open-clip-torch is installed without its dependencies only for the OpenAI CLIP BPE vocabulary file it
#   ships (MIT); clip_trl never imports open_clip (it would need torchvision).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q torch==2.13.0
fi
python -m pip install -q --no-deps open-clip-torch==3.3.0
python -m pip install -q -e ".[dev,docs]"
