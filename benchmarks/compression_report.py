"""What pruning and int8 quantization cost on real tasks: macro-F1, size and inference speed.

For each task, a fine-tuned classifier (default: the scoreboard's all-MiniLM-L6-v2 run, seed 0,
from `benchmarks/finetune_report.py`) is compressed by `jaxpt compress` at each configuration:
magnitude pruning at 30/50/70/90% (without and with recovery fine-tuning), attention-head
pruning, int8 weights, int8 weights and activations. Each result is scored on the test split;
its weight bytes, bytes on disk (Orbax, compressed) and test-split inference throughput
(examples/s, a second pass after compiling) are reported. A Markdown table goes into
benchmarks/RESULTS.md between markers, and a chart beside it.

  python benchmarks/compression_report.py
  python benchmarks/compression_report.py --tasks=spamassassin --configs=fp32,int8   # a quick look

Resumable: a configuration whose result.json exists is not re-run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

BEGIN, END = "<!-- compression_report:begin -->", "<!-- compression_report:end -->"

# name -> (prune, scheme, recover, quantize); recover True uses --recover_steps.
CONFIGS = {
    "fp32": (0.0, "magnitude", False, "none"),
    "magnitude 30%": (0.3, "magnitude", False, "none"),
    "magnitude 50%": (0.5, "magnitude", False, "none"),
    "magnitude 70%": (0.7, "magnitude", False, "none"),
    "magnitude 90%": (0.9, "magnitude", False, "none"),
    "magnitude 50% + recovery": (0.5, "magnitude", True, "none"),
    "magnitude 70% + recovery": (0.7, "magnitude", True, "none"),
    "magnitude 90% + recovery": (0.9, "magnitude", True, "none"),
    "heads 50%": (0.5, "heads", False, "none"),
    "int8": (0.0, "magnitude", False, "int8"),
    "w8a8": (0.0, "magnitude", False, "w8a8"),
    "magnitude 50% + int8": (0.5, "magnitude", False, "int8"),
}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--tasks", default="spamassassin,brown_genre")
  p.add_argument("--source", default=str(REPO / "runs" / "finetune_report_512" / "{task}" /
                                         "minilm" / "seed0"),
                 help="the fine-tuned workdir per task ({task} is replaced)")
  p.add_argument("--configs", default=",".join(CONFIGS), help="names from CONFIGS")
  p.add_argument("--recover_steps", type=int, default=24)
  p.add_argument("--retime", action="store_true",
                 help="re-measure the speed of finished configurations (on an idle machine)")
  p.add_argument("--out_dir", default=str(REPO / "runs" / "compression_report"))
  p.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
  p.add_argument("--png", default=str(REPO / "benchmarks" / "compression_report.png"))
  return p.parse_args(argv)


def run_one(args, task: str, name: str) -> dict:
  from jaxpt import compress
  out = pathlib.Path(args.out_dir) / task / name.replace(" ", "_").replace("%", "").replace(
      "+", "plus")
  done = out / "result.json"
  if done.exists() and not args.retime:
    return json.loads(done.read_text())
  if done.exists():  # only the speed again, e.g. on an otherwise idle machine
    result = json.loads(done.read_text())
    result["examples_per_s"] = _examples_per_s(compress.load(str(out)))
    done.write_text(json.dumps(result, indent=2) + "\n")
    return result
  prune, scheme, recover, quantize = CONFIGS[name]
  opts = compress.Options(prune=prune, scheme=scheme, quantize=quantize, overwrite=True,
                          recover_steps=args.recover_steps if recover else 0)
  t0 = time.process_time()
  record = compress.compress(args.source.format(task=task), str(out), opts, progress=False)
  c = compress.load(str(out))
  report = c.runner.report(c.params, "test", c.predict_step)
  result = {"task": task, "config": name, "f1_macro": report["f1_macro"],
            "accuracy": report["accuracy"], "sparsity": record["sparsity"]["sparsity"],
            "weight_bytes": record["weight_bytes"], "dense_bytes": record["dense_bytes"],
            "disk_bytes": record["disk_bytes"], "examples": report["num_examples"],
            "examples_per_s": _examples_per_s(c),
            "cpu_s": time.process_time() - t0}
  done.write_text(json.dumps(result, indent=2) + "\n")
  return result


def _examples_per_s(c, repeats: int = 3) -> float:
  """Test-split inference speed: the best of `repeats` passes, after one that compiles."""
  n = len(c.runner.setup.task.splits["test"])
  c.runner.report(c.params, "test", c.predict_step)
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    c.runner.report(c.params, "test", c.predict_step)
    best = min(best, time.perf_counter() - start)
  return n / best


def table(results: list[dict], tasks: list[str], names: list[str]) -> str:
  by = {(r["task"], r["config"]): r for r in results}
  head = "| configuration | sparsity | " + " | ".join(
      f"{t} macro-F1 | weights (MiB) | on disk (MiB) | examples/s" for t in tasks) + " |"
  lines = [head, "|---|---|" + "---|---|---|---|" * len(tasks)]
  for name in names:
    cells = []
    sparsity = next(by[(t, name)]["sparsity"] for t in tasks)
    for t in tasks:
      r, base = by[(t, name)], by.get((t, "fp32"))
      f1 = f"{r['f1_macro']:.3f}"
      if base and name != "fp32":
        f1 += f" ({100 * (r['f1_macro'] - base['f1_macro']):+.1f})"
      cells += [f1, f"{r['weight_bytes'] / 2**20:.1f}", f"{r['disk_bytes'] / 2**20:.1f}",
                f"{r['examples_per_s']:.0f}"]
    lines.append(f"| {name} | {sparsity:.2f} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def chart(results, tasks, names, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  by = {(r["task"], r["config"]): r for r in results}
  fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
  x = np.arange(len(names))
  width = 0.8 / len(tasks)
  for i, t in enumerate(tasks):
    axes[0].bar(x + i * width, [by[(t, n)]["f1_macro"] for n in names], width, label=t)
    axes[1].bar(x + i * width, [by[(t, n)]["weight_bytes"] / 2**20 for n in names], width,
                label=t)
  for ax, title in zip(axes, ("test macro-F1", "weights (MiB)")):
    ax.set_xticks(x + width * (len(tasks) - 1) / 2, names, rotation=40, ha="right", fontsize=8)
    ax.set_title(title)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path + ".tmp.png", dpi=110)
  os.replace(path + ".tmp.png", path)


def main(argv=None):
  args = parse_args(argv)
  import jax
  from finetune_report import write_results
  tasks = args.tasks.split(",")
  names = args.configs.split(",")
  unknown = [n for n in names if n not in CONFIGS]
  if unknown:
    raise SystemExit(f"--configs: unknown {unknown}; known: {list(CONFIGS)}")
  results = []
  for task in tasks:
    for name in names:
      print(f"{task} / {name}", flush=True)
      r = run_one(args, task, name)
      print(f"    macro-F1 {r['f1_macro']:.4f}, {r['weight_bytes'] / 2**20:.1f} MiB, "
            f"{r['examples_per_s']:.0f} examples/s, {r['cpu_s'] / 60:.1f} CPU-min", flush=True)
      results.append(r)
  chart(results, tasks, names, args.png)
  source = args.source.replace(str(REPO) + "/", "")
  section = "\n".join([
      f"### Compression: accuracy, size and speed ({datetime.date.today().isoformat()})", "",
      "Command: `python benchmarks/compression_report.py "
      + " ".join(argv if argv is not None else sys.argv[1:]) + "`", "",
      f"Machine: {os.cpu_count()} CPU cores (jax {jax.__version__}, "
      f"{platform.processor() or platform.machine()}). Source: `{source}` (fine-tuned by "
      "`benchmarks/finetune_report.py`). Test macro-F1 (change vs fp32 in points); weights = "
      "bytes of the saved arrays; on disk = the Orbax directory (zstd-compressed, so zeros "
      "cost little there); examples/s = test-split inference, batch 32, a second pass after "
      f"compiling, best of 3. Recovery = {args.recover_steps} fine-tuning steps with the mask held. "
      "Sparsity is over the encoder's dense kernels.", "",
      table(results, tasks, names), "",
      f"![compression]({os.path.relpath(args.png, os.path.dirname(args.results))})"])
  write_results(args.results, section, BEGIN, END)
  print(section)


if __name__ == "__main__":
  main()
