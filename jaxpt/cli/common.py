"""What every command shares: the usage error, options dataclasses turned into flags, the
`--config` flag and its loading, where a model comes from (--workdir / --hf / --best), and
the flags of multi-process runs."""

from __future__ import annotations

import dataclasses
import typing

from absl import flags

from jaxpt.errors import UserError


class UsageError(UserError):
  """A command line that cannot run: a missing or contradictory flag."""


_DEFINE = {bool: flags.DEFINE_boolean, int: flags.DEFINE_integer,
           float: flags.DEFINE_float, str: flags.DEFINE_string}


def define_options(cls, fv: flags.FlagValues) -> None:
  """One flag per field of the options dataclass `cls` (declared with `config.option`): same
  name, default, type and help; the allowed values, when a field lists them, in the help."""
  hints = typing.get_type_hints(cls)
  for field in dataclasses.fields(cls):
    help_text = field.metadata.get("help", "")
    if field.metadata.get("choices"):
      help_text += " One of: " + ", ".join(field.metadata["choices"]) + "."
    _DEFINE[hints[field.name]](field.name, field.default, help_text, flag_values=fv,
                               module_name=cls.__module__)


def options_from(cls, fv: flags.FlagValues):
  """The options dataclass `cls` filled from the parsed flags `define_options` declared."""
  return cls(**{field.name: fv[field.name].value for field in dataclasses.fields(cls)})


def define_model_source(fv: flags.FlagValues, workdir_help: str) -> None:
  """--workdir, --hf and --best: where a command that uses a trained model takes it from."""
  flags.DEFINE_string("workdir", None, workdir_help, flag_values=fv)
  flags.DEFINE_string("hf", None, "A HuggingFace directory (instead of --workdir).",
                      flag_values=fv)
  flags.DEFINE_boolean("best", False, "Use the best-eval checkpoint of --workdir.",
                       flag_values=fv)


def load_model_source(fv: flags.FlagValues, classifier_refusal: str):
  """The `pretrained.Pretrained` the flags of `define_model_source` name; a fine-tuning
  workdir is refused with `classifier_refusal` (why this command cannot use it)."""
  if bool(fv.workdir) == bool(fv.hf):
    raise UsageError("give exactly one of --workdir and --hf")
  from jaxpt import pretrained
  if fv.workdir and pretrained.task_info(fv.workdir) is not None:
    raise UsageError(f"{fv.workdir}: a fine-tuned classifier; {classifier_refusal}")
  return pretrained.load(f"hf:{fv.hf}" if fv.hf else fv.workdir, best=fv.best)


def config_flag(fv: flags.FlagValues, help_text: str) -> None:
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, help_text, flag_values=fv, lock_config=True)


def load_config(fv: flags.FlagValues):
  """The parsed --config, or a one-line UsageError (config_flags defers load failures)."""
  from jaxpt.config import Config
  cfg = fv.config
  if cfg is None:
    raise UsageError("--config is required (e.g. --config=bert_tiny)")
  if not isinstance(cfg, Config):
    try:
      cfg.model  # an _ErrorConfig raises the deferred load error here
    except (IOError, AttributeError) as e:
      reason = [line.strip() for line in str(e).splitlines() if line.strip()][-1]
      raise UsageError(f"--config={fv['config'].config_filename}: {reason}") from None
    raise UsageError(f"--config={fv['config'].config_filename}: get_config() must return a "
                     f"jaxpt.config.Config, got {type(cfg).__name__}")
  return cfg


def distributed_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_boolean("distributed", False, "Join a multi-process run whose layout JAX "
                       "detects (TPU pod, SLURM, Open MPI).", flag_values=fv)
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for a multi-process "
                      "run started by hand (with --num_processes and --process_id).",
                      flag_values=fv)
  flags.DEFINE_integer("num_processes", None, "Processes in the run.", flag_values=fv)
  flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).",
                       flag_values=fv)
  flags.DEFINE_integer("distributed_timeout", 300, "Seconds to wait for peers at start-up, and "
                       "for a silent peer mid-run, before ending with an error.",
                       flag_values=fv)


def initialize_distributed(fv: flags.FlagValues) -> None:
  from jaxpt import sharding
  sharding.initialize_distributed(fv.coordinator_address, fv.num_processes, fv.process_id,
                                  auto=fv.distributed, timeout_s=fv.distributed_timeout)


def explicit_config_fields() -> set[str]:
  """The config fields this command line sets (`--config.model.vocab_size=8192` ->
  "model.vocab_size"); `jaxpt.cli.main` puts the command line in sys.argv while it runs."""
  import sys
  return {a[len("--config."):].split("=", 1)[0] for a in sys.argv[1:]
          if a.startswith("--config.")}
