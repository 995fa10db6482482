"""`jaxpt pretrain`: masked-LM pretraining on prepared data, resumable; `--dry_run` compiles
the sharded step and reports memory."""

from __future__ import annotations

from absl import flags

from jaxpt.cli.common import (UsageError, config_flag, distributed_flags,
                              explicit_config_fields, initialize_distributed, load_config)

HELP = ("pretrain an encoder (BERT, RoBERTa, ModernBERT) or a decoder (GPT-2, ModernBERT's) on "
        "prepared data; re-run to resume")


def define(fv: flags.FlagValues) -> None:
  config_flag(fv, "A preset name (bert_tiny, bert_base, modernbert_base, ...: jaxpt/configs/) "
              "or a preset file; override fields with --config.optim.learning_rate=3e-4 and "
              "the like.")
  flags.DEFINE_string("workdir", None, "Run directory: checkpoints/, metrics.jsonl, "
                      "tensorboard/. Re-running with the same one resumes.", flag_values=fv)
  flags.DEFINE_boolean("progress", True, "Show a progress bar.", flag_values=fv)
  flags.DEFINE_boolean("dry_run", False, "Compile the sharded train step for the configured "
                       "mesh and report parameters, FLOPs and per-device memory; train nothing. "
                       "Try meshes on fake CPU devices with "
                       "XLA_FLAGS=--xla_force_host_platform_device_count=N.", flag_values=fv)
  distributed_flags(fv)


def run(fv: flags.FlagValues, args: list[str]) -> int:
  if not fv.workdir and not fv.dry_run:
    raise UsageError("--workdir is required")
  cfg = load_config(fv)
  initialize_distributed(fv)
  from jaxpt.tasks import pretraining
  cfg, notes = pretraining.follow_data(cfg, explicit_config_fields())
  import jax
  if jax.process_index() == 0:
    for note in notes:
      print(f"jaxpt pretrain: {note}", flush=True)
  if fv.dry_run:
    print(pretraining.format_dry_run(pretraining.dry_run(cfg)))
    return 0
  pretraining.pretrain(cfg, fv.workdir, progress=fv.progress)
  return 0
