#!/bin/bash
# Evaluate a BiMLP checkpoint on ImageNet val with eval.py on CPU; the output is also logged.
#   bash scripts/run_eval_cpu.sh DATASET_PATH CHECKPOINT_PATH [BiMLP_S|BiMLP_M] [extra eval.py flags...]
# Environment: DEVICE_ID (default 0), EVAL_LOG (default: eval_cpu.log in the repo root), PYTHON.
exec bash "$(dirname "$0")/eval_launcher.sh" CPU "$@"
