#!/usr/bin/env bash
# Train on one CPU device: run_standalone_train_cpu.sh CONFIG [train.py flags...]
exec bash "$(dirname "$0")/train_launcher.sh" standalone CPU "$@"
