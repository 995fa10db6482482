"""The fine-tuning scoreboard: does pretraining help, measured on real labelled tasks.

For each task, training-set size (a learning curve), start (random init shaped like the
jaxpt model, jaxpt's own pretrained model, the real all-MiniLM-L6-v2 weights; and, as a second
pretrained column, a ModernBERT-style model and random weights of its shape) and seed:
fine-tune with the packaged defaults (`jaxpt/configs/finetune.py`: learning rate by width,
early stopping), keep the best validation checkpoint, score it on the test split. Then, per
(task, size, start), the ensemble of the seeds (`jaxpt ensemble`) and, for pretrained starts,
their uniform soup (`jaxpt average`). Reports mean and spread of macro-F1 and the CPU time per
cell, writes Markdown tables into benchmarks/RESULTS.md (between markers) and a chart.

  python benchmarks/finetune_report.py --jaxpt_workdir=workdirs/embedded     # the plan
  python benchmarks/finetune_report.py --starts=modern_scratch,modern \
      --modern_workdir=workdirs/embedded_modern    # the ModernBERT-style column
  python benchmarks/finetune_report.py --tasks=shakespeare_genre --train_sizes=64 \
      --starts=scratch --seeds=0,1 --override=finetune.min_steps=20  # a quick look

Resumable: a finished cell keeps its result.json and is not re-run; an unfinished one resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import re
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BEGIN, END = "<!-- finetune_report:begin -->", "<!-- finetune_report:end -->"


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--tasks", default="spamassassin,brown_genre,brown_pos")
  p.add_argument("--starts", default="scratch,jaxpt,minilm",
                 help="scratch (random init; shaped like --jaxpt_workdir when it exists, "
                      "else the preset's BERT-mini), jaxpt (--jaxpt_workdir), minilm, "
                      "modern (--modern_workdir), modern_scratch (random init shaped like "
                      "--modern_workdir)")
  p.add_argument("--jaxpt_workdir", default=str(REPO / "workdirs" / "shakespeare"),
                 help="a jaxpt pretraining workdir (default: the `make pretrain` demo)")
  p.add_argument("--jaxpt_description", default="",
                 help="what --jaxpt_workdir holds, for the table's caption")
  p.add_argument("--jaxpt_steps", default="",
                 help="earlier checkpoints of --jaxpt_workdir to fine-tune from as well "
                      "(starts jaxpt@STEP), e.g. 2500,5000,7500: downstream F1 against "
                      "pretraining tokens, one table per task")
  p.add_argument("--modern_workdir", default=str(REPO / "workdirs" / "embedded_modern"),
                 help="a second pretraining workdir, ModernBERT-style (`make "
                      "pretrain-embedded-modern`), for the starts modern and modern_scratch")
  p.add_argument("--modern_description", default="",
                 help="what --modern_workdir holds, for the table's caption")
  p.add_argument("--modern_steps", default="",
                 help="earlier checkpoints of --modern_workdir to fine-tune from as well "
                      "(starts modern@STEP)")
  p.add_argument("--curve_sizes", default="256",
                 help="train sizes the jaxpt@STEP and modern@STEP starts run at")
  p.add_argument("--curve_seeds", default="",
                 help="seeds of the jaxpt@STEP starts (default: --seeds)")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--train_sizes", default="64,256,1024,0",
                 help="train examples per task, a fixed subset each (0 = all); validation "
                      "and test splits are always complete")
  p.add_argument("--override", action="append", default=[],
                 help="KEY=VALUE of the fine-tuning config, e.g. finetune.max_length=64")
  p.add_argument("--out_dir", default=str(REPO / "runs" / "finetune_report"))
  p.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
  p.add_argument("--png", default=str(REPO / "benchmarks" / "finetune_report.png"))
  return p.parse_args(argv)


def subsample(task, n: int):
  if n and len(task.splits["train"]) > n:
    order = np.random.default_rng(1234).permutation(len(task.splits["train"]))[:n]
    task.splits["train"] = [task.splits["train"][i] for i in sorted(order)]
  return task


def majority_f1(task_name: str, size: int) -> float:
  """Test macro-F1 of predicting the training subset's most frequent label everywhere (every
  token, for tagging): the score a model that learned nothing ends at."""
  from jaxpt import evaluation
  from jaxpt.data import labelled
  task = subsample(labelled.load(task_name), size)
  index = {name: i for i, name in enumerate(task.labels)}
  if task.kind == "token":
    train = [t for ex in task.splits["train"] for t in ex["tags"]]
    test = np.asarray([index[t] for ex in task.splits["test"] for t in ex["tags"]])
  else:
    train = [ex["label"] for ex in task.splits["train"]]
    test = np.asarray([index[ex["label"]] for ex in task.splits["test"]])
  values, counts = np.unique(train, return_counts=True)
  guess = np.full_like(test, index[values[np.argmax(counts)]])
  return evaluation.classification_report(test, guess, task.labels)["f1_macro"]


def config(args, seed: int):
  from jaxpt import config as config_lib
  cfg = dataclasses.replace(config_lib.load("finetune"), seed=seed)
  for item in args.override:
    key, _, value = item.partition("=")
    cfg = config_lib.replace_field(cfg, key, value)
  return config_lib.validate(cfg)


def _cell_dir(args, task: str, size: int, start: str) -> pathlib.Path:
  return pathlib.Path(args.out_dir) / task / f"n{size or 'all'}" / start


def _pretrained(args) -> dict[str, str]:
  """The pretrained starts' workdirs, by family (each has a scratch start of its shape)."""
  return {"jaxpt": args.jaxpt_workdir, "modern": args.modern_workdir}


SCRATCH = {"jaxpt": "scratch", "modern": "modern_scratch"}


def _is_scratch(start: str) -> bool:
  return start in SCRATCH.values()


def _checkpoint_start(args, family: str, step: int) -> pathlib.Path:
  """Checkpoint `step` of a family's workdir as an import-hf-style directory (written once)."""
  from jaxpt import pretrained
  out = pathlib.Path(args.out_dir) / "starts" / f"{family}@{step}"
  if not (out / "params").is_dir():
    pretrained.average_checkpoints(_pretrained(args)[family], str(out), steps=[step])
  return out


def _final_step(workdir: str) -> int:
  from jaxpt.train import checkpoint as ckpt_lib
  checkpointer = ckpt_lib.Checkpointer(str(pathlib.Path(workdir) / "checkpoints"),
                                       max_to_keep=1, async_save=False)
  try:
    return checkpointer.latest_step()
  finally:
    checkpointer.close()


def _tokens_per_step(workdir: str) -> int | None:
  """Global batch x row length of a pretraining workdir's last checkpoint (None if unknown)."""
  from jaxpt.data import loader
  from jaxpt.train import checkpoint as ckpt_lib
  checkpointer = ckpt_lib.Checkpointer(str(pathlib.Path(workdir) / "checkpoints"),
                                       max_to_keep=1, async_save=False)
  try:
    _, saved = checkpointer.restore_metadata(checkpointer.latest_step())
  finally:
    checkpointer.close()
  try:
    length = loader.PreparedData.open(saved["data"]["dir"]).seq_length
    return int(saved["train"]["batch_size"]) * int(length)
  except (KeyError, OSError, ValueError):  # only the caption's token count depends on it
    return None


def curve_table(results: list[dict], tasks_, sizes, steps, final_step, tokens_per_step,
                family: str = "jaxpt") -> str:
  """Downstream macro-F1 against the pretraining checkpoint fine-tuned from."""
  out = []
  for size in sizes:
    lines = [f"**Pretraining checkpoints of `{family}`** (test macro-F1 with {size or 'all'} "
             "training labels; mean ± sd over seeds)", "",
             "| checkpoint | pretraining tokens | " + " | ".join(tasks_) + " |",
             "|" + "---|" * (len(tasks_) + 2)]
    rows = ([(SCRATCH[family], 0, SCRATCH[family])]
            + [(f"step {s}", s, f"{family}@{s}") for s in steps])
    rows.append((f"step {final_step} (final)", final_step, family))
    for label, step, start in rows:
      cells = []
      for task in tasks_:
        f1 = [r["f1_macro"] for r in results
              if (r["task"], r["size"], r["start"]) == (task, size, start)]
        cells.append(_mean_sd(f1) if f1 else "")
      tokens = f"{step * tokens_per_step / 1e6:.1f}M" if tokens_per_step else ""
      lines.append(f"| {label} | {tokens} | " + " | ".join(cells) + " |")
    out.append("\n".join(lines))
  return "\n\n".join(out)


def run_one(args, task_name: str, size: int, start: str, seed: int) -> dict:
  from jaxpt.data import corpora
  from jaxpt.data import labelled
  from jaxpt.tasks import classification
  workdir = _cell_dir(args, task_name, size, start) / f"seed{seed}"
  result_path = workdir / "result.json"
  if result_path.exists():
    return json.loads(result_path.read_text())
  like = None
  if start == "scratch":
    init = "scratch"
    like = args.jaxpt_workdir if os.path.isdir(args.jaxpt_workdir) else None
  elif start == "modern_scratch":
    init, like = "scratch", args.modern_workdir
  elif start in ("jaxpt", "modern"):
    init = _pretrained(args)[start]
  elif "@" in start:
    family, _, step = start.partition("@")
    init = str(_checkpoint_start(args, family, int(step)))
  else:
    init = "hf:" + str(corpora.fetch_weights("all-minilm-l6-v2"))
  task = subsample(labelled.load(task_name), size)
  cpu, wall = time.process_time(), time.time()
  setup = classification.setup(config(args, seed), task, init, like=like)
  report = classification.finetune(setup, str(workdir), progress=False)
  if report.get("stopped") in ("preempted", "interrupted"):
    raise SystemExit("stopped: the run was checkpointed; re-run this script to continue")
  result = {"task": task_name, "size": size, "start": start, "seed": seed,
            "f1_macro": report["f1_macro"], "accuracy": report["accuracy"],
            "mcc": report["mcc"], "cpu_s": time.process_time() - cpu,
            "wall_s": time.time() - wall, "best_step": report["step"],
            "last_step": report.get("last_step"),
            "still_improving": report.get("still_improving"),
            "train_examples": len(task.splits["train"]), "init": setup.init_source,
            "learning_rate": setup.cfg.optim.learning_rate}
  result_path.write_text(json.dumps(result, indent=2) + "\n")
  return result


def cached_fusion(path: pathlib.Path, seeds: list[int]) -> dict | None:
  """A cell's saved ensemble or soup if it fused exactly `seeds` (files written before the
  seeds were recorded: if it had as many members), else None."""
  if not path.exists():
    return None
  cached = json.loads(path.read_text())
  if "seeds" in cached:
    return cached if cached["seeds"] == list(seeds) else None
  return cached if len(cached.get("members", ())) == len(seeds) else None


def fuse(args, task: str, size: int, start: str, seeds: list[int], kind: str) -> dict | None:
  """The ensemble (or soup) of a cell's seeds, scored on the test split; cached."""
  from jaxpt import fusion
  cell = _cell_dir(args, task, size, start)
  path = cell / f"{kind}.json"
  if len(seeds) < 2:
    return None
  cached = cached_fusion(path, seeds)
  if cached:
    return cached
  runs = [str(cell / f"seed{seed}") for seed in seeds]
  cpu = time.process_time()
  if kind == "ensemble":
    report = fusion.ensemble(runs, str(cell / "ensemble_out"))
  else:
    report = fusion.soup(runs, str(cell / "soup_out"), overwrite=True)
  out = {"f1_macro": report["f1_macro"], "cpu_s": time.process_time() - cpu,
         "seeds": list(seeds), "members": [m.get("f1_macro") for m in report["members"]]}
  path.write_text(json.dumps(out, indent=2) + "\n")
  return out


def _mean_sd(values) -> str:
  v = np.asarray(values, np.float64)
  return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v[0]:.3f} (1 seed)"


def tables(results: list[dict], fused: dict, tasks_, sizes, starts) -> str:
  out = []
  for task in tasks_:
    columns = []
    for start in starts:
      columns += [start, f"{start} ensemble"] + ([] if _is_scratch(start) else [f"{start} soup"])
    lines = [f"**{task}** (test macro-F1; mean ± sd over seeds; CPU-min of the seeds; "
             "\"majority\": no better than predicting the most frequent label; \"best at the last "
             "step\": seeds whose validation metric was still rising when the run ended)", "",
             "| train examples | majority label | " + " | ".join(columns) + " |",
             "|" + "---|" * (len(columns) + 2)]
    majority = {size: majority_f1(task, size) for size in sizes}
    for size in sizes:
      cells, n_train = [], None
      for start in starts:
        rows = [r for r in results if (r["task"], r["size"], r["start"]) == (task, size, start)]
        if rows:
          n_train = rows[0]["train_examples"]
          cpu = sum(r["cpu_s"] for r in rows) / 60
          mean = float(np.mean([r["f1_macro"] for r in rows]))
          flag = ", majority" if mean <= majority[size] + 0.005 else ""
          rising = sum(bool(r.get("still_improving")) for r in rows)
          if rising:
            flag += f", {rising}/{len(rows)} best at the last step"
          cells.append(f"{_mean_sd([r['f1_macro'] for r in rows])} ({cpu:.0f} min{flag})")
        else:
          cells.append("")
        for kind in ("ensemble",) if _is_scratch(start) else ("ensemble", "soup"):
          f = fused.get((task, size, start, kind))
          cells.append(f"{f['f1_macro']:.3f}" if f else "")
      lines.append(f"| {n_train or size} | {majority[size]:.3f} | " + " | ".join(cells) + " |")
    out.append("\n".join(lines))
  return "\n\n".join(out)


def chart(results, tasks_, sizes, starts, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(tasks_), figsize=(4.5 * len(tasks_), 3.6), squeeze=False)
  for ax, task in zip(axes[0], tasks_):
    for start in starts:
      xs, means, errs = [], [], []
      for size in sizes:
        f1 = [r["f1_macro"] for r in results
              if (r["task"], r["size"], r["start"]) == (task, size, start)]
        if f1:
          xs.append(next(r["train_examples"] for r in results
                         if (r["task"], r["size"], r["start"]) == (task, size, start)))
          means.append(np.mean(f1))
          errs.append(np.std(f1, ddof=1) if len(f1) > 1 else 0)
      if xs:
        ax.errorbar(xs, means, yerr=errs, marker="o", capsize=3, label=start)
    ax.set_xscale("log")
    ax.set_xlabel("training labels")
    ax.set_title(task)
    ax.set_ylim(0, 1)
  axes[0][0].set_ylabel("test macro-F1")
  axes[0][-1].legend()
  fig.tight_layout()
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=110)
  os.replace(tmp, path)


def write_results(path: str, section: str, begin: str = BEGIN, end: str = END) -> None:
  """Replaces the text between the markers `begin` and `end` in `path` (appends the first time)."""
  text = pathlib.Path(path).read_text() if os.path.exists(path) else ""
  block = f"{begin}\n{section}\n{end}"
  if begin in text:
    text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
  else:
    text = text.rstrip() + "\n\n" + block + "\n"
  tmp = path + ".tmp"
  pathlib.Path(tmp).write_text(text)
  os.replace(tmp, path)


def main(argv=None):
  args = parse_args(argv)
  import jax
  tasks_ = args.tasks.split(",")
  starts = args.starts.split(",")
  seeds = [int(s) for s in args.seeds.split(",")]
  sizes = [int(s) for s in args.train_sizes.split(",")]
  known = {"scratch", "jaxpt", "minilm", "modern", "modern_scratch"}
  if set(starts) - known:
    raise SystemExit(f"--starts: unknown {sorted(set(starts) - known)} (known: {sorted(known)})")
  for start in set(starts) & {"modern", "modern_scratch"}:
    if not os.path.isdir(args.modern_workdir):
      raise SystemExit(f"--starts={start}: --modern_workdir={args.modern_workdir} does not exist "
                       "(make pretrain-embedded-modern)")
  steps = {"jaxpt": [int(s) for s in args.jaxpt_steps.split(",") if s],
           "modern": [int(s) for s in args.modern_steps.split(",") if s]}
  curve_sizes = [int(s) for s in args.curve_sizes.split(",") if s]
  plan = [(t, n, s, seed) for t in tasks_ for n in sizes for s in starts for seed in seeds]
  curve_seeds = [int(s) for s in (args.curve_seeds or args.seeds).split(",")]
  plan += [(t, n, f"{family}@{step}", seed) for family in steps for t in tasks_
           for n in curve_sizes for step in steps[family] for seed in curve_seeds]
  results, fused = [], {}
  for i, (task, size, start, seed) in enumerate(plan, 1):
    print(f"[{i}/{len(plan)}] {task} / {size or 'all'} labels / {start} / seed {seed}",
          flush=True)
    r = run_one(args, task, size, start, seed)
    print(f"    macro-F1 {r['f1_macro']:.4f}, {r['cpu_s'] / 60:.1f} CPU-min", flush=True)
    results.append(r)
    if seed == seeds[-1] and "@" not in start:
      for kind in ("ensemble",) if _is_scratch(start) else ("ensemble", "soup"):
        f = fuse(args, task, size, start, seeds, kind)
        if f:
          fused[(task, size, start, kind)] = f
          print(f"    {kind} of {len(seeds)} seeds: macro-F1 {f['f1_macro']:.4f}", flush=True)
  md = tables(results, fused, tasks_, sizes, starts)
  for family, family_steps in steps.items():
    if family_steps:
      workdir = _pretrained(args)[family]
      md += "\n\n" + curve_table(results, tasks_, curve_sizes, family_steps,
                                 _final_step(workdir), _tokens_per_step(workdir), family)
  chart(results, tasks_, sizes, starts, args.png)
  versions = f"jax {jax.__version__}, {platform.processor() or platform.machine()}"
  scratch_shape = (f"random weights shaped like `{args.jaxpt_workdir}` (`--like`)"
                   if os.path.isdir(args.jaxpt_workdir) else "BERT-mini from random weights")
  section = "\n".join([
      f"### Fine-tuning scoreboard ({datetime.date.today().isoformat()})", "",
      "Command: `python benchmarks/finetune_report.py "
      + " ".join(a for a in (argv or sys.argv[1:])) + "`", "",
      f"Machine: {os.cpu_count()} CPU cores ({versions}). Test macro-F1 of the best "
      f"validation checkpoint, mean ± sd over seeds {args.seeds}, with the packaged "
      "fine-tuning defaults" + (f" and {', '.join(args.override)}" if args.override else "")
      + f". Starts: `scratch` = {scratch_shape}; `jaxpt` = {args.jaxpt_description or args.jaxpt_workdir}; "
      "`minilm` = the real all-MiniLM-L6-v2 weights (L6/H384); `modern` = "
      f"{args.modern_description or args.modern_workdir}; `modern_scratch` = random weights "
      f"shaped like `{args.modern_workdir}`. Ensemble: the seeds' mean "
      "probabilities; soup: the mean of their weights.", "", md, "",
      f"![scoreboard]({os.path.relpath(args.png, os.path.dirname(args.results))})"])
  write_results(args.results, section)
  print(section)


if __name__ == "__main__":
  main()
