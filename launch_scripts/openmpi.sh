#!/usr/bin/env bash
# Several machines through OpenMPI's mpirun (DeepSpeed's openmpi launcher backend).
#   HOSTFILE=hosts launch_scripts/openmpi.sh pretrain --config RUN.yaml
# HOSTFILE lines: "<hostname> slots=<ranks on that host>"; mpirun must reach every host.
set -euo pipefail
source "$(dirname "$0")/env.sh"
: "${HOSTFILE:?set HOSTFILE}"
write_deepspeed_env
run "$RTUNE_LAUNCHER" --hostfile "$HOSTFILE" --launcher openmpi --module rtune_ds "$@"
