"""Length bucketing, measured: fine-tuning examples/s and the final metric of the same model
on the same examples in the same order, batches padded to `finetune.max_length` (buckets=1)
against the smallest of 4 lengths that fits, with and without batches grouped by length
(`finetune.length_buckets=4`, `group_by_length=50`: the defaults).

  python benchmarks/finetune_buckets.py                     # brown_pos, BERT-mini, 200 steps
  python benchmarks/finetune_buckets.py --task=shakespeare_genre --steps=100

Each compiled shape is compiled before the clock starts (its time is reported apart); the
timed steps run back to back with one host sync at the end. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import os
import pathlib
import platform
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--task", default="brown_pos")
  p.add_argument("--steps", type=int, default=200)
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--max_length", type=int, default=128)
  p.add_argument("--eval_examples", type=int, default=1024,
                 help="test examples scored after training (a fixed prefix)")
  return p.parse_args(argv)


def measure(task, cfg, steps: int) -> dict:
  import jax
  import numpy as np
  from jaxpt.tasks import classification
  from jaxpt.train import loop
  s = classification.setup(cfg, task, "scratch")
  runner = classification.bound_task(s)
  program = runner.program
  host = list(itertools.islice(runner.train_batches(0, 0, runner.rows), steps))
  lengths = sorted({b["input_ids"].shape[1] for b in host})
  with jax.set_mesh(runner.mesh):
    start = time.perf_counter()
    throwaway = program.init_state()
    for length in lengths:  # one compile per shape, off the clock
      batch = next(b for b in host if b["input_ids"].shape[1] == length)
      throwaway, m = program.train_step(throwaway, loop.to_device(batch, program.batch_sharding))
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - start
    state = program.init_state()
    start = time.perf_counter()
    for batch in host:
      state, m = program.train_step(state, loop.to_device(batch, program.batch_sharding))
    jax.block_until_ready(m)
    seconds = time.perf_counter() - start
  report = runner.report(state.params, "test")
  real = np.mean([b["attention_mask"].sum() for b in host])
  padded = np.mean([b["attention_mask"].size for b in host])
  return {"lengths": lengths, "compile_and_first_steps_s": round(compile_s, 1),
          "train_s": round(seconds, 2),
          "examples_per_s": round(steps * cfg.train.batch_size / seconds, 1),
          "padding_fraction": round(1 - real / padded, 3),
          "test_f1_macro": round(report["f1_macro"], 4),
          "test_accuracy": round(report["accuracy"], 4)}


def main(argv=None) -> None:
  args = parse_args(argv)
  from jaxpt import config as config_lib
  from jaxpt.data import labelled
  task = labelled.load(args.task)
  test = task.splits["test"][:args.eval_examples]
  task = dataclasses.replace(task, splits=dict(task.splits, test=test,
                                               validation=task.splits["validation"][:64]))
  base = config_lib.load("finetune")
  results = {}
  # Padding to the maximum (the old default); buckets alone; buckets with batches grouped by
  # length (the default). The first and last see the same examples in the same order.
  for name, buckets, group in (("pad to max_length", 1, 50), ("buckets", 4, 1),
                               ("buckets, grouped", 4, 50)):
    cfg = dataclasses.replace(
        base, optim=dataclasses.replace(base.optim, warmup_steps=args.steps // 10),
        train=dataclasses.replace(base.train, batch_size=args.batch_size,
                                  num_steps=args.steps),
        finetune=dataclasses.replace(base.finetune, max_length=args.max_length, epochs=0.0,
                                     evaluations=0, warmup_fraction=0.0,
                                     length_buckets=buckets, group_by_length=group))
    results[name] = measure(task, cfg, args.steps)
  one, four = results["pad to max_length"], results["buckets, grouped"]
  print(json.dumps({
      "benchmark": "finetune_buckets", "task": args.task, "model": "BERT-mini (finetune "
      "preset, from scratch)", "steps": args.steps, "batch_size": args.batch_size,
      "max_length": args.max_length, **results,
      "speedup": round(four["examples_per_s"] / one["examples_per_s"], 2),
      "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
      "date": datetime.date.today().isoformat()}))


if __name__ == "__main__":
  main()
