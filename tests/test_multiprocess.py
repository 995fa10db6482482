"""Real multi-process runs: `jax.distributed` on localhost, 2 processes x 4 CPU devices.

Each process is the real `jaxpt pretrain` command. Losses must equal one process with 8
devices; SIGTERM stops both at one step with a checkpoint; that checkpoint, written by 2
processes on mesh (2,2,2), restores into 1 process on mesh (1,8,1) and training continues
exactly as an uninterrupted run.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import FAST_COMPILE, REPO, start_steps

pytestmark = pytest.mark.slow  # subprocess runs and compiles: `make test` only

TIMEOUT = 240


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def env(devices: int) -> dict:
  e = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}"
  return e


def pretrain_args(data, workdir, vocab, steps, mesh):
  return [sys.executable, "-m", "jaxpt", "pretrain", "--config=configs/bert_tiny.py",
          f"--workdir={workdir}", "--noprogress", f"--config.data.dir={data}",
          f"--config.model.vocab_size={vocab}", "--config.model.max_position_embeddings=32",
          "--config.model.hidden_size=32", "--config.model.intermediate_size=64",
          "--config.train.batch_size=16", "--config.train.log_every_steps=1",
          # Evaluation and checkpoints fall on the same steps (the last included): best/ and
          # checkpoints/ save the same step at once, from every process.
          "--config.train.eval_every_steps=5", "--config.train.eval_batches=1",
          "--config.checkpoint.every_steps=5", f"--config.train.num_steps={steps}",
          "--config.optim.learning_rate=1e-3", "--config.optim.warmup_steps=0",
          "--config.optim.end_learning_rate_fraction=1.0",  # constant: runs of any length agree
          f"--config.mesh.data={mesh[0]}", f"--config.mesh.fsdp={mesh[1]}",
          f"--config.mesh.tensor={mesh[2]}"]


def run_processes(n, args, devices):
  """n == 1: the command itself; n > 1: through launch/local_multiprocess.sh, as a user would."""
  if n == 1:
    cmd, e = args, env(devices)
  else:
    cmd = ["bash", "launch/local_multiprocess.sh", str(n), *args[4:], "--distributed_timeout=30"]
    e = dict(env(devices), DEVICES_PER_PROCESS=str(devices), PORT=str(free_port()),
             JAXPT=f"{sys.executable} -m jaxpt")
  proc = subprocess.run(cmd, cwd=REPO, env=e, capture_output=True, text=True, timeout=TIMEOUT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def losses(workdir):
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


@pytest.fixture(scope="module")
def vocab(prepared_dir):
  return json.loads((prepared_dir / "manifest.json").read_text())["tokenizer"]["vocab_size"]


def test_two_processes_equal_one_stop_together_and_checkpoints_reshard(prepared_dir, vocab,
                                                                       tmp_path):
  # Two processes through the launch script, preempted: SIGTERM reaches both, they agree on
  # a step through JAX's preemption sync point, checkpoint it and exit 0.
  two = tmp_path / "two"
  args = pretrain_args(prepared_dir, two, vocab, 100000, (2, 2, 2))
  args = [a for a in args if "checkpoint.every_steps" not in a]
  args.append("--config.checkpoint.every_steps=100000")
  # Files, not pipes: an undrained pipe would block the processes' logging.
  out_path, err_path = tmp_path / "two.out", tmp_path / "two.err"
  with open(out_path, "w") as out_f, open(err_path, "w") as err_f:
    proc = subprocess.Popen(
        ["bash", "launch/local_multiprocess.sh", "2", *args[4:], "--distributed_timeout=30"],
        cwd=REPO, stdout=out_f, stderr=err_f, text=True,
        env=dict(env(4), DEVICES_PER_PROCESS="4", PORT=str(free_port()),
                 JAXPT=f"{sys.executable} -m jaxpt"))
    try:
      metrics = two / "metrics.jsonl"
      deadline = time.time() + TIMEOUT
      while not (metrics.exists() and metrics.read_text().count("\n") >= 5):
        assert proc.poll() is None and time.time() < deadline, err_path.read_text()[-3000:]
        time.sleep(0.1)
      proc.send_signal(signal.SIGTERM)
      sent = time.time()
      proc.wait(timeout=60)
    finally:
      proc.kill()
  out, err = out_path.read_text(), err_path.read_text()
  assert proc.returncode == 0, err[-3000:]
  assert time.time() - sent < 30
  assert out.count("starting at step 0") == 1, out  # only process 0 reports
  # Each process loads only its own half of every global batch of 16.
  assert "process 0 of 2 reads rows [0, 8) of each global batch of 16" in out, out
  assert "process 1 of 2 reads rows [8, 16) of each global batch of 16" in out, out
  assert err.count("Reached preemption sync point") >= 2, err[-3000:]
  stop = max(losses(two))
  assert os.listdir(two / "checkpoints") == [str(stop)] and 5 <= stop <= 58
  two_losses = losses(two)
  # One process on one mesh of 8 devices, as far as the comparisons below need.
  ref = tmp_path / "one"
  run_processes(1, pretrain_args(prepared_dir, ref, vocab, stop + 2, (1, 8, 1)), devices=8)
  ref_losses = losses(ref)
  np.testing.assert_allclose([two_losses[s] for s in range(1, stop + 1)],
                             [ref_losses[s] for s in range(1, stop + 1)], rtol=1e-5)

  # The 2-process checkpoint (mesh 2,2,2) resumes in 1 process on mesh (1,8,1).
  out = run_processes(1, pretrain_args(prepared_dir, two, vocab, stop + 2, (1, 8, 1)),
                      devices=8)
  assert start_steps(two)[-1] == stop
  resumed = losses(two)
  np.testing.assert_allclose([resumed[stop + 1], resumed[stop + 2]],
                             [ref_losses[stop + 1], ref_losses[stop + 2]], rtol=1e-5)


def test_a_dead_peer_ends_the_survivor_with_an_error(prepared_dir, vocab, tmp_path):
  args = pretrain_args(prepared_dir, tmp_path / "w", vocab, 100000, (2, 2, 2))
  port = free_port()
  procs = [subprocess.Popen(args + [f"--coordinator_address=127.0.0.1:{port}",
                                    "--num_processes=2", f"--process_id={i}",
                                    "--distributed_timeout=10"],
                            cwd=REPO, env=env(4), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  try:
    deadline = time.time() + TIMEOUT
    metrics = tmp_path / "w" / "metrics.jsonl"
    while not (metrics.exists() and metrics.read_text().count("\n") >= 3):
      assert time.time() < deadline and procs[0].poll() is None, procs[0].stderr.read()[-2000:]
      time.sleep(0.5)
    procs[1].kill()
    killed_at = time.time()
    _, err = procs[0].communicate(timeout=120)
    assert procs[0].returncode != 0
    assert time.time() - killed_at < 90
    assert "heartbeat" in err.lower() and "another task died" in err, err[-2000:]
  finally:
    for p in procs:
      p.kill()
