#!/usr/bin/env bash
# One launch per node, no ssh between nodes: run this on every node with its own NODE_RANK.
#   HOSTFILE=hosts NODE_RANK=0 MASTER_ADDR=10.0.0.1 launch_scripts/no_ssh_node.sh pretrain --config RUN.yaml
# HOSTFILE lists every node ("<name> slots=<ranks>") in the same order on all nodes.
set -euo pipefail
source "$(dirname "$0")/env.sh"
: "${HOSTFILE:?set HOSTFILE}"
: "${NODE_RANK:?set NODE_RANK (0 .. nodes-1)}"
: "${MASTER_ADDR:?set MASTER_ADDR (node 0)}"
MASTER_PORT="${MASTER_PORT:-29500}"
check_hostfile "$HOSTFILE"
run "$RTUNE_LAUNCHER" --log_level "$RTUNE_LOG_LEVEL" --hostfile "$HOSTFILE" --no_ssh \
  --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
  --module rtune_ds "$@"
