#!/usr/bin/env bash
# Shared by the run_{standalone,distribute}_train_{cpu,gpu,ascend}.sh launchers.
#   train_launcher.sh standalone PLATFORM CONFIG [train.py flags...]
#   train_launcher.sh distribute PLATFORM WORKERS CONFIG [train.py flags...]
# Distributed runs are data-parallel msrun jobs of WORKERS processes in all, each reading its own
# shard; global rank 0 validates and writes checkpoints. The cluster shape comes from the
# environment, defaults in brackets (one machine with all WORKERS):
#   LOCAL_WORKERS [WORKERS]  workers on this node     NODE_RANK [0]        this node, 0..nodes-1
#   MASTER_ADDR [127.0.0.1]  node rank 0's address    MASTER_PORT [8118]   its scheduler's port
#   CLUSTER_TIMEOUT [600]    seconds to wait for every node to join before failing
#   LOG_DIR [output/msrun_log]  this node's msrun logs
# Every node runs the same command with its own NODE_RANK (docs/distributed.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
kind=${1:-}; platform=${2:-}
usage() {
    echo "usage: $(basename "$0") CONFIG [train.py flags...]            (standalone)" >&2
    echo "       $(basename "$0") WORKERS CONFIG [train.py flags...]    (distribute)" >&2
    exit 2
}
fail() { echo "error: $*" >&2; exit 2; }
if [ "$kind" = standalone ]; then
    [ $# -ge 3 ] || usage
    config=$3; shift 3
    [ -f "$config" ] || fail "config not found: $config"
    exec "$PYTHON" train.py --config "$config" --platform "$platform" --device_id "${DEVICE_ID:-0}" "$@"
fi
[ $# -ge 4 ] || usage
workers=$3; config=$4; shift 4
whole() { [[ "$2" =~ ^[0-9]+$ ]] || fail "$1 must be a whole number, got '$2'"; }
whole WORKERS "$workers"
[ -f "$config" ] || fail "config not found: $config"
local_workers=${LOCAL_WORKERS:-$workers}; node_rank=${NODE_RANK:-0}
master_addr=${MASTER_ADDR:-127.0.0.1}; master_port=${MASTER_PORT:-8118}; cluster_timeout=${CLUSTER_TIMEOUT:-600}
whole LOCAL_WORKERS "$local_workers"; whole NODE_RANK "$node_rank"
whole MASTER_PORT "$master_port"; whole CLUSTER_TIMEOUT "$cluster_timeout"
# 10#: a leading zero is decimal, not octal.
workers=$((10#$workers)); local_workers=$((10#$local_workers)); node_rank=$((10#$node_rank))
master_port=$((10#$master_port)); cluster_timeout=$((10#$cluster_timeout))
[ "$workers" -ge 1 ] || fail "WORKERS must be at least 1"
[ "$local_workers" -ge 1 ] && [ "$local_workers" -le "$workers" ] ||
    fail "LOCAL_WORKERS must be 1..WORKERS ($workers), got $local_workers"
# msrun numbers ranks node_rank * LOCAL_WORKERS + local index: every node runs LOCAL_WORKERS workers.
[ $((workers % local_workers)) -eq 0 ] ||
    fail "WORKERS ($workers) must be a multiple of LOCAL_WORKERS ($local_workers), the workers of each node"
nodes=$((workers / local_workers))
[ "$node_rank" -lt "$nodes" ] || fail "NODE_RANK must be 0..$((nodes - 1)) for $nodes node(s), got $node_rank"
[ "$master_port" -ge 1024 ] && [ "$master_port" -le 65535 ] || fail "MASTER_PORT must be 1024..65535, got $master_port"
[ "$cluster_timeout" -ge 1 ] || fail "CLUSTER_TIMEOUT must be at least 1 second"
[[ "$master_addr" =~ ^[][A-Za-z0-9.:-]+$ ]] || fail "MASTER_ADDR must be a host name or IP address, got '$master_addr'"
if [[ "$PYTHON" == */* ]]; then
    # msrun starts each worker with the `python` found on PATH: make it this environment's.
    PATH="$(cd "$(dirname "$PYTHON")" && pwd):$PATH"
    export PATH
fi
command=("$PYTHON" scripts/msrun_node.py --worker_num="$workers" --local_worker_num="$local_workers"
         --node_rank="$node_rank" --master_addr="$master_addr" --master_port="$master_port"
         --cluster_time_out="$cluster_timeout" --log_dir="${LOG_DIR:-output/msrun_log}" --join=True
         train.py --config "$config" --platform "$platform" --distribute true "$@")
printf -v shown '%q ' "${command[@]}"
echo "node $node_rank of $nodes: $shown"
exec "${command[@]}"
