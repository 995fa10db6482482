"""Training that survives: SIGKILL and resume exactly, SIGTERM, interrupted saves, NaN guard,
mismatched checkpoints, early stopping, every optimiser and schedule."""

import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import FAST_COMPILE, REPO, start_steps
from jaxpt import config as config_lib
from jaxpt import optim, sharding
from jaxpt.tasks import pretraining
from test_sharding import batches, tiny_config

pytestmark = pytest.mark.slow  # subprocess runs and compiles: `make test` only


@pytest.fixture(scope="module")
def vocab(prepared_dir):
  return json.loads((prepared_dir / "manifest.json").read_text())["tokenizer"]["vocab_size"]


def command(data, workdir, vocab, *extra):
  return [sys.executable, "-m", "jaxpt", "pretrain", "--config=configs/bert_tiny.py",
          f"--workdir={workdir}", "--noprogress", f"--config.data.dir={data}",
          f"--config.model.vocab_size={vocab}", "--config.model.max_position_embeddings=32",
          "--config.model.hidden_size=32", "--config.model.intermediate_size=64",
          "--config.train.batch_size=8", "--config.train.log_every_steps=1",
          "--config.train.eval_every_steps=0", "--config.optim.warmup_steps=5",
          "--config.optim.learning_rate=1e-3", *extra]


# One CPU device: these runs test the loop, not sharding, and 8 fake devices slow tiny steps.
ONE_DEVICE = dict(os.environ, PYTHONUNBUFFERED="1", XLA_FLAGS=FAST_COMPILE)


def run(cmd, timeout=240):
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                        env=ONE_DEVICE)


def start(cmd):
  return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=ONE_DEVICE)


def wait_for_rows(workdir, n, proc, timeout=180):
  path = workdir / "metrics.jsonl"
  deadline = time.time() + timeout
  while not (path.exists() and path.read_text().count("\n") >= n):
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    assert time.time() < deadline, "the run never logged enough steps"
    time.sleep(0.02)


def losses(workdir):
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


@pytest.fixture(scope="module")
def trained(prepared_dir, vocab, tmp_path_factory):
  """A run of 4 steps with checkpoints at 2 and 4; copy it before changing it."""
  workdir = tmp_path_factory.mktemp("trained") / "w"
  proc = run(command(prepared_dir, workdir, vocab, "--config.train.num_steps=4",
                     "--config.checkpoint.every_steps=2"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


def test_sigkill_at_a_random_step_then_resume_equals_uninterrupted(prepared_dir, vocab,
                                                                    tmp_path):
  steps = ["--config.train.num_steps=60", "--config.checkpoint.every_steps=10"]
  whole = tmp_path / "whole"
  proc = run(command(prepared_dir, whole, vocab, *steps))
  assert proc.returncode == 0, proc.stderr[-3000:]
  killed = tmp_path / "killed"
  proc = start(command(prepared_dir, killed, vocab, *steps))
  kill_after = random.Random().randint(12, 50)
  wait_for_rows(killed, kill_after, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  # Only committed checkpoints count; an async save cut short leaves a temporary directory.
  committed = [int(d) for d in os.listdir(killed / "checkpoints") if d.isdigit()]
  proc = run(command(prepared_dir, killed, vocab, *steps))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert start_steps(killed)[-1] == (max(committed) if committed else 0), (kill_after,
                                                                          committed)
  expected, got = losses(whole), losses(killed)
  assert sorted(got) == list(range(1, 61))
  # Bit-identical on CPU: same data, same dropout keys, same state.
  assert got == expected, (kill_after, [s for s in expected if got[s] != expected[s]][:5])


def test_sigterm_checkpoints_the_current_step_and_exits_zero(prepared_dir, vocab, tmp_path):
  """A run whose steps take a while: SIGTERM saves a step at most two past the one in
  progress (the host runs at most `max_steps_in_flight` = 2 ahead) and exits 0 within a bound
  derived from this machine: three step times plus what an uninterrupted run of the same
  program takes from its last step to its exit (the final save; measured on the resumed run
  that follows), doubled for noise."""
  slow = ["--config.model.hidden_size=256", "--config.model.intermediate_size=1024",
          "--config.train.batch_size=64", "--config.checkpoint.every_steps=100000"]
  workdir = tmp_path / "w"
  proc = start(command(prepared_dir, workdir, vocab, *slow, "--config.train.num_steps=100000"))
  wait_for_rows(workdir, 6, proc)
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  step_time = float(np.median([64 * 32 / r["perf/tokens_per_sec"] for r in rows[2:]
                               if "perf/tokens_per_sec" in r]))
  at_signal = max(losses(workdir))  # the last finished step; the next one is in progress
  proc.send_signal(signal.SIGTERM)
  sent = time.time()
  out, err = proc.communicate(timeout=120)
  elapsed = time.time() - sent
  assert proc.returncode == 0, err[-3000:]
  assert "SIGTERM" in out
  saved = sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
  logged = max(losses(workdir))
  assert saved == [logged]  # the step it was on, not a periodic one
  assert at_signal <= logged <= at_signal + 1 + 2, (at_signal, logged)

  # The resumed run to two steps further, timed from its last step to its exit.
  proc = start(command(prepared_dir, workdir, vocab, *slow,
                       f"--config.train.num_steps={logged + 2}"))
  wait_for_rows(workdir, logged + 2, proc)
  last_row = time.time()
  _, err = proc.communicate(timeout=120)
  ending = time.time() - last_row
  assert proc.returncode == 0, err[-3000:]
  assert start_steps(workdir)[-1] == logged
  bound = 2 * (3 * step_time + ending)
  assert elapsed < bound, (elapsed, step_time, ending)


def test_an_interrupted_save_is_never_restored(trained, prepared_dir, vocab, tmp_path):
  workdir = tmp_path / "w"
  shutil.copytree(trained, workdir)
  # What a process killed while writing step 6 leaves: Orbax's temporary directory, half full.
  ckpts = workdir / "checkpoints"
  partial = ckpts / "6.orbax-checkpoint-tmp-1764400000000"
  shutil.copytree(ckpts / "4", partial)
  for f in sorted(partial.rglob("*"))[::2]:
    if f.is_file():
      f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
  proc = run(command(prepared_dir, workdir, vocab, "--config.train.num_steps=5",
                     "--config.checkpoint.every_steps=2"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert start_steps(workdir)[-1] == 4


def test_nonfinite_loss_aborts_with_its_step_and_saves_nothing_bad(trained, prepared_dir, vocab,
                                                                   tmp_path):
  workdir = tmp_path / "w"
  shutil.copytree(trained, workdir)
  # Continue with an absurd learning rate: the loss blows up.
  proc = run(command(prepared_dir, workdir, vocab, "--config.train.num_steps=200",
                     "--config.checkpoint.every_steps=2", "--config.optim.learning_rate=1e12",
                     "--config.optim.warmup_steps=0"))
  assert proc.returncode == 2
  err = proc.stderr.strip().splitlines()
  assert len(err) == 1 and "is not finite" in err[0], proc.stderr[-2000:]
  bad_step = int(err[0].split("step ")[1].split(":")[0])
  saved = sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
  assert saved and max(saved) < bad_step
  # The last checkpoint on disk is finite.
  from jaxpt.train import checkpoint as ckpt_lib
  cfg = config_lib.with_model(config_lib.load("bert_tiny"),
                              vocab_size=vocab, max_position_embeddings=32, hidden_size=32,
                              intermediate_size=64)
  mesh = sharding.make_mesh(cfg.mesh)
  program = pretraining.build_program(cfg, mesh)
  ck = ckpt_lib.Checkpointer(str(workdir / "checkpoints"), max_to_keep=3)
  state, _, _ = ck.restore(max(saved), program.abstract_state)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))


def test_skip_mode_leaves_parameters_unchanged_and_counts():
  cfg = config_lib.OptimConfig(warmup_steps=0)
  tx = optim.make_optimizer(cfg, optim.learning_rate_schedule(cfg, 10), skip_nonfinite=True)
  params = {"w": jnp.ones((2, 2)), "b": jnp.zeros(2)}
  opt_state = tx.init(params)
  bad = {"w": jnp.full((2, 2), jnp.nan), "b": jnp.zeros(2)}
  for expected in (1, 2):
    updates, opt_state = tx.update(bad, opt_state, params)
    params = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(params["w"], np.ones((2, 2)))
    counts = optim.nonfinite_counts(opt_state)
    assert int(counts["train/nonfinite_in_a_row"]) == expected
  good = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
  updates, opt_state = tx.update(good, opt_state, params)
  assert int(optim.nonfinite_counts(opt_state)["train/nonfinite_in_a_row"]) == 0
  assert int(optim.nonfinite_counts(opt_state)["train/nonfinite_total"]) == 2
  assert not np.array_equal(optax.apply_updates(params, updates)["w"], params["w"])


@pytest.mark.parametrize("change,path", [
    ("--config.model.hidden_size=64",
     "params.encoder.embeddings.position.embedding: checkpoint (32, 32), model (32, 64)"),
    ("--config.model.num_layers=3", "params.encoder.layers.2"),
    ("--config.model.max_position_embeddings=64", "params.encoder.embeddings.position.embedding"),
])
def test_restoring_into_a_different_model_names_the_parameter(trained, prepared_dir, vocab,
                                                              change, path):
  proc = run(command(prepared_dir, trained, vocab, "--config.train.num_steps=6", change))
  assert proc.returncode == 2
  err = proc.stderr.strip()
  assert len(err.splitlines()) == 1 and path in err, err
  assert change.split("=")[0].removeprefix("--config.") in err


def test_restoring_with_another_optimizer_is_a_clear_error(trained, prepared_dir, vocab):
  proc = run(command(prepared_dir, trained, vocab, "--config.train.num_steps=6",
                     "--config.optim.name=sgd"))
  assert proc.returncode == 2
  err = proc.stderr.strip()
  assert len(err.splitlines()) == 1 and "optim.name changed" in err and "opt_state" in err, err


def test_early_stopping_stops_where_patience_predicts(prepared_dir, vocab, tmp_path):
  # A learning rate of ~0 keeps eval/loss flat: the first evaluation stays the best, and
  # with eval every 2 steps and patience 2 the run stops after step 2 * (1 + 2) = 6.
  workdir = tmp_path / "w"
  proc = run(command(prepared_dir, workdir, vocab, "--config.train.num_steps=100",
                     "--config.optim.learning_rate=1e-12", "--config.train.eval_every_steps=2",
                     "--config.train.early_stopping_patience=2",
                     "--config.train.early_stopping_min_delta=1e-3",
                     "--config.checkpoint.every_steps=100"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "early stopping" in proc.stdout
  assert max(losses(workdir)) == 6
  assert sorted(os.listdir(workdir / "checkpoints")) == ["6"]
  assert sorted(d for d in os.listdir(workdir / "best") if d.isdigit()) == ["2"]


def _trains(optim_cfg):
  cfg = tiny_config()
  cfg = dataclasses.replace(cfg, optim=optim_cfg,
                            train=dataclasses.replace(cfg.train, num_steps=8))
  cfg = config_lib.with_model(cfg, hidden_dropout=0.0, attention_dropout=0.0)
  mesh = sharding.make_mesh(config_lib.MeshConfig(1, 1, 1), devices=jax.devices()[:1])
  program = pretraining.build_program(cfg, mesh)
  batch = batches(cfg, steps=1)[0]
  with jax.set_mesh(mesh):
    state = program.init_state()
    out = []
    for _ in range(8):
      state, m = program.train_step(state, batch)
      out.append(float(m["train/loss"]))
  return out


@pytest.mark.parametrize("name,lr", [("adamw", 3e-3), ("stable_adamw", 3e-3), ("lamb", 3e-2),
                                     ("adafactor", 3e-2), ("sgd", 0.3), ("rmsprop", 1e-3)])
def test_every_optimizer_lowers_the_loss(name, lr):
  out = _trains(config_lib.OptimConfig(name=name, learning_rate=lr, warmup_steps=1))
  assert out[-1] < out[0] - 0.1, out


@pytest.mark.parametrize("schedule", ["cosine", "polynomial", "constant", "wsd", "inverse_sqrt"])
def test_every_schedule_lowers_the_loss(schedule):
  out = _trains(config_lib.OptimConfig(schedule=schedule, learning_rate=3e-3, warmup_steps=2,
                                       power=2.0))
  assert out[-1] < out[0] - 0.1, out


def test_schedule_shapes():
  cfg = config_lib.OptimConfig(learning_rate=1.0, warmup_steps=10,
                               end_learning_rate_fraction=0.1)
  for name in ("linear", "cosine", "polynomial"):
    f = optim.learning_rate_schedule(dataclasses.replace(cfg, schedule=name, power=2.0), 110)
    assert float(f(0)) == 0.0 and abs(float(f(5)) - 0.5) < 1e-6 and float(f(10)) == 1.0
    assert abs(float(f(110)) - 0.1) < 1e-6
    assert float(f(60)) < 1.0
  f = optim.learning_rate_schedule(dataclasses.replace(cfg, schedule="constant"), 110)
  assert float(f(60)) == 1.0 == float(f(110))


def test_wsd_and_inverse_sqrt_shapes():
  cfg = config_lib.OptimConfig(learning_rate=1.0, warmup_steps=10, schedule="wsd",
                               decay_fraction=0.2, end_learning_rate_fraction=0.0)
  f = optim.learning_rate_schedule(cfg, 110)  # warm-up 10, stable 80, decay 20
  assert float(f(5)) == 0.5 and float(f(10)) == 1.0 and float(f(90)) == 1.0
  assert abs(float(f(100)) - 0.5) < 1e-6 and float(f(110)) == 0.0
  g = optim.learning_rate_schedule(dataclasses.replace(cfg, decay_shape="1-sqrt"), 110)
  assert float(g(90)) == 1.0 and abs(float(g(95)) - 0.5) < 1e-6  # 1 - sqrt(1/4)
  assert float(g(110)) == 0.0
  h = optim.learning_rate_schedule(dataclasses.replace(cfg, schedule="inverse_sqrt"), 110)
  assert float(h(10)) == 1.0 and abs(float(h(40)) - 0.5) < 1e-6  # sqrt(10 / 40)


def test_stable_adamw_clips_the_update_per_tensor_by_hand():
  """One step from zero moments: m_hat = g, v_hat = g^2, so the Adam update is g / (|g| + eps)
  and RMS(g^2 / v_hat) = 1: no clipping. A second step with a gradient 10x the first: v_hat
  lags, the ratio's RMS exceeds 1 and the update is divided by it (numpy, by hand)."""
  b1, b2, eps, lr = 0.9, 0.99, 1e-8, 0.1
  tx = optim.stable_adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=0.0, mask=optim.decay_mask)
  p = {"w": jnp.zeros((2, 3))}
  g1 = np.array([[0.1, -0.2, 0.3], [0.05, 0.4, -0.1]], np.float32)
  g2 = 10 * g1[::-1].copy()
  state = tx.init(p)
  u1, state = tx.update({"w": jnp.asarray(g1)}, state, p)
  np.testing.assert_allclose(np.asarray(u1["w"]), -lr * g1 / (np.abs(g1) + eps), rtol=1e-5)
  u2, state = tx.update({"w": jnp.asarray(g2)}, state, p)
  m = (1 - b1) * (b1 * g1 + g2)  # EMA after two steps, then bias-corrected
  v = (1 - b2) * (b2 * g1 ** 2 + g2 ** 2)
  m_hat, v_hat = m / (1 - b1 ** 2), v / (1 - b2 ** 2)
  adam = m_hat / (np.sqrt(v_hat) + eps)
  rms = np.sqrt(np.mean(g2 ** 2 / v_hat))
  assert rms > 1.2  # the clipping is active in this step
  np.testing.assert_allclose(np.asarray(u2["w"]), -lr * adam / rms, rtol=1e-5)
