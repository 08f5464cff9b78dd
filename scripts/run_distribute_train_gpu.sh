#!/usr/bin/env bash
# Data-parallel training with msrun: run_distribute_train_gpu.sh WORKERS CONFIG [train.py flags...]
exec bash "$(dirname "$0")/train_launcher.sh" distribute GPU "$@"
