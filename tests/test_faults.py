"""Runs that cannot be fooled: one writer per workdir, missing data, a best checkpoint ahead of
the latest, an unreadable latest checkpoint, and a changed config on resume."""

import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

from jaxpt.config import DataConfig
from jaxpt.data import loader
from jaxpt.train import checkpoint as ckpt_lib
from conftest import start_steps
from test_resilience import command, losses, run, start, vocab  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow  # subprocess runs and compiles: `make test` only


# A constant learning rate: runs of any length agree step for step.
CONSTANT = ("--config.optim.warmup_steps=0", "--config.optim.schedule=constant")


def steps_on_disk(directory):
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def one_line(proc) -> str:
  err = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(err) == 1, proc.stderr[-3000:]
  return err[0]


@pytest.fixture(scope="module")
def uninterrupted(prepared_dir, vocab, tmp_path_factory):
  """8 steps, checkpoints every 2, evaluation every 2: the reference losses."""
  workdir = tmp_path_factory.mktemp("whole") / "w"
  proc = run(command(prepared_dir, workdir, vocab, "--config.train.num_steps=8",
                     "--config.checkpoint.every_steps=2", "--config.train.eval_every_steps=2",
                     *CONSTANT))
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


def _first_half(prepared_dir, vocab, workdir):
  proc = run(command(prepared_dir, workdir, vocab, "--config.train.num_steps=4",
                     "--config.checkpoint.every_steps=2", "--config.train.eval_every_steps=2",
                     "--config.checkpoint.max_to_keep=5", *CONSTANT))
  assert proc.returncode == 0, proc.stderr[-3000:]


def _second_half(prepared_dir, vocab, workdir):
  return run(command(prepared_dir, workdir, vocab, "--config.train.num_steps=8",
                     "--config.checkpoint.every_steps=2", "--config.train.eval_every_steps=2",
                     "--config.checkpoint.max_to_keep=5", *CONSTANT))


def test_a_second_run_on_a_workdir_refuses_and_the_first_is_untouched(prepared_dir, vocab,
                                                                      tmp_path):
  workdir = tmp_path / "w"
  # The first run goes on until told to stop, so it surely holds the lock meanwhile.
  args = ["--config.train.num_steps=1000000", "--config.checkpoint.every_steps=10"]
  first = start(command(prepared_dir, workdir, vocab, *args))
  deadline = time.time() + 180
  while not (workdir / "metrics.jsonl").exists():  # the first holds the lock by now
    assert first.poll() is None and time.time() < deadline, first.stderr.read()[-3000:]
    time.sleep(0.05)
  second = run(command(prepared_dir, workdir, vocab, *args))
  message = one_line(second)
  assert f"{workdir} is in use by pid {first.pid} on " in message, message
  assert first.poll() is None  # still training
  first.send_signal(signal.SIGTERM)
  _, err = first.communicate(timeout=180)
  assert first.returncode == 0, err[-3000:]
  steps = [json.loads(l)["step"] for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert steps == list(range(1, steps[-1] + 1))  # every row once: the second wrote nothing
  assert steps_on_disk(workdir / "checkpoints")[-1] == steps[-1]


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
  (tmp_path / ".lock").write_text("999999999 some-host\n")  # no process holds it
  lock = ckpt_lib.WorkdirLock(str(tmp_path))
  note = lock.acquire()
  assert note and "999999999" in note
  with pytest.raises(ckpt_lib.LockError, match=f"in use by pid {os.getpid()}"):
    ckpt_lib.WorkdirLock(str(tmp_path)).acquire()
  lock.release()
  assert ckpt_lib.WorkdirLock(str(tmp_path)).acquire() is None


def test_a_missing_chunk_stops_the_run_naming_it(prepared_dir, vocab, tmp_path):
  data = tmp_path / "data"
  shutil.copytree(prepared_dir, data)
  chunks = sorted((data / "train" / "input_ids" / "c").rglob("*"))
  os.remove([c for c in chunks if c.is_file()][0])
  workdir = tmp_path / "w"
  proc = run(command(data, workdir, vocab, "--config.train.num_steps=6",
                     "--config.checkpoint.every_steps=1"))
  message = one_line(proc)
  assert "train/input_ids" in message and "cannot read" in message, message
  assert not (workdir / "checkpoints").exists() or not steps_on_disk(workdir / "checkpoints")


def test_a_manifest_that_disagrees_with_the_arrays_is_refused(prepared_dir, vocab, tmp_path):
  data = tmp_path / "data"
  shutil.copytree(prepared_dir, data)
  manifest = json.loads((data / "manifest.json").read_text())
  manifest["splits"]["train"]["examples"] += 1
  (data / "manifest.json").write_text(json.dumps(manifest))
  message = one_line(run(command(data, tmp_path / "w", vocab, "--config.train.num_steps=2")))
  assert "manifest.json counts" in message and "train/" in message, message


def test_a_best_checkpoint_ahead_of_the_latest_is_dropped(prepared_dir, vocab, uninterrupted,
                                                          tmp_path):
  # As if killed after best/4 committed and before checkpoints/4 did.
  workdir = tmp_path / "w"
  _first_half(prepared_dir, vocab, workdir)
  if 4 not in steps_on_disk(workdir / "best"):
    shutil.copytree(workdir / "checkpoints" / "4", workdir / "best" / "4")
  shutil.rmtree(workdir / "checkpoints" / "4")
  proc = _second_half(prepared_dir, vocab, workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert start_steps(workdir)[-1] == 2 and "past the restored step 2" in proc.stdout
  assert losses(workdir) == losses(uninterrupted)


@pytest.mark.parametrize("damaged", ["chunk", "metadata"])
def test_an_unreadable_latest_checkpoint_falls_back_to_the_previous(prepared_dir, vocab,
                                                                    uninterrupted, tmp_path,
                                                                    damaged):
  workdir = tmp_path / "w"
  _first_half(prepared_dir, vocab, workdir)
  state = workdir / "checkpoints" / "4" / "state"
  if damaged == "chunk":  # the largest array data file (how Orbax splits them varies)
    victim = max((p for p in state.glob("ocdbt.process_*/d/*") if p.is_file()),
                 key=lambda p: p.stat().st_size)
  else:  # the state's tree metadata, read for the shapes before any array
    victim = state / "_METADATA"
  assert victim.stat().st_size > 1000, victim
  victim.write_bytes(victim.read_bytes()[:100])  # truncated
  proc = _second_half(prepared_dir, vocab, workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "checkpoints/4 is unreadable" in proc.stdout, proc.stdout
  assert start_steps(workdir)[-1] == 2
  assert losses(workdir) == losses(uninterrupted)
  assert (workdir / "unreadable").is_dir()  # set aside, not deleted


def test_no_readable_checkpoint_stops_without_touching_anything(prepared_dir, vocab, tmp_path):
  workdir = tmp_path / "w"
  _first_half(prepared_dir, vocab, workdir)
  for step in (2, 4):
    (workdir / "checkpoints" / str(step) / "data" / "metadata").write_text("{not json")
  before = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*"))
  message = one_line(_second_half(prepared_dir, vocab, workdir))
  assert "no readable checkpoint" in message and "nothing was changed" in message, message
  assert sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*")) == before


@pytest.mark.parametrize("change,needle", [
    ("--config.train.batch_size=4", "train.batch_size: 8 -> 4"),
    ("--config.seed=3", "seed: checkpoint 0, config 3"),
    ("--config.data.mask_prob=0.3", "data.mask_prob: 0.15 -> 0.3"),
])
def test_a_changed_data_stream_is_refused_on_resume(prepared_dir, vocab, tmp_path, change,
                                                    needle):
  workdir = tmp_path / "w"
  _first_half(prepared_dir, vocab, workdir)
  message = one_line(run(command(prepared_dir, workdir, vocab, "--config.train.num_steps=6",
                                 change)))
  assert needle in message, message


def test_safe_changes_are_listed_and_an_allowed_batch_size_keeps_the_stream(prepared_dir, vocab,
                                                                            tmp_path):
  workdir = tmp_path / "w"
  _first_half(prepared_dir, vocab, workdir)
  proc = run(command(prepared_dir, workdir, vocab, "--config.train.num_steps=6",
                     "--config.train.batch_size=4", "--config.optim.learning_rate=5e-4",
                     "--config.train.allow_config_change=train.batch_size"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "config changed since" in proc.stdout and "train.batch_size: 8 -> 4" in proc.stdout
  assert "optim.learning_rate: 0.001 -> 0.0005" in proc.stdout


class Recording:
  """A split reader that remembers which examples each batch read."""

  def __init__(self, reader):
    self.reader, self.reads = reader, []

  def __len__(self):
    return len(self.reader)

  def read(self, indices):
    self.reads.append(np.asarray(indices).copy())
    return self.reader.read(indices)


def test_a_changed_batch_size_still_sees_each_example_once_an_epoch(prepared_dir):
  data = loader.PreparedData.open(str(prepared_dir))
  spec = data.masking_spec(DataConfig())
  n = data.num_examples("train")

  def examples(batch_size, steps, start_step=0, first_example=None):
    reader = Recording(data.reader("train"))
    it = loader.batches(reader, spec, batch_size=batch_size, seed=5, start_step=start_step,
                        first_example=first_example, read_threads=1, prefetch=1)
    for _ in range(steps):
      next(it)
    return list(np.concatenate(reader.reads[:steps]))

  first = examples(6, 3)  # 18 examples at batch 6, then the rest of the epoch at batch 4
  rest = examples(4, (n - 18) // 4, start_step=3, first_example=18)
  seen = first + rest
  assert len(seen) == len(set(seen)) >= n - 3  # no example twice, none skipped
  assert seen == examples(1, len(seen))  # the same stream as any other batching


def test_resumed_schedule_is_continuous_and_ends_at_the_new_last_step():
  import optax
  from jaxpt.train.loop import resumed_schedule
  base = optax.linear_schedule(1.0, 0.0, 100)
  longer = resumed_schedule(base, [[0, 100, 100], [40, 100, 200]])
  assert float(longer(40)) == pytest.approx(float(base(40)))
  assert float(longer(39)) == pytest.approx(float(base(39)))
  assert float(longer(200)) == pytest.approx(0.0, abs=1e-6)
  assert float(longer(120)) == pytest.approx(float(base(70)))  # halfway through the rest
  again = resumed_schedule(base, [[0, 100, 100], [40, 100, 200], [120, 200, 140]])
  assert float(again(120)) == pytest.approx(float(longer(120)))
  assert float(again(140)) == pytest.approx(0.0, abs=1e-6)


@pytest.fixture
def small_disk(tmp_path):
  """A 1.5 MB tmpfs (the tests run as root, as CI does): room for two tiny checkpoints."""
  mount = tmp_path / "disk"
  mount.mkdir()
  subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(mount)], check=True)
  yield mount
  subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_stops_in_one_line_and_keeps_the_last_checkpoint(prepared_dir, vocab,
                                                                    small_disk, tmp_path):
  workdir = small_disk / "w"
  proc = run(command(prepared_dir, workdir, vocab, "--config.train.num_steps=40",
                     "--config.checkpoint.every_steps=1", "--config.checkpoint.max_to_keep=100",
                     *CONSTANT))
  # One line, and no traceback of Orbax's abandoned writers (tensorstore's callbacks into
  # their closed event loops) around it.
  assert proc.returncode == 2, proc.stderr[:3000] + "\n...\n" + proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr, proc.stderr[:3000]
  reports = [l for l in proc.stderr.splitlines() if l.startswith("jaxpt pretrain: error: ")]
  assert len(reports) == 1, proc.stderr[-3000:]
  message = reports[0]
  assert "No space left on device" in message and str(workdir / "checkpoints") in message
  saved = steps_on_disk(workdir / "checkpoints")
  assert saved and f"last complete checkpoint: {workdir / 'checkpoints'}/{saved[-1]}" in message
  # Nothing lost: on a disk with room, the run resumes from that checkpoint.
  moved = tmp_path / "w"
  shutil.copytree(workdir, moved)
  proc = run(command(prepared_dir, moved, vocab, f"--config.train.num_steps={saved[-1] + 2}",
                     "--config.checkpoint.every_steps=1", "--config.checkpoint.max_to_keep=100",
                     *CONSTANT))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert start_steps(moved)[-1] == saved[-1]
  # The failed save's temporary directory is gone (removed on exit or, when Orbax's writer
  # thread outlives that cleanup, at this start).
  assert not [p for p in (moved / "checkpoints").iterdir() if "tmp" in p.name]


def test_a_read_only_workdir_is_one_line(prepared_dir, vocab, small_disk):
  workdir = small_disk / "w"
  args = ("--config.checkpoint.every_steps=1", *CONSTANT)
  assert run(command(prepared_dir, workdir, vocab, "--config.train.num_steps=1",
                     *args)).returncode == 0
  subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
  message = one_line(run(command(prepared_dir, workdir, vocab, "--config.train.num_steps=3",
                                 *args)))
  assert "Read-only file system" in message and str(workdir) in message, message
  assert steps_on_disk(workdir / "checkpoints") == [1]
