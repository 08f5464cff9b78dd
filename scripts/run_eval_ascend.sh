#!/bin/bash
# Evaluate a BiMLP checkpoint on ImageNet val with eval.py on Ascend; the output is also logged.
#   bash scripts/run_eval_ascend.sh DATASET_PATH CHECKPOINT_PATH [BiMLP_S|BiMLP_M] [extra eval.py flags...]
# Environment: DEVICE_ID (default 0), EVAL_LOG (default: eval_ascend.log in the repo root), PYTHON.
exec bash "$(dirname "$0")/eval_launcher.sh" Ascend "$@"
