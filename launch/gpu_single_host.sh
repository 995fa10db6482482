#!/usr/bin/env bash
# One host, all its GPUs, one process: JAX sees every local GPU and the mesh spans them.
#
#   launch/gpu_single_host.sh [--dry_run] [jaxpt pretrain flags...]
#   launch/gpu_single_host.sh --config=bert_base --workdir=runs/base \
#       --config.data.dir=data/mine --config.model.dtype=bfloat16 --config.mesh.fsdp=8
#
# Install once: pip install -e . 'jax[cuda13]'   (or the CUDA build matching your driver).
# Env: CUDA_VISIBLE_DEVICES selects GPUs; JAXPT (default: jaxpt on the PATH, else .venv/bin/jaxpt).
set -euo pipefail
dry_run=0
if [[ "${1:-}" == "--dry_run" ]]; then dry_run=1; shift; fi
source "$(dirname "$0")/find_jaxpt.sh"  # sets jaxpt (and here)
# Let XLA use most of each GPU's memory up front, and overlap collectives with compute.
cmd="XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9} $jaxpt pretrain $*"
if ((dry_run)); then
  echo "$cmd"
  exit 0
fi
exec bash -c "$cmd"
