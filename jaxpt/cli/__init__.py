"""The `jaxpt` command: one small module per command (parse, call, print); the work is the
library's. This module dispatches and is the one place user errors are reported.

A mistake the user can fix (a missing path, a config typo, a mismatched checkpoint) ends with
one line on stderr naming it and exit status 2, before anything is compiled.
"""

from __future__ import annotations

import sys
import textwrap

from absl import flags

from jaxpt.cli import (allocator, compress, fill_mask, finetune, fusion, generate, hf, plot,
                       prepare, pretrain)
from jaxpt.cli.common import UsageError
from jaxpt.config import resolve_preset
from jaxpt.errors import UserError

# name -> (one-line help, define flags, run, takes positional arguments)
COMMANDS = {
    "prepare": (prepare.HELP, prepare.define, prepare.run, False),
    "pretrain": (pretrain.HELP, pretrain.define, pretrain.run, False),
    "plot": (plot.HELP, plot.define, plot.run, False),
    "import-hf": (hf.IMPORT_HELP, hf.define_import, hf.run_import, False),
    "export-hf": (hf.EXPORT_HELP, hf.define_export, hf.run_export, False),
    "fill-mask": (fill_mask.HELP, fill_mask.define, fill_mask.run, True),
    "generate": (generate.HELP, generate.define, generate.run, True),
    "finetune": (finetune.HELP, finetune.define, finetune.run, False),
    "evaluate": (finetune.EVALUATE_HELP, finetune.define_evaluate, finetune.run_evaluate, False),
    "ensemble": (fusion.ENSEMBLE_HELP, fusion.define_ensemble, fusion.run_ensemble, False),
    "average": (fusion.AVERAGE_HELP, fusion.define_average, fusion.run_average, False),
    "compress": (compress.HELP, compress.define, compress.run, False),
}

USAGE = """usage: jaxpt COMMAND [--flag=value ...]

jaxpt: pretraining and fine-tuning Transformer language models with JAX and Flax NNX.

commands:
{commands}

`jaxpt COMMAND --help` describes a command's flags. Example, the `make pretrain` demo:
  jaxpt prepare --recipe=shakespeare --output=workdirs/shakespeare/data --vocab_size=8192
  jaxpt pretrain --config=shakespeare_tiny --workdir=workdirs/shakespeare
"""


def _usage() -> str:
  width = max(len(c) for c in COMMANDS)
  return USAGE.format(commands="\n".join(f"  {c:<{width}}  {h[0]}" for c, h in COMMANDS.items()))


def _resolve_config_flag(arg: str) -> str:
  """--config=NAME -> --config=PATH of the packaged preset (a file path stays as it is)."""
  if arg.startswith("--config="):
    return "--config=" + resolve_preset(arg.split("=", 1)[1])
  return arg


def _parse(fv: flags.FlagValues, argv: list[str], positional: bool) -> list[str]:
  try:
    rest = fv(argv)
  except flags.Error as e:
    raise UsageError(str(e).splitlines()[0]) from None
  except (KeyError, AttributeError, TypeError, ValueError) as e:
    # ml_collections reports an unknown --config.key as KeyError, a bad type as TypeError.
    message = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
    raise UsageError(message.splitlines()[0] + _did_you_mean(argv)) from None
  if len(rest) > 1 and not positional:
    raise UsageError(f"unexpected argument {rest[1]!r}")
  return rest[1:]


def _did_you_mean(argv: list[str]) -> str:
  """"; did you mean --config.train.num_steps?" for a --config.KEY that does not exist."""
  from jaxpt import config
  fields = config.field_names()
  for arg in argv:
    if arg.startswith("--config."):
      key = arg[len("--config."):].split("=", 1)[0]
      if key not in fields and config.suggestion(key):
        return config.suggestion(key).replace("mean ", "mean --config.")
  return ""


def main(argv: list[str] | None = None) -> int:
  if argv is None:  # the `jaxpt` command itself, not a call from Python with its own argv
    allocator.reexec_with_huge_pages()
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2:  # no command: usage, and a failing status for scripts
    print(_usage(), file=sys.stderr)
    return 2
  if argv[1] in ("-h", "--help", "help"):
    print(_usage())
    return 0
  command = argv[1]
  if command not in COMMANDS:
    print(f"jaxpt: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
    return 2
  help_text, define, run, positional = COMMANDS[command]
  rest = argv[2:]
  if command == "finetune" and not any(a == "--config" or a.startswith("--config=")
                                       for a in rest):
    # The default preset; given as a flag so that --config.KEY=VALUE overrides apply to it.
    rest = [f"--config={finetune.DEFAULT_CONFIG}"] + rest
  fv = flags.FlagValues()
  define(fv)
  if any(a in ("-h", "--help", "--helpfull") for a in argv[2:]):
    print(f"usage: jaxpt {command} [--flag=value ...]\n\n{help_text}\n")
    print(textwrap.indent(fv.get_help(include_special_flags=False), ""))
    return 0
  # ml_collections' config_flags reads the --config.KEY overrides from sys.argv while parsing:
  # make it this command line (main() is also called with an explicit argv, as in tests).
  saved_argv = sys.argv
  try:
    rest = [_resolve_config_flag(a) for a in rest]
    sys.argv = [f"jaxpt {command}"] + rest
    args = _parse(fv, [f"jaxpt {command}"] + rest, positional)
    return run(fv, args)
  except (UserError, flags.Error) as e:  # the one place user errors are reported
    print(f"jaxpt {command}: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt as e:
    print(f"jaxpt {command}: interrupted" + (f"; {e}" if str(e) else ""), file=sys.stderr)
    return 130
  finally:
    sys.argv = saved_argv


if __name__ == "__main__":
  sys.exit(main())
