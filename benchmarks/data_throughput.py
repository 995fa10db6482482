"""Input pipeline speed: `jaxpt prepare` end to end, and the grain loader's batches.

Prepare: tokens written per second of wall time, reading to manifest, on a real corpus (a
recipe, or --input), with the time of each stage. Loader: tokens per second of masked batches
delivered (length 128 by default), read from tensorstore, shuffled, masked and batched by grain
on host threads, the way the trainer consumes them. Writes a section of benchmarks/RESULTS.md.

  python benchmarks/data_throughput.py                      # the published configuration
  python benchmarks/data_throughput.py --recipe=shakespeare --loader_steps=50   # a quick look

Targets (a 2-core CPU): prepare >= 300k tokens/s, loader >= 1M tokens/s.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import resource
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

BEGIN, END = "<!-- data_throughput:begin -->", "<!-- data_throughput:end -->"


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--recipe", default="all", help="a `jaxpt prepare` recipe (ignored with --input)")
  p.add_argument("--input", default="", help="files / folders to prepare instead of a recipe")
  p.add_argument("--vocab_size", type=int, default=30522)
  p.add_argument("--seq_length", type=int, default=128)
  p.add_argument("--near_duplicate_threshold", type=float, default=0.8)
  p.add_argument("--batch_size", type=int, default=256)
  p.add_argument("--loader_steps", type=int, default=200)
  p.add_argument("--read_threads", default="1,2,4")
  p.add_argument("--whole_word_masking", action="store_true")
  p.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
  p.add_argument("--no_write", action="store_true", help="print only; leave RESULTS.md alone")
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  from jaxpt.data import corpora
  inputs = [args.input] if args.input else [str(d) for d in corpora.fetch(args.recipe)]
  with tempfile.TemporaryDirectory(prefix="jaxpt-data-bench-") as tmp:
    _measure(args, argv, inputs, pathlib.Path(tmp) / "data")


def _file_sizes(path: str) -> int:
  if not os.path.isdir(path):
    return os.path.getsize(path)
  return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path)
             for f in files)


def _measure(args, argv, inputs: list[str], out: pathlib.Path) -> None:
  from jaxpt.config import DataConfig
  from jaxpt.data import loader
  from jaxpt.data.prepare import PrepareOptions, prepare
  opts = PrepareOptions(vocab_size=args.vocab_size, seq_length=args.seq_length,
                        near_duplicate_threshold=args.near_duplicate_threshold, progress=False)
  manifest = prepare(inputs, str(out), opts)
  rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
  text_mib = sum(_file_sizes(path) for path in inputs) / 2**20
  tokens = sum(s["tokens"] for s in manifest["splits"].values())
  stages = manifest.get("stage_seconds", {})
  print(json.dumps({"prepare_tokens": tokens, "prepare_seconds": manifest["seconds"],
                    "prepare_tokens_per_sec": manifest["tokens_per_second"],
                    "prepare_peak_rss_mib": round(rss_mib), "input_mib": round(text_mib, 1),
                    **stages}))

  data = loader.PreparedData.open(str(out))
  spec = data.masking_spec(DataConfig(whole_word_masking=args.whole_word_masking))
  loader_rows = []
  for threads in (int(t) for t in args.read_threads.split(",")):
    it = loader.batches(data.reader("train"), spec, batch_size=args.batch_size, seed=0,
                        read_threads=threads)
    next(it)  # start the threads
    start = time.perf_counter()
    delivered = 0
    for _ in range(args.loader_steps):
      delivered += next(it)["input_ids"].size
    seconds = time.perf_counter() - start
    row = {"read_threads": threads, "loader_tokens_per_sec": delivered / seconds,
           "batches_per_sec": args.loader_steps / seconds}
    print(json.dumps(row))
    loader_rows.append(row)

  source = args.input or f"--recipe={args.recipe}"
  cleaning = manifest["cleaning"]
  section = "\n".join([
      f"### Input pipeline throughput ({datetime.date.today().isoformat()})", "",
      "Command: `python benchmarks/data_throughput.py "
      + " ".join(argv if argv is not None else sys.argv[1:]) + "`", "",
      f"Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}). "
      f"Input {source}: {cleaning['documents_in']:,} documents read, "
      f"{cleaning['documents_kept']:,} kept (removed {cleaning['removed']}), WordPiece "
      f"{args.vocab_size} trained, sequence length {args.seq_length}.", "",
      "| stage | seconds |", "|---|---|",
      *(f"| {k} | {v:.1f} |" for k, v in stages.items()),
      f"| **prepare, end to end** | **{manifest['seconds']:.1f}** |", "",
      f"Prepare: {tokens:,} tokens in {manifest['seconds']:.1f} s = "
      f"**{manifest['tokens_per_second']:,} tokens/s** end to end (target 300k). Peak RSS of "
      f"the process after prepare: {rss_mib:,.0f} MiB (input files: {text_mib:,.1f} MiB).", "",
      "| loader read threads | tokens/s delivered (masked, batch "
      f"{args.batch_size} x {args.seq_length}) | batches/s |", "|---|---|---|",
      *(f"| {r['read_threads']} | {r['loader_tokens_per_sec']:,.0f} | "
        f"{r['batches_per_sec']:.1f} |" for r in loader_rows),
      "", "Loader target: 1M tokens/s."])
  print(section)
  if not args.no_write:
    from finetune_report import write_results
    write_results(args.results, section, BEGIN, END)


if __name__ == "__main__":
  main()
