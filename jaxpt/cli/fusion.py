"""`jaxpt ensemble` and `jaxpt average`: fine-tuned runs fused by their predictions or their
weights."""

from __future__ import annotations

from absl import flags

from jaxpt.cli.common import UsageError

ENSEMBLE_HELP = "average the predicted probabilities of fine-tuned runs; score on a split"
AVERAGE_HELP = ("average weights: fine-tuned runs of one start (a model soup), or a run's "
                "last checkpoints")


def _common(fv: flags.FlagValues, out_help: str) -> None:
  flags.DEFINE_list("workdirs", None, "`jaxpt finetune` workdirs, comma-separated (their best "
                    "checkpoints).", flag_values=fv)
  flags.DEFINE_string("out", None, out_help, flag_values=fv)
  flags.DEFINE_string("task", None, "Score on this task instead of the one trained on (same "
                      "labels).", flag_values=fv)


def _workdirs(fv: flags.FlagValues) -> list[str]:
  if not fv.workdirs or not fv.out:
    raise UsageError("--workdirs and --out are required")
  return fv.workdirs


def define_ensemble(fv: flags.FlagValues) -> None:
  _common(fv, "Directory for the report: OUT/eval.json (OUT/eval_SPLIT.json for another "
          "split).")
  flags.DEFINE_enum("split", "test", ["train", "validation", "test"], "Split to score.",
                    flag_values=fv)


def run_ensemble(fv: flags.FlagValues, args: list[str]) -> int:
  from jaxpt import evaluation, fusion
  report = fusion.ensemble(_workdirs(fv), fv.out, split=fv.split, task_spec=fv.task)
  print(evaluation.format_table(report, f"jaxpt ensemble: {len(fv.workdirs)} runs on "
                                        f"{fv.split}"))
  _members(report)
  return 0


def define_average(fv: flags.FlagValues) -> None:
  _common(fv, "The average: for --workdirs a fine-tuning workdir (task.json, tokenizer/, "
          "best/, eval.json); for --workdir an import-hf style directory (params/, "
          "model.json, tokenizer/) that --init, train.init_from and export-hf take.")
  flags.DEFINE_string("workdir", None, "A pretraining (or any) run whose checkpoints to "
                      "average (with --last or --steps), instead of --workdirs.",
                      flag_values=fv)
  flags.DEFINE_integer("last", 0, "With --workdir: average its N newest checkpoints.",
                       flag_values=fv)
  flags.DEFINE_list("steps", None, "With --workdir: average these checkpoint steps.",
                    flag_values=fv)
  flags.DEFINE_boolean("greedy", False, "A greedy soup: runs in order of validation score, "
                       "each kept only if the soup's validation score does not fall.",
                       flag_values=fv)
  flags.DEFINE_boolean("overwrite", False, "Replace an existing --out.", flag_values=fv)


def run_average(fv: flags.FlagValues, args: list[str]) -> int:
  from jaxpt import evaluation, fusion
  if fv.workdir:
    if fv.workdirs:
      raise UsageError("--workdir (one run's checkpoints) or --workdirs (fine-tuned runs), "
                       "not both")
    if not fv.out:
      raise UsageError("--out is required")
    from jaxpt import pretrained
    try:
      steps = [int(s) for s in fv.steps or []]
    except ValueError:
      raise UsageError(f"--steps={','.join(fv.steps)}: expected step numbers") from None
    out, steps = pretrained.average_checkpoints(fv.workdir, fv.out, last=fv.last, steps=steps)
    print(f"jaxpt average: {fv.workdir}, steps {', '.join(map(str, steps))} -> {out}")
    return 0
  report = fusion.soup(_workdirs(fv), fv.out, greedy=fv.greedy, task_spec=fv.task,
                       overwrite=fv.overwrite)
  kind = "greedy soup" if fv.greedy else "uniform soup"
  chosen = sum(m["chosen"] for m in report["members"])
  print(evaluation.format_table(report, f"jaxpt average: {kind} of {chosen} of "
                                        f"{len(fv.workdirs)} runs, on the test split"))
  _members(report)
  return 0


def _members(report: dict) -> None:
  for m in report["members"]:
    values = "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                       for k, v in m.items() if k != "workdir")
    print(f"  member {m['workdir']}: {values}")
