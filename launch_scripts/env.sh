# Sourced by every launch script: the environment CPU (gloo) and GPU (NCCL) runs need.
# DeepSpeed picks its accelerator itself (CUDA when it sees one, else CPU with gloo).
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  # CPU ranks: one thread each unless told otherwise, so N ranks do not fight over N cores
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
fi
export PYTHONUNBUFFERED=1
RTUNE_LAUNCHER="${RTUNE_LAUNCHER:-deepspeed}"
# The launcher's INFO lines are off unless RTUNE_LOG_LEVEL=info (or debug); the ranks read it too.
RTUNE_LOG_LEVEL="${RTUNE_LOG_LEVEL:-warning}"
export RTUNE_LOG_LEVEL="${RTUNE_LOG_LEVEL,,}"

# Refuse a malformed hostfile naming its file and line (the launcher's parser ends in a traceback).
check_hostfile() {
  "${RTUNE_PYTHON:-python3}" -m rtune_ds.launch --check-hostfile "$1"
}

# Variables other nodes need: the launcher copies .deepspeed_env to every node it starts.
write_deepspeed_env() {
  : > .deepspeed_env
  for var in OMP_NUM_THREADS PYTHONPATH RTUNE_CACHE HF_HOME NCCL_SOCKET_IFNAME GLOO_SOCKET_IFNAME \
             NCCL_DEBUG PATH RTUNE_LOG_LEVEL; do
    if [ -n "${!var:-}" ]; then echo "$var=${!var}" >> .deepspeed_env; fi
  done
}

run() {  # print the command, then run it
  echo "+ $*" >&2
  "$@"
}
