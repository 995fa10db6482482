"""Launch scripts print the exact commands they would run (`--dry_run`), and `--dry_run` of
`jaxpt pretrain` compiles a sharded step and reports its memory."""

import os
import subprocess
import sys

import pytest

from conftest import REPO


def sh(*args, **env):
  e = dict(os.environ, **env)
  proc = subprocess.run(["bash", *args], cwd=REPO, env=e, capture_output=True, text=True,
                        timeout=60)
  assert proc.returncode == 0, proc.stderr
  return proc.stdout.strip().splitlines()


def test_local_multiprocess_dry_run():
  lines = sh("launch/local_multiprocess.sh", "--dry_run", "3", "--config=c.py", "--workdir=w",
             PORT="4567", DEVICES_PER_PROCESS="2")
  assert len(lines) == 3
  for i, line in enumerate(lines):
    assert "--xla_force_host_platform_device_count=2" in line
    assert line.endswith(f"--coordinator_address=127.0.0.1:4567 --num_processes=3 "
                         f"--process_id={i}")
    assert "jaxpt pretrain --config=c.py --workdir=w" in line


def test_gpu_slurm_and_tpu_dry_runs():
  (line,) = sh("launch/gpu_single_host.sh", "--dry_run", "--config=c.py", "--workdir=w")
  assert line.endswith("jaxpt pretrain --config=c.py --workdir=w")
  (line,) = sh("launch/slurm_gpu.sbatch", "--config=c.py", "--workdir=w", DRY_RUN="1")
  assert line.startswith("srun ") and "jaxpt pretrain --distributed --config=c.py" in line
  lines = sh("launch/tpu_pod.sh", "--dry_run", "--config=c.py", "--workdir=gs://b/w",
             TPU_NAME="pod", ZONE="z")
  assert len(lines) == 4
  assert "--worker=all" in lines[1] and "jax[tpu]" in lines[2]
  assert "gcloud compute tpus tpu-vm ssh pod --zone=z" in lines[3]
  assert "jaxpt pretrain --distributed --config=c.py --workdir=gs://b/w" in lines[3]


def test_tpu_pod_needs_its_name():
  proc = subprocess.run(["bash", "launch/tpu_pod.sh", "--dry_run"], cwd=REPO,
                        capture_output=True, text=True, timeout=60,
                        env={k: v for k, v in os.environ.items() if k != "TPU_NAME"})
  assert proc.returncode != 0 and "TPU_NAME" in proc.stderr


@pytest.mark.slow
def test_pretrain_dry_run_reports_memory_per_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  proc = subprocess.run(
      [sys.executable, "-m", "jaxpt", "pretrain", "--config=configs/bert_mini.py", "--dry_run",
       "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2",
       "--config.train.batch_size=16", "--config.model.max_position_embeddings=128"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  assert "mesh {'data': 2, 'fsdp': 2, 'tensor': 2}" in out
  assert "(11.2M)" in out  # bert_mini with a 30522 vocabulary
  # The layout works without XLA replicating activations to reshard them.
  assert "Involuntary full rematerialization" not in proc.stderr
  for key in ("arguments", "outputs", "temporaries", "peak estimate"):
    assert f"per device, {key}:" in out
