"""Model fusion of fine-tuned runs: an ensemble (their predicted probabilities averaged) and a
model soup (their weights averaged: uniform, or greedy by validation score, Wortsman et al.
2022, arXiv 2203.05482).

Both read `jaxpt finetune` workdirs (their best checkpoints) and write what `finetune` does:
DIR/eval.json, scored on the test split with the same metrics. A soup's DIR is a fine-tuning
workdir itself (task.json, tokenizer/, best/), so `evaluate`, `export-hf` and `compress` take
it. The weights are averaged by `params.average`, the one averaging function.
"""

from __future__ import annotations

import dataclasses
import os
import shutil

import jax
import numpy as np

from jaxpt import sharding
from jaxpt.errors import UserError
from jaxpt.models import params as params_lib
from jaxpt.tasks import classification
from jaxpt.train import checkpoint as ckpt_lib

IGNORE = classification.IGNORE


class FusionError(UserError):
  """Runs that cannot be fused: other tasks, label sets, starts or shapes."""


@dataclasses.dataclass
class Member:
  workdir: str
  info: dict  # task.json
  runner: classification.ClassificationTask
  state: object  # its best TrainState
  step: int


def _members(workdirs: list[str], task_spec: str | None) -> list[Member]:
  if not workdirs:
    raise FusionError("--workdirs: name at least one fine-tuning workdir")
  infos = []
  for w in workdirs:
    try:
      infos.append(classification.read_task_info(w))
    except classification.TrainError as e:
      raise FusionError(str(e)) from None
  first = infos[0]
  for w, info in zip(workdirs[1:], infos[1:]):
    if info["task"] != first["task"]:
      raise FusionError(f"{w} was trained on {info['task']}, {workdirs[0]} on {first['task']}: "
                        "fuse runs of one task")
    if info["labels"] != first["labels"] or info["kind"] != first["kind"]:
      raise FusionError(f"{w} has the labels {info['labels'][:5]}..., {workdirs[0]} "
                        f"{first['labels'][:5]}...: fuse runs of one label set")
  out = []
  for w, info in zip(workdirs, infos):
    runner, state, info, step = classification.load_best(w, task_spec=task_spec)
    out.append(Member(w, info, runner, state, step))
  return out


# ---------------------------------------------------------------------------------------------
# Ensembles.


def _scored(member: Member, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(probabilities [scored, labels], scored positions per example) of a token task's first
  sub-words, which align across tokenizers word by word."""
  probs = member.runner.probabilities(member.state.eval_params, split)
  scored = member.runner.encoded[split].labels != IGNORE
  return probs[scored], scored.sum(1)


def ensemble(workdirs: list[str], out: str, *, split: str = "test",
             task_spec: str | None = None) -> dict:
  """The mean of the members' predicted probabilities on `split`, its argmax scored like
  `finetune` scores one run; writes OUT/eval.json (OUT/eval_SPLIT.json for other splits)."""
  members = _members(workdirs, task_spec)
  first = members[0]
  metric = first.runner.cfg.finetune.metric
  kind = first.info["kind"]
  probabilities, counts, scores = [], [], []
  for m in members:
    if kind == "sequence":
      p, c = m.runner.probabilities(m.state.eval_params, split), None
    else:
      p, c = _scored(m, split)
      if counts and not np.array_equal(c, counts[0]):
        raise FusionError(f"{m.workdir} scores other words of the {split} split than "
                          f"{first.workdir} (a different finetune.max_length truncates "
                          "them): ensemble runs of one max_length")
    probabilities.append(p)
    counts.append(c)
    scores.append(_report(first, p, split, kind)[metric])
  mean = np.mean(probabilities, axis=0)
  report = _report(first, mean, split, kind)
  report.update(split=split, task=first.info["task"], kind="ensemble",
                members=[{"workdir": m.workdir, "step": m.step, metric: s}
                         for m, s in zip(members, scores)])
  if jax.process_index() == 0:
    os.makedirs(out, exist_ok=True)
    classification.write_json(os.path.join(out, "eval.json" if split == "test" else f"eval_{split}.json"),
                report)
  return report


def _report(first: Member, probabilities: np.ndarray, split: str, kind: str) -> dict:
  """Scores of argmax(probabilities) (sequence: [n, labels]; token: [scored, labels] in the
  first member's scored positions)."""
  runner = first.runner
  if kind == "sequence":
    predictions = probabilities.argmax(-1)
  else:
    labels = runner.encoded[split].labels
    predictions = np.zeros_like(labels)
    predictions[labels != IGNORE] = probabilities.argmax(-1)
  return runner.report_predictions(predictions, split)


# ---------------------------------------------------------------------------------------------
# Soups.


def _check_soup(members: list[Member]) -> None:
  first = members[0]
  for m in members[1:]:
    if m.info["init"] != first.info["init"]:
      raise FusionError(f"{m.workdir} started from {m.info['init']}, {first.workdir} from "
                        f"{first.info['init']}: a soup averages runs of one start")
    why = params_lib.mismatch(first.state.eval_params, m.state.eval_params)
    if why:
      raise FusionError(f"{m.workdir} and {first.workdir} differ in shape: {why}")
    if m.runner.setup.tokenizer.get_vocab() != first.runner.setup.tokenizer.get_vocab():
      raise FusionError(f"{m.workdir} and {first.workdir} have different tokenizers")


def soup(workdirs: list[str], out: str, *, greedy: bool = False,
         task_spec: str | None = None, overwrite: bool = False) -> dict:
  """Averages the members' best weights (uniformly, or greedily: members in order of their
  validation score, each kept only if the soup's validation score does not fall) into the
  fine-tuning workdir OUT; scores it on the test split (OUT/eval.json)."""
  if os.path.exists(os.path.join(out, classification.TASK_JSON)) and not overwrite:
    raise FusionError(f"{out} already holds a run; pass --overwrite to replace it")
  members = _members(workdirs, task_spec)
  _check_soup(members)
  first = members[0]
  runner = first.runner
  metric = runner.cfg.finetune.metric
  host = [jax.device_get(m.state.eval_params) for m in members]

  def validation(params) -> float:
    with jax.set_mesh(runner.mesh):
      placed = sharding.place(params, runner.param_sh)
    return float(runner.report(placed, "validation")[metric])

  scores = [validation(p) for p in host]
  if greedy:
    order = sorted(range(len(members)), key=lambda i: -scores[i])
    chosen, best = [order[0]], scores[order[0]]
    for i in order[1:]:
      trial = validation(params_lib.average([host[j] for j in chosen + [i]]))
      if trial >= best:
        chosen, best = chosen + [i], trial
  else:
    chosen = list(range(len(members)))
  averaged = params_lib.average([host[i] for i in chosen])

  # OUT as a fine-tuning workdir, written beside it and moved into place when complete.
  tmp = out.rstrip("/") + ".partial"
  if jax.process_index() == 0:
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    info = dict(first.info,
                soup={"members": [m.workdir for m in members],
                      "chosen": [members[i].workdir for i in chosen],
                      "greedy": greedy, "validation": dict(zip(workdirs, scores))})
    classification.write_json(os.path.join(tmp, classification.TASK_JSON), info)
    shutil.copytree(os.path.join(first.workdir, "tokenizer"), os.path.join(tmp, "tokenizer"))
  _, saved_config = _saved_config(first.workdir, first.step)
  with jax.set_mesh(runner.mesh):
    placed = sharding.place(averaged, runner.param_sh)
    state = dataclasses.replace(first.state, params=placed,
                                ema=None if first.state.ema is None else placed)
    best = ckpt_lib.Checkpointer(os.path.join(tmp, "best"), max_to_keep=1, async_save=False)
    try:
      best.save(first.step, state, data={"soup": [members[i].workdir for i in chosen]},
                config=saved_config, force=True)
    finally:
      best.close()
  if jax.process_index() == 0:
    if os.path.exists(out):
      shutil.rmtree(out)
    os.replace(tmp, out)
  report = classification.evaluate_workdir(out, runner=runner)
  report.update(kind="soup", greedy=greedy,
                members=[{"workdir": m.workdir, "validation " + metric: s,
                          "chosen": i in chosen} for i, (m, s) in enumerate(zip(members, scores))])
  if jax.process_index() == 0:
    classification.write_report(out, "test", report)
  return report


def _saved_config(workdir: str, step: int) -> tuple[dict, dict]:
  best = ckpt_lib.Checkpointer(os.path.join(workdir, "best"), max_to_keep=1, async_save=False)
  try:
    return best.restore_metadata(step)
  finally:
    best.close()
