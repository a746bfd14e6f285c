#!/usr/bin/env bash
# Start N JAX processes on this machine that train together, e.g. (2 processes x 4 CPU devices):
#   DEVICES_PER_PROCESS=4 launch/multiprocess_local.sh 2 configs/4dmot.py:tiny /tmp/4dmot_mp
# Needs: mtvjax installed; a free TCP port on 127.0.0.1 (PORT, default 12355). On CPU each
# process simulates DEVICES_PER_PROCESS devices. Logs go to WORKDIR/process_<i>.log. The script
# exits with the first non-zero status; when one process dies the others fail within
# MTVJAX_HEARTBEAT_TIMEOUT seconds (default 60) instead of hanging.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
require_args 3 "NUM_PROCESSES CONFIG[:VARIANT] WORKDIR [--config.key=value ...]" "$@"
num_processes=$1
config=$2
workdir=$3
shift 3
port=${PORT:-12355}
devices=${DEVICES_PER_PROCESS:-1}
mkdir -p "$workdir"
pids=()
for ((i = 0; i < num_processes; i++)); do
  MTVJAX_COORDINATOR="127.0.0.1:${port}" MTVJAX_NUM_PROCESSES="$num_processes" \
    MTVJAX_PROCESS_ID="$i" XLA_FLAGS="--xla_force_host_platform_device_count=${devices}" \
    mtvjax train --config "$config" --workdir "$workdir" "$@" >"$workdir/process_$i.log" 2>&1 &
  pids+=("$!")
done
status=0
for pid in "${pids[@]}"; do
  if ! wait "$pid"; then
    status=1
  fi
done
exit "$status"
