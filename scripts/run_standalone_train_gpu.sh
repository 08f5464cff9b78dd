#!/usr/bin/env bash
# Train on one GPU device: run_standalone_train_gpu.sh CONFIG [train.py flags...]
exec bash "$(dirname "$0")/train_launcher.sh" standalone GPU "$@"
