#!/usr/bin/env bash
# One machine, NPROC ranks (GPUs, or CPU processes when there is no GPU).
#   NPROC=2 launch_scripts/single_node.sh pretrain --config RUN.yaml --ds-config ds_configs/zero2.json
set -euo pipefail
source "$(dirname "$0")/env.sh"
NPROC="${NPROC:-2}"
MASTER_PORT="${MASTER_PORT:-29500}"
run "$RTUNE_LAUNCHER" --log_level "$RTUNE_LOG_LEVEL" --num_gpus "$NPROC" \
  --master_port "$MASTER_PORT" --module rtune_ds "$@"
