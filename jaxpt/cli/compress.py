"""`jaxpt compress`: pruning and int8 quantization of a fine-tuned classifier."""

from __future__ import annotations

from absl import flags

from jaxpt.cli.common import UsageError, define_options, options_from

HELP = "prune (magnitude or attention heads) and int8-quantize a fine-tuned classifier"


def define(fv: flags.FlagValues) -> None:
  from jaxpt.compress import Options
  flags.DEFINE_string("workdir", None, "A `jaxpt finetune` workdir (its best checkpoint is "
                      "compressed).", flag_values=fv)
  flags.DEFINE_string("out", None, "The compressed workdir to write (`jaxpt evaluate "
                      "--workdir=OUT` scores it).", flag_values=fv)
  flags.DEFINE_boolean("progress", True, "Show a progress bar (recovery).", flag_values=fv)
  define_options(Options, fv)


def run(fv: flags.FlagValues, args: list[str]) -> int:
  if not fv.workdir or not fv.out:
    raise UsageError("--workdir and --out are required")
  from jaxpt import compress
  record = compress.compress(fv.workdir, fv.out, options_from(compress.Options, fv),
                             progress=fv.progress)
  s = record["sparsity"]
  print(f"jaxpt compress: {fv.out}: sparsity {s['sparsity']:.3f} of {s['prunable_weights']:,} "
        f"prunable weights; quantize {record['quantize']}; weights "
        f"{record['dense_bytes'] / 2**20:.2f} MiB -> {record['weight_bytes'] / 2**20:.2f} MiB "
        f"({record['disk_bytes'] / 2**20:.2f} MiB on disk)")
  return 0
