#!/usr/bin/env bash
# The GPU suite: one command, about 5 minutes on one H100/H200 (budget: 8).
#
#   bash benchmarks/gpu_suite.sh              # on a CUDA machine, from the repository root
#   bash benchmarks/gpu_suite.sh --dry-run    # anywhere: the same steps on CPU at toy sizes (checks the suite)
#   bash benchmarks/gpu_suite.sh --out DIR    # where the logs and figures go (default: gpu-suite-<date>)
#
# (a) the test suite's `cuda`-marked tests (bf16 autocast, fused AdamW, torch.compile with inductor, JPEG shards
#     with draft decoding feeding the GPU);
# (b) a ViT-B/32-shaped random CLIP trained in bf16 at batch 256: images/s and MFU against the card's dense
#     bf16 peak and the measured GEMM peak;  (c) the same for the RL trainer, exact and GRPO advantages;
# (d) 16 DataLoader workers decoding 640x480 JPEG shards with the library's image pipeline ("fast" and
#     "draft"): images/s produced against what the training step consumes;  (e) LiT with the frozen-tower
#     embedding cache against the same recipe uncached and in a plain Trainer (samples/s of the second epoch);
# (f) JPEG decoding per core and through WORKERS loader workers, draft's SIMD backend beside Pillow's and the processor.
# Environment: PYTHON (default: .venv/bin/python if present, else python), WORKERS (default 16).
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run=0
out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry_run=1 ;;
        --out) out="$2"; shift ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "gpu_suite.sh: unknown argument '$1' (use --dry-run, --out DIR)" >&2; exit 2 ;;
    esac
    shift
done

if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
out="${out:-gpu-suite-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
start=$SECONDS

if [ "$dry_run" = 1 ]; then
    export CLIP_TRL_CUDA_TESTS_ON_CPU=1 OMP_NUM_THREADS=1 CUDA_VISIBLE_DEVICES=""
    tests=(tests/trainer/test_cuda.py)
    train_args=(--dry-run)
    cache_args=(--dry-run)
    jpeg_args=(--count 4 --repetitions 1 --sizes 640x480 --workers 0)
else
    if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_suite.sh: no CUDA device visible to $PYTHON; use --dry-run to check the suite on CPU." >&2
        exit 1
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.csv"
    tests=(tests -m cuda)   # every cuda-marked test of the suite
    train_args=(--workers "${WORKERS:-16}")
    cache_args=(--rows 512 --batch 64 --repeats 3)
    jpeg_args=(--workers "${WORKERS:-16}")
fi

# A failing part does not stop the others; the exit status says whether all passed.
status=0
echo "== (a) cuda-marked tests =="
"$PYTHON" -m pytest "${tests[@]}" -q -p no:cacheprovider -rs 2>&1 | tee "$out/tests.log" || status=1
echo "== (b) contrastive, (c) RL exact + GRPO, (d) JPEG-shard loader =="
"$PYTHON" benchmarks/gpu_train.py "${train_args[@]}" --json "$out/figures.json" 2>&1 \
    | grep -v -e "^{'train_runtime'" | tee "$out/train.log" || status=1
echo "== (e) frozen-tower embedding cache: LiT, cached vs uncached vs a plain Trainer (benchmarks/frozen_tower_cache.py) =="
"$PYTHON" benchmarks/frozen_tower_cache.py "${cache_args[@]}" 2>&1 | grep -v -e "^{'" | tee "$out/cache.log" || status=1
echo "== (f) JPEG decoding per core and through DataLoader workers: processor, fast, draft (Pillow), draft (SIMD: simplejpeg + OpenCV when installed) (benchmarks/preprocess.py) =="
"$PYTHON" benchmarks/preprocess.py "${jpeg_args[@]}" 2>&1 | tee "$out/jpeg.log" || status=1
echo "== done in $((SECONDS - start)) s; logs and figures in $out/; $([ $status = 0 ] && echo 'all passed' || echo 'FAILURES above') =="
exit $status
