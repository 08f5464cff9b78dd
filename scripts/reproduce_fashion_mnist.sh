#!/usr/bin/env bash
# The Fashion-MNIST results of docs/fashion-mnist.md, end to end, for one variant: train its float twin and its
# binary net, keep their logs and settings in results/, pack both into checkpoints/ with their SHA-256
# recorded in src/pretrained.py (pack.py --ship; eval.py's defaults), evaluate them and redraw the
# learning curves. Prints each run's wall-clock time.
#   bash scripts/reproduce_fashion_mnist.sh [BiMLP_T14|BiMLP_T] [float|binary|all]
# Defaults: BiMLP_T14, all (~2 h on 2 cores; BiMLP_T: ~1.5 h).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
model=${1:-BiMLP_T14}
what=${2:-all}
usage="usage: $(basename "$0") [BiMLP_T14|BiMLP_T] [float|binary|all]"
case "$model" in BiMLP_T14|BiMLP_T) ;; *) echo "$usage" >&2; exit 2;; esac
case "$what" in float|binary|all) ;; *) echo "$usage" >&2; exit 2;; esac
stem=$(echo "$model" | tr '[:upper:]' '[:lower:]')_fashion_mnist   # bimlp_t14_fashion_mnist

train() {  # train KIND CONFIG OUTPUT_DIR
    local kind=$1 config=$2 out=$3 start
    rm -rf "$out"
    start=$(date +%s)
    echo "== $model $kind: python train.py --config $config   ($(date -u '+%F %T') UTC)"
    "$PYTHON" train.py --config "$config"
    echo "== $model $kind: wall-clock $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s, launch to finish"
    cp "$out/log.csv" "results/${model}_fashion_mnist_${kind}_log.csv"
    cp "$out/config.yaml" "results/${model}_fashion_mnist_${kind}_config.yaml"
    "$PYTHON" pack.py --checkpoint_path "$out/best.ckpt" --model "$model" --ship
}

mkdir -p results
if [ "$what" != binary ]; then
    train float "configs/${stem}_float.yaml" "output/${stem}_float"
fi
if [ "$what" != float ]; then
    train binary "configs/${stem}.yaml" "output/${stem}"
fi
"$PYTHON" eval.py --model "$model"
"$PYTHON" eval.py --model "$model" --checkpoint_path "checkpoints/${model}_fashion_mnist_float.packed" --binary false
"$PYTHON" scripts/plot_log.py "results/${model}_fashion_mnist_binary_log.csv:binary" \
    "results/${model}_fashion_mnist_float_log.csv:float" --title "$model on Fashion-MNIST" \
    --output "fig/${model}_fashion_mnist_curve.png"
