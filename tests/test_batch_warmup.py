"""Batch-size warm-up (`train.batch_warmup_start`, `train.batch_warmup_tokens`): the sizes
and their steps, every example once per epoch across the sizes, each process's rows, and a
run that warms up, stops inside the warm-up and resumes bit for bit."""

import json

import numpy as np
import pytest

from jaxpt import cli
from jaxpt import config as config_lib
from jaxpt.config import ConfigError
from jaxpt.data import loader


def test_sizes_double_from_the_start_and_share_the_warmup_tokens():
  # 3 sizes below 256 share 3 * 5 * 128 * 64 tokens: 5 steps of 64 rows x 128 tokens, ...
  phases = loader.batch_phases(256, 32, 3 * 5 * 128 * 64, 64)
  assert phases == ((0, 32), (20, 64), (30, 128), (35, 256))
  assert [loader.size_at(phases, s) for s in (0, 19, 20, 29, 30, 34, 35, 10**6)] == [
      32, 32, 64, 64, 128, 128, 256, 256]
  assert loader.stream_rows(phases, 0, 35) == 20 * 32 + 10 * 64 + 5 * 128
  assert loader.stream_rows(phases, 19, 36) == 32 + 10 * 64 + 5 * 128 + 256
  assert loader.stream_rows(phases, 40, 40) == 0
  assert loader.batch_phases(256) == ((0, 256),)
  assert loader.batch_phases(256, 96, 10**6, 128)[:2] == ((0, 96), (41, 192))  # 96, 192, 256


class Indexed:
  """A split reader whose example i is the row [i, i, i, i]: a batch names its examples."""

  def __init__(self, n):
    self.n = n

  def __len__(self):
    return self.n

  def read(self, indices):
    return {"input_ids": np.asarray(indices)[:, None].repeat(4, 1),
            "lengths": np.full(len(indices), 4)}


def examples(steps, **kwargs):
  it = loader.batches([Indexed(kwargs.pop("n"))], None, batch_size=16, seed=3,
                      read_threads=1, **kwargs)
  return [next(it)["input_ids"][:, 0].tolist() for _ in range(steps)]


@pytest.mark.parametrize("processes", [1, 2])
def test_every_example_once_per_epoch_across_the_sizes(processes):
  phases = ((0, 4), (3, 8), (5, 16))
  epoch = 3 * 4 + 2 * 8 + 5 * 16  # the first 10 steps
  seen = []
  for p in range(processes):  # process p reads its block of each batch
    batches = examples(10, n=epoch, phases=phases,
                       rows_of=lambda size: (p * size // processes, (p + 1) * size // processes))
    assert [len(b) for b in batches] == [4 // processes] * 3 + [8 // processes] * 2 + [
        16 // processes] * 5
    seen += sum(batches, [])
  assert sorted(seen) == list(range(epoch))  # one epoch: each example exactly once

  # Resumed at step 4 (inside the 8s): the same batches as the uninterrupted stream's.
  assert examples(6, n=epoch, phases=phases, start_step=4) == examples(10, n=epoch,
                                                                      phases=phases)[4:]


def test_bad_warmups_are_one_line():
  def check(**train):
    cfg = config_lib.Config()
    import dataclasses
    config_lib.validate(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train)))

  for train, needle in (({"batch_warmup_start": 64}, "both be positive"),
                        ({"batch_warmup_start": 512, "batch_warmup_tokens": 10},
                         "must be below train.batch_size=256"),
                        ({"batch_warmup_start": 30, "batch_warmup_tokens": 10,
                          "microbatches": 4}, "divisible by train.microbatches=4")):
    with pytest.raises(ConfigError, match="config.train.batch_warmup_start") as e:
      check(**train)
    assert needle in str(e.value)


@pytest.mark.slow
def test_a_warming_up_run_resumes_inside_the_warmup_bit_for_bit(prepared_dir, tmp_path,
                                                                capsys):
  vocab = json.loads((prepared_dir / "manifest.json").read_text())["tokenizer"]["vocab_size"]
  common = ["--config=configs/bert_tiny.py", "--noprogress", f"--config.data.dir={prepared_dir}",
            f"--config.model.vocab_size={vocab}", "--config.model.max_position_embeddings=32",
            "--config.model.hidden_size=32", "--config.model.intermediate_size=64",
            "--config.train.batch_size=64", "--config.train.log_every_steps=1",
            "--config.train.eval_every_steps=0", "--config.optim.warmup_steps=2",
            "--config.optim.learning_rate=1e-3", "--config.optim.schedule=constant",
            "--config.checkpoint.every_steps=3",
            # 16 then 32 sequences of 32 tokens, 1024 tokens each: 2 steps of 16, 1 of 32.
            "--config.train.batch_warmup_start=16", "--config.train.batch_warmup_tokens=2048"]

  def pretrain(workdir, steps):
    code = cli.main(["jaxpt", "pretrain", f"--workdir={workdir}", *common,
                     f"--config.train.num_steps={steps}"])
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    return rows, out.out

  whole, out = pretrain(tmp_path / "whole", 6)
  assert "batch 16 from step 0, 32 from step 2, 64 from step 3" in out
  assert [r["train/batch_size"] for r in whole] == [16, 16, 32, 64, 64, 64]
  pretrain(tmp_path / "halves", 3)  # stops inside the warm-up (its last step is the 32)
  halves, _ = pretrain(tmp_path / "halves", 6)
  assert [r["train/loss"] for r in halves] == [r["train/loss"] for r in whole]
  from jaxpt.train import checkpoint as ckpt_lib
  saved = ckpt_lib.Checkpointer(str(tmp_path / "whole" / "checkpoints"), max_to_keep=2,
                                async_save=False)
  data, _ = saved.restore_metadata(6)
  saved.close()
  assert data["next_example"] == 16 * 2 + 32 + 64 * 3  # the stream as the sizes took it
