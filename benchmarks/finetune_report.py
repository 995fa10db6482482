"""The fine-tuning scoreboard: does pretraining help, measured on real labelled tasks.

For each task and each start (random init, jaxpt's own pretrained model, the real
all-MiniLM-L6-v2 weights) and each seed: fine-tune, keep the best validation checkpoint, score
it on the test split. Reports the mean and spread of macro-F1 and the CPU time per column,
writes a Markdown table into benchmarks/RESULTS.md (between markers) and a bar chart PNG.

  python benchmarks/finetune_report.py                       # the published configuration
  python benchmarks/finetune_report.py --train_examples=256 --seeds=0 --epochs=1   # a quick look

Runs are resumable: a finished (task, start, seed) keeps its eval.json and is not re-run.
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
  p.add_argument("--tasks", default="spamassassin,brown_genre")
  p.add_argument("--starts", default="scratch,jaxpt,minilm",
                 help="scratch (random init, BERT-mini), jaxpt (--jaxpt_workdir), minilm")
  p.add_argument("--jaxpt_workdir", default=str(REPO / "workdirs" / "shakespeare"),
                 help="a jaxpt pretraining workdir (default: the `make pretrain` demo)")
  p.add_argument("--jaxpt_description",
                 default="BERT-tiny (L2/H128, vocab 8192) from `make pretrain` (Shakespeare only, "
                         "2000 steps of 32 x 128 tokens)",
                 help="what --jaxpt_workdir holds, for the table's caption")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--train_examples", type=int, default=1024,
                 help="train examples per task (a fixed subset; 0 = all). Validation and test "
                      "splits are always complete.")
  p.add_argument("--epochs", type=float, default=3.0)
  p.add_argument("--max_length", type=int, default=64)
  p.add_argument("--learning_rate", type=float, default=1e-4)
  p.add_argument("--augment_task", default="",
                 help="also run the scratch start with augmentation (delete/swap 0.1, synonym "
                      "0.1) on this task; empty: no augmentation column")
  p.add_argument("--out_dir", default=str(REPO / "runs" / "finetune_report"))
  p.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
  p.add_argument("--png", default=str(REPO / "benchmarks" / "finetune_report.png"))
  return p.parse_args(argv)


def subsample(task, n: int):
  if n and len(task.splits["train"]) > n:
    order = np.random.default_rng(1234).permutation(len(task.splits["train"]))[:n]
    task.splits["train"] = [task.splits["train"][i] for i in sorted(order)]
    missing = set(task.labels) - {e["label"] for e in task.splits["train"]}
    if missing:
      raise SystemExit(f"{task.name}: a {n}-example subset lacks labels {sorted(missing)}")
  return task


def run_one(args, task_name: str, start: str, seed: int, augment: bool) -> dict:
  from jaxpt import config as config_lib
  from jaxpt.data import labelled as tasks
  from jaxpt.tasks import classification as finetune
  from jaxpt.data import corpora

  column = start + ("+augment" if augment else "")
  workdir = pathlib.Path(args.out_dir) / task_name / column / f"seed{seed}"
  result_path = workdir / "result.json"
  if result_path.exists():
    return json.loads(result_path.read_text())
  init = {"scratch": "scratch", "jaxpt": args.jaxpt_workdir,
          "minilm": "hf:" + str(corpora.fetch_weights("all-minilm-l6-v2"))}[start]
  cfg = config_lib.load("finetune")
  cfg = dataclasses.replace(
      cfg, seed=seed,
      optim=dataclasses.replace(cfg.optim, learning_rate=args.learning_rate),
      finetune=dataclasses.replace(
          cfg.finetune, epochs=args.epochs, max_length=args.max_length,
          **(dict(augment_delete=0.1, augment_swap=0.1, augment_synonym=0.1) if augment
             else {})))
  if workdir.exists():  # an unfinished run: start it again from scratch
    import shutil
    shutil.rmtree(workdir)
  task = subsample(tasks.load(task_name), args.train_examples)
  cpu, wall = time.process_time(), time.time()
  setup = finetune.setup(cfg, task, init)
  report = finetune.finetune(setup, str(workdir), progress=False)
  if report.get("stopped") == "preempted":
    raise SystemExit("SIGTERM: the run was checkpointed; re-run this script to continue")
  result = {"task": task_name, "start": column, "seed": seed, "f1_macro": report["f1_macro"],
            "accuracy": report["accuracy"], "mcc": report["mcc"],
            "cpu_s": time.process_time() - cpu, "wall_s": time.time() - wall,
            "best_step": report["step"], "init": setup.init_source}
  result_path.write_text(json.dumps(result, indent=2) + "\n")
  return result


def table(results: list[dict], tasks_: list[str], columns: list[str]) -> str:
  head = "| task | " + " | ".join(columns) + " |"
  lines = [head, "|" + "---|" * (len(columns) + 1)]
  for task in tasks_:
    cells = []
    for column in columns:
      rows = [r for r in results if r["task"] == task and r["start"] == column]
      if not rows:
        cells.append("")
        continue
      f1 = np.array([r["f1_macro"] for r in rows])
      cpu = sum(r["cpu_s"] for r in rows) / 60
      cells.append(f"{f1.mean():.3f} ± {f1.std(ddof=1) if len(f1) > 1 else 0:.3f} "
                   f"(n={len(f1)}; {cpu:.1f} CPU-min)")
    lines.append(f"| {task} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def chart(results, tasks_, columns, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4))
  width = 0.8 / len(columns)
  for j, column in enumerate(columns):
    means, errs = [], []
    for task in tasks_:
      f1 = [r["f1_macro"] for r in results if r["task"] == task and r["start"] == column]
      means.append(np.mean(f1) if f1 else 0)
      errs.append(np.std(f1, ddof=1) if len(f1) > 1 else 0)
    ax.bar(np.arange(len(tasks_)) + j * width, means, width, yerr=errs, label=column,
           capsize=3)
  ax.set_xticks(np.arange(len(tasks_)) + width * (len(columns) - 1) / 2, tasks_)
  ax.set_ylabel("test macro-F1")
  ax.set_ylim(0, 1)
  ax.legend()
  ax.set_title("Fine-tuning: macro-F1 by starting point (mean ± sd over seeds)")
  fig.tight_layout()
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=120)
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
  plan = [(t, s, seed, False) for t in tasks_ for s in starts for seed in seeds]
  if args.augment_task:
    plan += [(args.augment_task, "scratch", seed, True) for seed in seeds]
  results = []
  for i, (task, start, seed, augment) in enumerate(plan, 1):
    print(f"[{i}/{len(plan)}] {task} / {start}{'+augment' if augment else ''} / seed {seed}",
          flush=True)
    r = run_one(args, task, start, seed, augment)
    print(f"    macro-F1 {r['f1_macro']:.4f}, {r['cpu_s'] / 60:.1f} CPU-min", flush=True)
    results.append(r)
  columns = starts + (["scratch+augment"] if args.augment_task else [])
  md = table(results, tasks_, columns)
  chart(results, tasks_, columns, args.png)
  versions = f"jax {jax.__version__}, {platform.processor() or platform.machine()}"
  section = "\n".join([
      f"### Fine-tuning scoreboard ({datetime.date.today().isoformat()})", "",
      f"Command: `python benchmarks/finetune_report.py "
      + " ".join(a for a in (argv or sys.argv[1:])) + "`", "",
      f"Machine: {os.cpu_count()} CPU cores ({versions}). Test macro-F1 of the best validation "
      f"checkpoint, mean ± sd over seeds {args.seeds}; {args.train_examples or 'all'} train "
      f"examples per task, {args.epochs:g} epochs, {args.max_length} tokens, AdamW "
      f"{args.learning_rate:g}. Columns: `scratch` = BERT-mini (L4/H256) from random init; "
      f"`jaxpt` = {args.jaxpt_description}; `minilm` = the real all-MiniLM-L6-v2 weights (L6/H384). CPU-min is the "
      f"process CPU time of the whole column.", "", md, "",
      f"![scoreboard]({os.path.relpath(args.png, os.path.dirname(args.results))})"])
  write_results(args.results, section)
  print(section)


if __name__ == "__main__":
  main()
