#!/usr/bin/env bash
# Shared by the run_{standalone,distribute}_train_{cpu,gpu,ascend}.sh launchers.
#   train_launcher.sh standalone PLATFORM CONFIG [train.py flags...]
#   train_launcher.sh distribute PLATFORM WORKERS CONFIG [train.py flags...]
# Distributed runs use MindSpore's msrun: WORKERS processes on this machine, data-parallel,
# each reading its own shard; rank 0 validates and writes checkpoints. Worker logs go to
# $LOG_DIR (default output/msrun_log); the scheduler listens on $MASTER_PORT (default 8118).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
kind=${1:-}; platform=${2:-}
usage() {
    echo "usage: $(basename "$0") CONFIG [train.py flags...]            (standalone)" >&2
    echo "       $(basename "$0") WORKERS CONFIG [train.py flags...]    (distribute)" >&2
    exit 2
}
if [ "$kind" = standalone ]; then
    [ $# -ge 3 ] || usage
    config=$3; shift 3
    [ -f "$config" ] || { echo "error: config not found: $config" >&2; exit 2; }
    exec "$PYTHON" train.py --config "$config" --platform "$platform" --device_id "${DEVICE_ID:-0}" "$@"
fi
[ $# -ge 4 ] || usage
workers=$3; config=$4; shift 4
[[ "$workers" =~ ^[1-9][0-9]*$ ]] || { echo "error: WORKERS must be a positive number, got '$workers'" >&2; exit 2; }
[ -f "$config" ] || { echo "error: config not found: $config" >&2; exit 2; }
msrun=msrun
if [[ "$PYTHON" == */* ]]; then
    # msrun starts each worker with the `python` found on PATH: make it this environment's.
    bin=$(cd "$(dirname "$PYTHON")" && pwd)
    export PATH="$bin:$PATH"
    [ -x "$bin/msrun" ] && msrun="$bin/msrun"
fi
exec "$msrun" --worker_num="$workers" --local_worker_num="$workers" --master_port="${MASTER_PORT:-8118}" \
    --log_dir="${LOG_DIR:-output/msrun_log}" --join=True \
    train.py --config "$config" --platform "$platform" --distribute true "$@"
