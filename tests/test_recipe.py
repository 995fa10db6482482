"""The pretraining recipe across runs: a decay branched off a stable warmup-stable-decay run
continues it exactly, decays over its own steps, and leaves the stable run as it was; a
moving average of the parameters follows its recurrence and is what the workdir gives."""

import json
import os

import numpy as np
import pytest

from test_resilience import command, run, vocab  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow  # subprocess runs


def rows(workdir):
  return [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]


def snapshot(directory):
  return {str(p.relative_to(directory)): p.stat().st_mtime_ns
          for p in directory.rglob("*") if p.is_file()}


def test_a_decay_branches_off_a_stable_run_and_continues_it_exactly(prepared_dir, vocab,
                                                                    tmp_path):
  stable = tmp_path / "stable"
  wsd = ["--config.optim.schedule=wsd", "--config.optim.decay_fraction=0.1"]
  proc = run(command(prepared_dir, stable, vocab, *wsd, "--config.train.num_steps=30",
                     "--config.checkpoint.every_steps=10"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  before = snapshot(stable)

  # Only the decay, from the stable run's step 10: 6 steps down to 0.
  decay = tmp_path / "decay"
  proc = run(command(prepared_dir, decay, vocab, *wsd, f"--config.train.branch_from={stable}:10",
                     "--config.optim.decay_steps=6", "--config.train.num_steps=16",
                     "--config.checkpoint.every_steps=16"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"branched from {stable}/checkpoints/10" in proc.stdout
  branch, trunk = rows(decay), rows(stable)
  assert [r["step"] for r in branch] == list(range(11, 17))
  # Step 11 of the branch is step 11 of the stable run: the same state and the same batch.
  assert branch[0]["train/loss"] == trunk[10]["train/loss"]
  assert branch[0]["lr"] == trunk[10]["lr"] == pytest.approx(1e-3)
  # Then a linear decay over the branch's own 6 steps; the stable run stays at the peak.
  np.testing.assert_allclose([r["lr"] for r in branch], 1e-3 * (1 - np.arange(6) / 6),
                             rtol=1e-5)
  assert all(r["lr"] == pytest.approx(1e-3) for r in trunk[10:26])
  # Step 11's update ran at the peak in both; step 12's at 5/6 of it in the branch only.
  assert branch[1]["train/loss"] == trunk[11]["train/loss"]
  assert branch[2]["train/loss"] != trunk[12]["train/loss"]
  assert sorted(os.listdir(decay / "checkpoints")) == ["16"]
  assert snapshot(stable) == before  # the stable run is only read

  # A re-run resumes the branch from its own checkpoint; a missing step is one line.
  proc = run(command(prepared_dir, tmp_path / "other", vocab, *wsd,
                     f"--config.train.branch_from={stable}:7", "--config.train.num_steps=16"))
  assert proc.returncode == 2
  assert "no checkpoint at step 7" in proc.stderr and "[10, 20, 30]" in proc.stderr
  assert not (tmp_path / "other" / "checkpoints").exists() or not os.listdir(
      tmp_path / "other" / "checkpoints")

  # A damaged source step is one line naming it, and nothing is written.
  metadata = stable / "checkpoints" / "20" / "state" / "_METADATA"
  metadata.write_bytes(metadata.read_bytes()[:100])
  proc = run(command(prepared_dir, tmp_path / "damaged", vocab, *wsd,
                     f"--config.train.branch_from={stable}:20", "--config.train.num_steps=26"))
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert f"{stable}/checkpoints/20 is unreadable" in proc.stderr
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert not (tmp_path / "damaged" / "checkpoints").exists() or not os.listdir(
      tmp_path / "damaged" / "checkpoints")


def test_the_moving_average_follows_its_recurrence_and_is_what_the_workdir_gives(
    prepared_dir, vocab, tmp_path):
  """optim.ema_decay: each checkpoint's EMA is the previous one moved (1 - d) of the way to
  the new parameters, d = min(decay, (1 + step) / (10 + step)); commands loading the workdir
  get the EMA; switching it off on resume is refused in one line, before compiling."""
  import orbax.checkpoint as ocp

  from jaxpt import pretrained
  from jaxpt.models import params as params_lib
  from jaxpt.train import step as step_lib

  ema = np.asarray(step_lib.update_ema({"w": np.float32([1.0, 3.0])},
                                       {"w": np.float32([2.0, 1.0])}, 0.99, 30)["w"])
  np.testing.assert_allclose(ema, [1.0 + 9 / 40, 3.0 - 2 * 9 / 40], rtol=1e-6)  # d = 31/40
  kept = step_lib.update_ema({"w": np.float32([1.0])}, {"w": np.float32([2.0])}, 0.5, 100,
                             skipped=True)["w"]
  assert float(kept[0]) == 1.0

  workdir = tmp_path / "ema"
  proc = run(command(prepared_dir, workdir, vocab, "--config.optim.ema_decay=0.5",
                     "--config.train.num_steps=4", "--config.checkpoint.every_steps=1",
                     "--config.checkpoint.max_to_keep=5"))
  assert proc.returncode == 0, proc.stderr[-3000:]

  def state(step):
    tree = ocp.PyTreeCheckpointer().restore(str(workdir / "checkpoints" / str(step) / "state"))
    return params_lib.flatten(tree["params"]), params_lib.flatten(tree["ema"])

  (p3, e3), (p4, e4) = state(3), state(4)
  d = min(0.5, 4 / 13)  # the update from step 3 to step 4
  for name in p4:
    np.testing.assert_allclose(e4[name], e3[name] + (1 - d) * (p4[name] - e3[name]),
                               rtol=1e-5, atol=1e-7)
  assert any(not np.array_equal(e4[n], p4[n]) for n in p4)
  loaded = params_lib.flatten(pretrained.load(str(workdir)).params)
  assert all(np.array_equal(loaded[n], e4[n]) for n in e4)

  proc = run(command(prepared_dir, workdir, vocab, "--config.train.num_steps=6",
                     "--config.train.allow_config_change=optim.ema_decay"))
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "moving average" in proc.stderr and "optim.ema_decay=0" in proc.stderr, proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  assert max(int(s) for s in os.listdir(workdir / "checkpoints")) == 4

  # A decay branched off a run that was not warmup-stable-decay: refused, nothing written.
  proc = run(command(prepared_dir, tmp_path / "branch", vocab, "--config.optim.schedule=wsd",
                     "--config.optim.ema_decay=0.5", f"--config.train.branch_from={workdir}:2",
                     "--config.train.num_steps=6"))
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "optim.schedule='linear'; a decay branches off the stable phase of a wsd run" in \
      proc.stderr, proc.stderr
  assert not (tmp_path / "branch" / "checkpoints").exists() or not os.listdir(
      tmp_path / "branch" / "checkpoints")


@pytest.fixture(scope="module")
def long_dir(prepared_dir, tmp_path_factory):
  """The test corpus again at 64 tokens per row, with the 32-token data's tokenizer."""
  from conftest import write_corpus
  from jaxpt.data.prepare import PrepareOptions, prepare
  root = tmp_path_factory.mktemp("long")
  prepare([str(write_corpus(root / "text", seed=4))], str(root / "data"),
          PrepareOptions(tokenizer=str(prepared_dir / "tokenizer.json"), seq_length=64,
                         validation_fraction=0.2, progress=False))
  return root / "data"


def test_a_context_extension_phase_continues_the_run_and_a_kill_inside_it_resumes_exactly(
    prepared_dir, long_dir, vocab, tmp_path):
  """Two phases after a batch warm-up: 32-token rows at RoPE theta 10k, then from step 12
  64-token rows of other data at theta 40k. The phase boundary keeps parameters, optimizer state and the one
  schedule; the new data is read from its first example; a SIGKILL inside phase 1 resumes
  to the same losses bit for bit."""
  import random
  import signal

  from test_resilience import losses, start, wait_for_rows

  from jaxpt.train import checkpoint as ckpt_lib
  phased = ["--config.model.positions=rope", "--config.model.max_position_embeddings=64",
            "--config.train.num_steps=24", "--config.checkpoint.every_steps=4",
            # the batch warms up too: 4 sequences for 4 steps, then 8
            "--config.train.batch_warmup_start=4", "--config.train.batch_warmup_tokens=512",
            f"--config.train.phases=12: data.dir={long_dir} model.rope_theta=40000"]
  whole = tmp_path / "whole"
  proc = run(command(prepared_dir, whole, vocab, *phased))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"phase 1 from step 12: new data" in proc.stdout
  table = rows(whole)
  assert [r["train/phase"] for r in table] == [0] * 12 + [1] * 12
  assert [r["train/batch_size"] for r in table] == [4] * 4 + [8] * 20
  lr = [r["lr"] for r in table]  # one linear decay over the 24 steps, across the boundary
  np.testing.assert_allclose(np.diff(lr[5:]), np.diff(lr[5:])[0], rtol=1e-4)
  saved = ckpt_lib.Checkpointer(str(whole / "checkpoints"), max_to_keep=3, async_save=False)
  data, config = saved.restore_metadata(24)
  saved.close()
  assert data["phase"] == 1 and data["next_example"] == 12 * 8  # the new data from its start
  assert config["model"]["rope_theta"] == 40000 and config["data"]["dir"] == str(long_dir)

  killed = tmp_path / "killed"
  proc = start(command(prepared_dir, killed, vocab, *phased))
  wait_for_rows(killed, random.Random().randint(15, 21), proc)  # inside phase 1
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  proc = run(command(prepared_dir, killed, vocab, *phased))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert losses(killed) == losses(whole)

  # A phase that would change a parameter's shape is refused whole, before step 1.
  proc = run(command(prepared_dir, tmp_path / "bad", vocab, *phased[:-1],
                     "--config.train.phases=12: model.intermediate_size=128"))
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "phase 1 (from step 12) changes the shape" in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad" / "checkpoints"
                                                             ).exists()


def test_bad_phase_lists_are_one_line():
  import dataclasses

  from jaxpt import config as config_lib
  from jaxpt.config import ConfigError
  base = config_lib.Config()

  def phases(spec, steps=100):
    return config_lib.run_phases(dataclasses.replace(
        base, train=dataclasses.replace(base.train, phases=spec, num_steps=steps)))

  got = phases("50: data.mask_prob=0.3; 80: data.mask_prob=0.05 optim.learning_rate=1e-5")
  assert [(p.first_step, p.stop_step, p.cfg.data.mask_prob) for p in got] == [
      (0, 50, 0.15), (50, 80, 0.3), (80, 100, 0.05)]
  assert got[2].cfg.optim.learning_rate == 1e-5 and got[1].cfg.optim.learning_rate == 1e-4
  assert "data.mask_prob" in got[0].cfg.train.allow_config_change
  for spec, needle in (("80: data.mask_prob=0.3; 50: data.mask_prob=0.1", "must increase"),
                       ("100: data.mask_prob=0.3", "not before train.num_steps=100"),
                       ("50 data.mask_prob=0.3", "is not 'STEP: FIELD=VALUE"),
                       ("50: data.mask_prb=0.3", "did you mean data.mask_prob"),
                       ("50: data.mask_prob=3", "phase 1 (from step 50)"),
                       ("50: seed=3", "seed is the same for the whole run")):
    with pytest.raises(ConfigError, match="config.train.phases") as e:
      phases(spec)
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_the_recipe_comparison_scores_every_variant_at_one_masking_rate(prepared_dir, tmp_path):
  """benchmarks/recipe_compare.py: each variant trains, and is scored on the same held-out
  batches at 15% masking whatever rate it trained at (a 30%-masked run is scored at 15%)."""
  import subprocess
  import sys

  from conftest import FAST_COMPILE, REPO
  env = dict(os.environ, XLA_FLAGS=FAST_COMPILE, PYTHONUNBUFFERED="1")
  proc = subprocess.run(
      [sys.executable, "benchmarks/recipe_compare.py", f"--data={prepared_dir}",
       f"--runs={tmp_path}", "--steps=5", "--eval_batches=1",
       "--variant=plain=--config.train.batch_size=8 --config.model.max_position_embeddings=32"
       " --config.train.log_every_steps=1",
       "--variant=masked-30%=--config.train.batch_size=8 --config.data.mask_prob=0.3 "
       "--config.model.max_position_embeddings=32",
       # two stages of 2 and 3 steps, the second continuing the first (train.init_from)
       "--variant=staged=--config.train.batch_size=8 --config.model.max_position_embeddings=32"
       " --config.train.log_every_steps=1 >> --config.train.batch_size=8 --config.model.max_position_embeddings=32"
       " --config.train.log_every_steps=1"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads([l for l in proc.stdout.splitlines() if l.startswith("{")][-1])
  assert [r["name"] for r in out["results"]] == ["plain", "masked-30%", "staged"]
  assert out["eval_mask_prob"] == 0.15 and all(np.isfinite(r["eval_mlm_loss"])
                                               for r in out["results"])
  saved = [json.loads(l) for l in (tmp_path / "masked-30%" / "metrics.jsonl").read_text()
           .splitlines()]
  assert saved[-1]["train/masked_fraction"] > 0.2  # it trained at 30%, and is scored at 15%
  assert all(r["eval_masked_fraction"] < 0.2 for r in out["results"]), out["results"]
  # Stages split the steps and chain: stage 1 starts as `plain` does (the same first loss),
  # stage 2 from stage 1's weights (another first loss).
  plain, first, second = (
      [json.loads(l) for l in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
      for name in ("plain", "staged.stage1", "staged"))
  assert [r["step"] for r in first] == [1, 2] and [r["step"] for r in second] == [1, 2, 3]
  assert first[0]["train/loss"] == plain[0]["train/loss"]
  assert second[0]["train/loss"] != plain[0]["train/loss"]
