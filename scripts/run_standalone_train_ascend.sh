#!/usr/bin/env bash
# Train on one Ascend device: run_standalone_train_ascend.sh CONFIG [train.py flags...]
exec bash "$(dirname "$0")/train_launcher.sh" standalone Ascend "$@"
