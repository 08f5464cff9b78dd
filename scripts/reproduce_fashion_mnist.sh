#!/usr/bin/env bash
# The README's Fashion-MNIST result, end to end: train the float twin and the binary BiMLP_T,
# keep their logs and settings in results/, install the binary checkpoint as eval.py's default,
# evaluate it and redraw the learning curves. Each run's wall-clock time is printed.
#   bash scripts/reproduce_fashion_mnist.sh [float|binary|all]      (default: all; ~1.5 h on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
what=${1:-all}
case "$what" in float|binary|all) ;; *) echo "usage: $(basename "$0") [float|binary|all]" >&2; exit 2;; esac

train() {  # train NAME CONFIG OUTPUT_DIR
    local name=$1 config=$2 out=$3 start
    rm -rf "$out"
    start=$(date +%s)
    echo "== $name: python train.py --config $config   ($(date -u '+%F %T') UTC)"
    "$PYTHON" train.py --config "$config"
    echo "== $name: wall-clock $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s, launch to finish"
    cp "$out/log.csv" "results/fashion_mnist_${name}_log.csv"
    cp "$out/config.yaml" "results/fashion_mnist_${name}_config.yaml"
}

mkdir -p results
if [ "$what" != binary ]; then
    train float configs/bimlp_t_fashion_mnist_float.yaml output/bimlp_t_fashion_mnist_float
    cp output/bimlp_t_fashion_mnist_float/best.ckpt checkpoints/BiMLP_T_fashion_mnist_float.ckpt
fi
if [ "$what" != float ]; then
    train binary configs/bimlp_t_fashion_mnist.yaml output/bimlp_t_fashion_mnist
    cp output/bimlp_t_fashion_mnist/best.ckpt checkpoints/BiMLP_T_fashion_mnist.ckpt
fi
"$PYTHON" eval.py
"$PYTHON" eval.py --checkpoint_path checkpoints/BiMLP_T_fashion_mnist_float.ckpt --binary false
"$PYTHON" scripts/plot_log.py results/fashion_mnist_binary_log.csv:binary \
    results/fashion_mnist_float_log.csv:float --output fig/fashion_mnist_curve.png
