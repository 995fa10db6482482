"""`jaxpt finetune --sweep=KEY=V1,V2,...`: one fine-tuning run per candidate (the grid of
several --sweep flags), the best chosen by the validation metric, every candidate reported in
one table, and the best run's result left in WORKDIR.

WORKDIR/sweep/NAME/ holds each candidate's run; WORKDIR/sweep.json the table. The best
candidate's task.json, tokenizer/, best/, eval.json and metrics.jsonl are copied to WORKDIR, so
`jaxpt evaluate`, `export-hf` and `compress` take WORKDIR as they take any fine-tuning run.
Resumable: a finished candidate (it wrote eval.json) is skipped, an unfinished one resumes
from its checkpoints; a preempted sweep stops and a re-run carries on.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil

import jax

from jaxpt import config as config_lib
from jaxpt.config import Config, ConfigError
from jaxpt.errors import UserError
from jaxpt.tasks import classification
from jaxpt.train import checkpoint as ckpt_lib

SWEEP_JSON = "sweep.json"
RESULT = ("task.json", "tokenizer", "best", "eval.json", "eval_validation.json",
          "metrics.jsonl")


class SweepError(UserError):
  """A --sweep that cannot run: its key, values or workdir."""


def candidates(cfg: Config, specs: list[str]) -> list[tuple[str, Config, dict]]:
  """(directory name, config, {key: value text}) per point of the grid, every value parsed
  and validated before anything trains."""
  grid = []
  for spec in specs:
    key, sep, values = spec.partition("=")
    key = key.strip().removeprefix("config.").removeprefix("--config.")
    texts = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not key or not texts:
      raise SweepError(f"--sweep={spec}: expected KEY=VALUE,VALUE,... "
                       "(e.g. optim.learning_rate=3e-5,1e-4)")
    if key in (k for k, _ in grid):
      raise SweepError(f"--sweep: {key} is given twice")
    for text in texts:
      try:
        config_lib.validate(config_lib.replace_field(cfg, key, text))
      except ConfigError as e:
        raise SweepError(f"--sweep={spec}: {e}") from None
    grid.append((key, texts))
  out = []
  for combo in itertools.product(*(texts for _, texts in grid)):
    c, values = cfg, {}
    for (key, _), text in zip(grid, combo):
      c = config_lib.replace_field(c, key, text)
      values[key] = text
    name = ",".join(f"{key}={text}" for key, text in values.items())
    out.append((re.sub(r"[^A-Za-z0-9_.,=+-]", "_", name), config_lib.validate(c), values))
  return out


def _read(path: str) -> dict | None:
  return json.load(open(path)) if os.path.exists(path) else None


def run(cfg: Config, specs: list[str], task_spec: str, init: str, tokenizer_path: str | None,
        workdir: str, *, progress: bool = True, like: str | None = None) -> dict:
  """Runs (or resumes) the sweep; returns {"candidates": rows, "best": name} or, when a
  candidate was preempted, {"stopped": ..., "candidate": name}."""
  grid = candidates(cfg, specs)
  is_main = jax.process_index() == 0
  if os.path.exists(os.path.join(workdir, "checkpoints")):
    raise SweepError(f"{workdir} holds a single fine-tuning run; a sweep needs its own "
                     "--workdir")
  lock = ckpt_lib.WorkdirLock(workdir)
  if is_main:
    lock.acquire()
  try:
    rows = []
    for name, c, values in grid:
      directory = os.path.join(workdir, "sweep", name)
      if _read(os.path.join(directory, "eval.json")) is not None:
        if is_main:
          print(f"jaxpt finetune: sweep: {name} finished earlier; skipped", flush=True)
      else:
        if is_main:
          print(f"jaxpt finetune: sweep: {name}", flush=True)
        s = classification.setup(c, task_spec, init, tokenizer_path, like)
        result = classification.finetune(s, directory, progress=progress)
        if result.get("stopped") in ("preempted", "interrupted"):
          return {"stopped": result["stopped"], "candidate": name}
      validation = _read(os.path.join(directory, "eval_validation.json"))
      if validation is None:
        validation = classification.evaluate_workdir(directory, split="validation")
      test = _read(os.path.join(directory, "eval.json"))
      metric = c.finetune.metric
      rows.append({"name": name, **values, "validation " + metric: validation[metric],
                   "test " + metric: test[metric], "best_step": test["step"],
                   "workdir": directory})
    metric = cfg.finetune.metric
    best = max(rows, key=lambda r: r["validation " + metric])  # the first of equals
    result = {"metric": metric, "candidates": rows, "best": best["name"]}
    if is_main:
      _publish(best["workdir"], workdir)
      classification.write_json(os.path.join(workdir, SWEEP_JSON), result)
      print(format_table(result), flush=True)
    return result
  finally:
    if is_main:
      lock.release()


def _publish(source: str, workdir: str) -> None:
  """The best candidate's result in WORKDIR: each entry copied beside its place, then moved
  in, so that an interrupted copy leaves the previous entry whole."""
  for name in RESULT:
    src, dst = os.path.join(source, name), os.path.join(workdir, name)
    if not os.path.exists(src):
      continue
    tmp = dst + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    (shutil.copytree if os.path.isdir(src) else shutil.copyfile)(src, tmp)
    if os.path.isdir(dst):
      shutil.rmtree(dst)
    os.replace(tmp, dst)


def format_table(result: dict) -> str:
  rows, metric = result["candidates"], result["metric"]
  keys = [k for k in rows[0] if k not in ("name", "workdir")]
  width = {k: max(len(k), *(len(_cell(r[k])) for r in rows)) for k in keys}
  lines = [f"jaxpt finetune: sweep, best by validation {metric}: {result['best']}",
           "  " + "  ".join(f"{k:>{width[k]}}" for k in keys)]
  for r in rows:
    mark = " <- best" if r["name"] == result["best"] else ""
    lines.append("  " + "  ".join(f"{_cell(r[k]):>{width[k]}}" for k in keys) + mark)
  return "\n".join(lines)


def _cell(v) -> str:
  return f"{v:.4f}" if isinstance(v, float) else str(v)
