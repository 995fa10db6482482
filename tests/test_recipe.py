"""The pretraining recipe across runs: a decay branched off a stable warmup-stable-decay run
continues it exactly, decays over its own steps, and leaves the stable run as it was."""

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
