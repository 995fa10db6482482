#!/usr/bin/env bash
# Downloads, here (a machine that reaches PyPI), the wheels jaxpt needs that the GPU machine's
# image lacks, for its Python 3.12 / manylinux x86_64, into .whl/ (git-ignored), so that the
# GPU check can install them there with no registry:
#   bash benchmarks/gpu_wheels.sh && ls .whl
# The image has jax 0.11.2 (CUDA 13), flax, optax, orbax-checkpoint, tensorstore, tokenizers,
# transformers, torch, numpy, scikit-learn, matplotlib, tensorboard, pytest, etils,
# cloudpickle, protobuf, psutil, pyyaml, scipy, pandas, pyarrow, xxhash, fsspec,
# huggingface-hub, opt-einsum (../shared/JAX-NOTES.md, the device library's KINDS.md); it
# lacks the packages below and the dependencies of theirs it does not hold (versions: the
# ones this project's CI resolves).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(
  grain==0.2.18 array-record==0.8.6 portpicker==1.6.0  # the loader
  ml-collections==1.1.0
  qwix==0.1.8                                           # jaxpt compress
  datasketch==2.0.0                                     # jaxpt prepare
  zstandard==0.25.0
  tensorboardX==2.6.5
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
)
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo /.whl/ >> .git/info/exclude; }
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
ls -1 .whl
du -sh .whl
