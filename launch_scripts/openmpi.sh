#!/usr/bin/env bash
# Several machines through OpenMPI's mpirun (DeepSpeed's openmpi launcher backend).
#   HOSTFILE=hosts launch_scripts/openmpi.sh pretrain --config RUN.yaml
# HOSTFILE lines: "<hostname> slots=<ranks on that host>"; mpirun must reach every host.
set -euo pipefail
source "$(dirname "$0")/env.sh"
: "${HOSTFILE:?set HOSTFILE}"
check_hostfile "$HOSTFILE"
write_deepspeed_env
run "$RTUNE_LAUNCHER" --log_level "$RTUNE_LOG_LEVEL" --hostfile "$HOSTFILE" --launcher openmpi \
  --module rtune_ds "$@"
