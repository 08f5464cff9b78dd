#!/bin/bash
# Shared by run_eval_{cpu,gpu,ascend}.sh: evaluate a checkpoint with eval.py on PLATFORM, logging the output.
#   bash scripts/eval_launcher.sh PLATFORM DATASET_PATH CHECKPOINT_PATH [BiMLP_S|BiMLP_M] [extra eval.py flags...]
# Environment: DEVICE_ID (default 0), EVAL_LOG (default: eval_<platform>.log in the repo root),
# PYTHON (default: the repo's .venv/bin/python if present, else python).
platform=$1
shift
platform_lc=$(echo "$platform" | tr '[:upper:]' '[:lower:]')
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: bash scripts/run_eval_${platform_lc}.sh DATASET_PATH CHECKPOINT_PATH [BiMLP_S|BiMLP_M] [extra eval.py flags...]" >&2
    echo "  DATASET_PATH: the ImageNet val folder with the 1000 class folders" >&2
    exit 2
fi
# Resolve the paths before changing to the repo root, so relative paths keep working.
DATASET_PATH=$(realpath -m "$1")
CHECKPOINT_PATH=$(realpath -m "$2")
shift 2
MODEL=BiMLP_S
if [ $# -gt 0 ] && [[ "$1" != -* ]]; then
    MODEL=$1
    shift
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
EVAL_LOG=$(realpath -m "${EVAL_LOG:-$ROOT/eval_${platform_lc}.log}")

cd "$ROOT"
export DEVICE_ID=${DEVICE_ID:-0}
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
"$PYTHON" eval.py --platform "$platform" --dataset_path "$DATASET_PATH" \
    --checkpoint_path "$CHECKPOINT_PATH" --model "$MODEL" "$@" 2>&1 | tee "$EVAL_LOG"
