"""`jaxpt finetune` and `jaxpt evaluate`: classifiers on labelled tasks, and their scores."""

from __future__ import annotations

from absl import flags

from jaxpt.cli.common import (UsageError, config_flag, distributed_flags,
                              initialize_distributed, load_config)

HELP = "fine-tune a classifier on a labelled task (recipe or JSONL/CSV directory)"
EVALUATE_HELP = "score a fine-tuned workdir's best checkpoint: accuracy, P/R/F1, MCC"
DEFAULT_CONFIG = "finetune"  # the packaged preset used when --config is not given


def define(fv: flags.FlagValues) -> None:
  from jaxpt.data.labelled import RECIPES
  config_flag(fv, "A preset name or file (default: the packaged `finetune` preset); override "
              "fields with --config.optim.learning_rate=3e-5, --config.finetune.epochs=5 and "
              "the like.")
  flags.DEFINE_string("workdir", None, "Run directory; re-running with the same one resumes.",
                      flag_values=fv)
  flags.DEFINE_string("task", None, f"A recipe ({', '.join(RECIPES)}) or a directory with "
                      "train/validation/test .jsonl (or .csv / .tsv): columns text, optional "
                      "text_pair, label; or tokens and tags for token classification.",
                      flag_values=fv)
  flags.DEFINE_string("init", "scratch", "Where the encoder starts: a pretraining workdir, an "
                      "import-hf directory, hf:HF_DIR, or scratch (random; the baseline).",
                      flag_values=fv)
  flags.DEFINE_string("tokenizer", None, "vocab.txt / tokenizer.json for --init=scratch "
                      "(default: a WordPiece vocabulary trained on the task's train split, "
                      "config.finetune.scratch_vocab_size); with another --init it must "
                      "equal the weights' own.", flag_values=fv)
  flags.DEFINE_string("like", None, "With --init=scratch: the architecture and tokenizer of "
                      "this pretrained source (a workdir, import-hf or HuggingFace "
                      "directory), the weights random: the baseline that differs from "
                      "--init=SOURCE only by pretraining.", flag_values=fv)
  flags.DEFINE_multi_string("sweep", [], "KEY=V1,V2,...: one run per value (a grid over "
                            "several --sweep flags) in WORKDIR/sweep/, the best by the "
                            "validation metric left in WORKDIR, all in WORKDIR/sweep.json; "
                            "re-running skips finished candidates. E.g. "
                            "--sweep=optim.learning_rate=3e-5,1e-4,3e-4", flag_values=fv)
  flags.DEFINE_boolean("progress", True, "Show a progress bar.", flag_values=fv)
  distributed_flags(fv)


def run(fv: flags.FlagValues, args: list[str]) -> int:
  if not fv.workdir or not fv.task:
    raise UsageError("--workdir and --task are required")
  cfg = load_config(fv)
  initialize_distributed(fv)
  if fv.sweep:
    from jaxpt import sweep
    sweep.run(cfg, fv.sweep, fv.task, fv.init, fv.tokenizer, fv.workdir, progress=fv.progress,
              like=fv.like)
    return 0
  from jaxpt.tasks import classification
  setup = classification.setup(cfg, fv.task, fv.init, fv.tokenizer, fv.like)
  classification.finetune(setup, fv.workdir, progress=fv.progress)
  return 0


def define_evaluate(fv: flags.FlagValues) -> None:
  flags.DEFINE_string("workdir", None, "A `jaxpt finetune` workdir (its best/ checkpoint is "
                      "scored) or a `jaxpt compress` one.", flag_values=fv)
  flags.DEFINE_enum("split", "test", ["train", "validation", "test"], "Split to score.",
                    flag_values=fv)
  flags.DEFINE_string("task", None, "Score on this task instead of the one trained on (same "
                      "labels).", flag_values=fv)
  flags.DEFINE_string("out", None, "JSON report path (default WORKDIR/eval.json for test, "
                      "WORKDIR/eval_SPLIT.json otherwise).", flag_values=fv)


def run_evaluate(fv: flags.FlagValues, args: list[str]) -> int:
  if not fv.workdir:
    raise UsageError("--workdir is required")
  from jaxpt import compress, evaluation
  from jaxpt.tasks import classification
  if compress.is_compressed(fv.workdir):
    report = compress.evaluate(fv.workdir, split=fv.split, task_spec=fv.task, out=fv.out)
  else:
    report = classification.evaluate_workdir(fv.workdir, split=fv.split, task_spec=fv.task,
                                             out=fv.out)
  print(evaluation.format_table(report, f"jaxpt evaluate: {fv.workdir} (best checkpoint, step "
                                        f"{report['step']}) on {fv.split}"))
  return 0
