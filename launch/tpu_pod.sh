#!/usr/bin/env bash
# A TPU VM pod slice: copy this checkout to every worker, install jax[tpu], run the same
# `jaxpt pretrain --distributed` everywhere (JAX detects the pod's layout). Data and
# checkpoints belong on gs:// so that every worker sees them.
#
#   TPU_NAME=my-v5e-64 ZONE=us-west4-a launch/tpu_pod.sh [--dry_run] \
#       --config=bert_large --workdir=gs://bucket/runs/large \
#       --config.data.dir=gs://bucket/data/wiki --config.model.dtype=bfloat16
#
# Env: TPU_NAME, ZONE (required), PROJECT (optional), REMOTE_DIR (default ~/jaxpt).
set -euo pipefail
dry_run=0
if [[ "${1:-}" == "--dry_run" ]]; then dry_run=1; shift; fi
: "${TPU_NAME:?set TPU_NAME to the TPU VM name}"
: "${ZONE:?set ZONE to the TPU zone}"
remote=${REMOTE_DIR:-jaxpt}
here=$(cd "$(dirname "$0")/.." && pwd)
project=${PROJECT:+--project=$PROJECT}
ssh_base="gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE $project --worker=all"
cmds=(
  "tar -C $here --exclude=.venv --exclude=workdirs --exclude=.git -czf /tmp/jaxpt-src.tgz ."
  "gcloud compute tpus tpu-vm scp /tmp/jaxpt-src.tgz $TPU_NAME:/tmp/jaxpt-src.tgz --zone=$ZONE $project --worker=all"
  "$ssh_base --command='mkdir -p $remote && tar -C $remote -xzf /tmp/jaxpt-src.tgz && pip install -q -e $remote \"jax[tpu]\"'"
  "$ssh_base --command='cd $remote && python3 -m jaxpt pretrain --distributed $*'"
)
if ((dry_run)); then
  printf '%s\n' "${cmds[@]}"
  exit 0
fi
for c in "${cmds[@]}"; do
  echo "+ $c"
  bash -c "$c"
done
