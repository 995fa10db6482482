#!/usr/bin/env bash
# N processes on this machine, each with its own fake CPU devices, joined by jax.distributed:
# the multi-host code paths (global mesh, per-process data, Orbax multi-host checkpoints)
# without any accelerator.
#
#   launch/local_multiprocess.sh [--dry_run] N [jaxpt pretrain flags...]
#   launch/local_multiprocess.sh 2 --config=shakespeare_tiny --workdir=runs/mp \
#       --config.mesh.data=2 --config.mesh.fsdp=4
#
# Env: DEVICES_PER_PROCESS (default 4), PORT (default: a free one), JAXPT (default: jaxpt on the PATH, else .venv/bin/jaxpt).
set -euo pipefail
dry_run=0
if [[ "${1:-}" == "--dry_run" ]]; then dry_run=1; shift; fi
if [[ $# -lt 1 || ! "$1" =~ ^[0-9]+$ ]]; then
  echo "usage: $0 [--dry_run] N [jaxpt pretrain flags...]" >&2
  exit 2
fi
n=$1; shift
devices=${DEVICES_PER_PROCESS:-4}
port=${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
source "$(dirname "$0")/find_jaxpt.sh"  # sets jaxpt (and here)

cmds=()
for ((i = 0; i < n; i++)); do
  cmds+=("env XLA_FLAGS=--xla_force_host_platform_device_count=$devices JAX_PLATFORMS=cpu $jaxpt pretrain $* --coordinator_address=127.0.0.1:$port --num_processes=$n --process_id=$i")
done
if ((dry_run)); then
  printf '%s\n' "${cmds[@]}"
  exit 0
fi
pids=()
for ((i = 0; i < n; i++)); do
  bash -c "exec ${cmds[$i]}" &
  pids+=($!)
done
# SIGTERM or Ctrl-C reaches every process: like a preempted pod, they agree on a step,
# checkpoint it and exit 0.
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM INT
status=0
for pid in "${pids[@]}"; do
  while :; do
    rc=0
    wait "$pid" || rc=$?
    kill -0 "$pid" 2>/dev/null || break  # still running: the wait was cut short by a signal
  done
  ((rc == 0)) || status=$rc
done
exit $status
