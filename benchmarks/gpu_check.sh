#!/usr/bin/env bash
# The GPU check of the throughput issue, for when a GPU machine is lent: installs nothing,
# runs the bf16 sweep within about 8 minutes and prints JSON lines and Markdown tables.
#   bash benchmarks/gpu_check.sh            (from the repository root, jax[cuda] present)
# Targets (benchmarks, not tests): bert_base seq 128 >= 50% MFU, bert_large seq 512 >= 55%.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
python -c 'import jax; print(jax.__version__, jax.devices())'
run() { timeout "$1" python benchmarks/throughput.py "${@:2}" --steps=20 --precision=bf16; }
run 150 --preset=bert_base --seq_len=128 --batch_size=256
run 150 --preset=bert_base --seq_len=128 --batch_size=512
run 200 --preset=configs/bert_large.py --seq_len=512 --batch_size=64
run 200 --preset=configs/bert_large.py --seq_len=512 --batch_size=128 --remat=save_dots
