"""`jaxpt plot`: a run's curves as a PNG."""

from __future__ import annotations

from absl import flags

from jaxpt.cli.common import UsageError

HELP = "draw a run's loss, learning rate, throughput and eval curves to a PNG"


def define(fv: flags.FlagValues) -> None:
  flags.DEFINE_string("workdir", None, "A run directory (holding metrics.jsonl).",
                      flag_values=fv)
  flags.DEFINE_string("out", None, "PNG to write (default WORKDIR/metrics.png).",
                      flag_values=fv)


def run(fv: flags.FlagValues, args: list[str]) -> int:
  if not fv.workdir:
    raise UsageError("--workdir is required")
  from jaxpt.train import metrics
  try:
    print(metrics.plot(fv.workdir, fv.out))
  except FileNotFoundError as e:
    raise UsageError(str(e)) from None
  return 0
