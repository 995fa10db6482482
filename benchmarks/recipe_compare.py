"""The recipe, compared: the same model on the same tokens under several schedules and masking
rates (and anything else `--config.KEY=VALUE` sets), scored on the same held-out batches
masked at one rate, so that a 30%-masked run is not judged on a harder test.

  python benchmarks/recipe_compare.py                 # Shakespeare, BERT-tiny, 4 variants
  python benchmarks/recipe_compare.py --steps=2000 --variant="ema=--config.optim.ema_decay=0.999"

A variant of stages, `NAME=FLAGS >> FLAGS`, splits the steps equally between them, each
stage continuing the one before (`train.init_from`), so it sees the same tokens in all:
`--variant="clm-then-mlm=--config.model.attention_kind=causal >> "` pretrains causally for
half the steps, then as an MLM encoder for the other half (arXiv 2507.00994).

Each variant pretrains `shakespeare_tiny` from the same seed into RUNS/NAME (a finished run is
reused), then its final parameters (the EMA when kept) are evaluated on `--eval_batches`
validation batches masked at `--eval_mask_prob`. Prints one JSON line; `--markdown` a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

VARIANTS = (
    "linear-15%=--config.optim.schedule=linear",
    "wsd-15%=--config.optim.schedule=wsd --config.optim.decay_fraction=0.2",
    "linear-30%=--config.optim.schedule=linear --config.data.mask_prob=0.3",
    "wsd-30%=--config.optim.schedule=wsd --config.optim.decay_fraction=0.2 "
    "--config.data.mask_prob=0.3",
)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--data", default="workdirs/shakespeare/data", help="a `jaxpt prepare` output")
  p.add_argument("--runs", default="runs/recipe_compare")
  p.add_argument("--preset", default="shakespeare_tiny")
  p.add_argument("--steps", type=int, default=1000)
  p.add_argument("--variant", action="append", default=None,
                 help="NAME=FLAGS (space-separated --config.KEY=VALUE); repeatable; default: "
                      "linear vs wsd at 15% and 30% masking")
  p.add_argument("--eval_mask_prob", type=float, default=0.15)
  p.add_argument("--eval_batches", type=int, default=32)
  p.add_argument("--markdown", action="store_true")
  return p.parse_args(argv)


def train(name: str, flags: str, args) -> float:
  """Trains the variant's stages in turn (RUNS/NAME, RUNS/NAME.stage1, ...; the last is
  RUNS/NAME); returns the seconds they took."""
  from jaxpt import cli
  stages = [part.split() for part in flags.split(">>")]
  seconds, previous = 0.0, None
  for i, stage in enumerate(stages):
    steps = args.steps // len(stages) + (args.steps % len(stages) if i == len(stages) - 1 else 0)
    workdir = os.path.join(args.runs, name if i == len(stages) - 1 else f"{name}.stage{i + 1}")
    if previous:
      stage = [f"--config.train.init_from={previous}", *stage]
    start = time.perf_counter()
    code = cli.main(["jaxpt", "pretrain", f"--config={args.preset}", f"--workdir={workdir}",
                     f"--config.data.dir={args.data}", f"--config.train.num_steps={steps}",
                     "--config.train.eval_every_steps=0", "--noprogress", *stage])
    if code != 0:
      raise SystemExit(f"{name}: jaxpt pretrain (stage {i + 1}) exited {code}")
    seconds += time.perf_counter() - start
    previous = workdir
  return seconds


def held_out(workdir: str, args) -> dict:
  """Final parameters of `workdir` (its model, the preset's batch and seed) on the validation
  split masked at `eval_mask_prob`."""
  import jax
  from jaxpt import config as config_lib
  from jaxpt import pretrained, sharding
  from jaxpt.tasks import pretraining
  from jaxpt.train import loop
  loaded = pretrained.load(workdir)
  cfg = config_lib.load(config_lib.resolve_preset(args.preset))
  cfg = dataclasses.replace(
      cfg, model=loaded.config,
      data=dataclasses.replace(cfg.data, mask_prob=args.eval_mask_prob, dir=args.data),
      train=dataclasses.replace(cfg.train, eval_batches=args.eval_batches))
  task = pretraining.PretrainingTask(cfg)
  mesh = sharding.make_mesh(cfg.mesh)
  program = loop.build_program(task, mesh)
  task.prepare_eval(program)
  params = pretrained.adapt(loaded, cfg.model)
  with jax.set_mesh(mesh):
    return task.evaluate(sharding.place(params, program.state_shardings.params))


def main(argv=None) -> None:
  args = parse_args(argv)
  variants = [v.split("=", 1) for v in (args.variant or VARIANTS)]
  results = []
  for name, flags in variants:
    seconds = train(name, flags, args)
    metrics = held_out(os.path.join(args.runs, name), args)
    rows = [json.loads(l) for l in
            pathlib.Path(args.runs, name, "metrics.jsonl").read_text().splitlines()]
    results.append({"name": name, "flags": flags, "seconds": round(seconds, 1),
                    "train_mlm_loss_last": rows[-1]["train/mlm_loss"],
                    "eval_mlm_loss": round(metrics["eval/mlm_loss"], 4),
                    "eval_mlm_accuracy": round(metrics["eval/mlm_accuracy"], 4),
                    "eval_masked_fraction": round(metrics["eval/masked_fraction"], 4)})
  import jax
  out = {"date": datetime.date.today().isoformat(), "machine": platform.machine(),
         "cpus": os.cpu_count(), "backend": jax.default_backend(), "preset": args.preset,
         "steps": args.steps, "data": args.data, "eval_mask_prob": args.eval_mask_prob,
         "eval_batches": args.eval_batches, "results": results}
  print(json.dumps(out))
  if args.markdown:
    base = results[0]["eval_mlm_loss"]
    print(f"\n| variant | flags | held-out MLM loss at {args.eval_mask_prob:.0%} masking "
          f"| vs {results[0]['name']} | accuracy |\n|---|---|---|---|---|")
    for r in results:
      print(f"| {r['name']} | `{r['flags']}` | {r['eval_mlm_loss']:.4f} | "
            f"{r['eval_mlm_loss'] - base:+.4f} | {r['eval_mlm_accuracy']:.3f} |")


if __name__ == "__main__":
  main()
