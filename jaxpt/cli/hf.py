"""`jaxpt import-hf` and `jaxpt export-hf`: HuggingFace directories in and out."""

from __future__ import annotations

from absl import flags

from jaxpt.cli.common import UsageError

IMPORT_HELP = ("HuggingFace BERT/RoBERTa/ModernBERT directory -> jaxpt weights that pretrain "
               "and finetune start from")
EXPORT_HELP = "a jaxpt workdir -> config.json + model.safetensors + tokenizer for transformers"


def define_import(fv: flags.FlagValues) -> None:
  flags.DEFINE_string("from", None, "A HuggingFace BERT, RoBERTa or ModernBERT directory: "
                      "config.json, model.safetensors, and vocab.txt / tokenizer.json when "
                      "present.", flag_values=fv)
  flags.DEFINE_string("workdir", None, "New directory to write: params/ (Orbax), model.json, "
                      "tokenizer/, and config.py (a preset with this architecture). "
                      "`jaxpt pretrain --workdir=DIR` continues pretraining from it; "
                      "`--config.train.init_from=DIR` starts another run from it.",
                      flag_values=fv)


def run_import(fv: flags.FlagValues, args: list[str]) -> int:
  source = getattr(fv, "from")
  if not source or not fv.workdir:
    raise UsageError("--from and --workdir are required")
  from jaxpt import hf, pretrained
  from jaxpt.models import params as params_lib
  imported = hf.import_params(source)
  out = pretrained.write_imported(fv.workdir, imported)
  cfg = imported.config
  print(f"jaxpt import-hf: {source} -> {out}: {cfg.variant}, {cfg.num_layers} layers, hidden "
        f"{cfg.hidden_size}, {params_lib.count(imported.params) / 1e6:.2f}M parameters; "
        f"tokenizer: {'yes' if imported.tokenizer is not None else 'none found'}")
  if imported.missing:
    print(f"  freshly initialised (not in the checkpoint): {', '.join(imported.missing)}")
  if imported.unexpected:
    print(f"  ignored (not used by jaxpt): {', '.join(imported.unexpected)}")
  return 0


def define_export(fv: flags.FlagValues) -> None:
  from jaxpt.hf import bert, gpt2, modernbert  # the name tables: light modules
  flags.DEFINE_string("workdir", None, "A pretraining workdir (its latest checkpoint), an "
                      "import-hf directory, or a fine-tuning workdir (its best checkpoint, as "
                      "the family's *ForSequenceClassification / *ForTokenClassification "
                      "with its labels).", flag_values=fv)
  flags.DEFINE_string("to", None, "HuggingFace directory to write (must not exist or be "
                      "empty, unless --overwrite).", flag_values=fv)
  flags.DEFINE_boolean("best", False, "Export the best-eval checkpoint (WORKDIR/best).",
                       flag_values=fv)
  flags.DEFINE_integer("step", None, "Export this checkpoint step instead of the latest.",
                       flag_values=fv)
  flags.DEFINE_enum("architecture", None,
                    [a for table in (bert, modernbert, gpt2) for group in (
                        table.ALL_ARCHITECTURES, table.SEQUENCE.values(),
                        table.TOKEN.values()) for a in group],
                    "The transformers class the files are for (default: the family's class "
                    "with every head: BertForPreTraining, RobertaForMaskedLM, "
                    "ModernBertForMaskedLM, GPT2LMHeadModel, ModernBertDecoderForCausalLM).",
                    flag_values=fv)
  flags.DEFINE_boolean("overwrite", False, "Replace an existing --to directory.",
                       flag_values=fv)


def run_export(fv: flags.FlagValues, args: list[str]) -> int:
  if not fv.workdir or not fv.to:
    raise UsageError("--workdir and --to are required")
  from jaxpt import hf, pretrained
  task = pretrained.task_info(fv.workdir)  # a fine-tuning workdir: its classifier goes out
  loaded = pretrained.load(fv.workdir, best=fv.best or (task is not None and fv.step is None),
                           step=fv.step)
  if task is None:
    out = hf.save_model(fv.to, loaded.params, loaded.config, loaded.tokenizer,
                        architecture=fv.architecture, overwrite=fv.overwrite)
  else:
    table = hf.family(loaded.config.variant)
    own = (table.SEQUENCE if task["kind"] == "sequence" else table.TOKEN)[loaded.config.variant]
    if fv.architecture not in (None, own):
      raise UsageError(f"--architecture={fv.architecture}: {fv.workdir} is a fine-tuned "
                       f"{task['kind']} classifier; it exports as {own}")
    out = hf.save_classifier(fv.to, loaded.params, loaded.config, task["labels"], task["kind"],
                             loaded.tokenizer, overwrite=fv.overwrite)
  print(f"jaxpt export-hf: {loaded.source} -> {out} "
        f"({', '.join(sorted(p.name for p in out.iterdir()))})")
  if loaded.tokenizer is None:
    print("  no tokenizer found (WORKDIR/tokenizer or the data directory); add one before "
          "loading with AutoTokenizer")
  return 0
