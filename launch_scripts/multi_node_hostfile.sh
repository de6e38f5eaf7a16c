#!/usr/bin/env bash
# Several machines from one command, over pdsh (passwordless ssh to every host in HOSTFILE).
#   HOSTFILE=hosts MASTER_ADDR=node1 launch_scripts/multi_node_hostfile.sh pretrain --config RUN.yaml
# HOSTFILE lines: "<hostname> slots=<ranks on that host>".
set -euo pipefail
source "$(dirname "$0")/env.sh"
: "${HOSTFILE:?set HOSTFILE}"
: "${MASTER_ADDR:?set MASTER_ADDR (the first host)}"
MASTER_PORT="${MASTER_PORT:-29500}"
check_hostfile "$HOSTFILE"
write_deepspeed_env
run "$RTUNE_LAUNCHER" --log_level "$RTUNE_LOG_LEVEL" --hostfile "$HOSTFILE" --launcher pdsh \
  --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" --module rtune_ds "$@"
