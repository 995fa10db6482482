"""The `jaxpt` command: argument parsing and error reporting only; the work is delegated.

  jaxpt prepare  --input=PATH --output=DIR      text -> tokenizer + stored examples
  jaxpt pretrain --config=FILE --workdir=DIR    masked-LM + NSP pretraining, resumable
  jaxpt import-hf / export-hf                   HuggingFace BERT/RoBERTa in and out
  jaxpt fill-mask --workdir=DIR "text [MASK]"   top-k predictions at each mask

A mistake the user can fix (a missing path, a config typo, a mismatched checkpoint) ends with
one line on stderr naming it and exit status 2, before anything is compiled.
"""

from __future__ import annotations

import os
import sys
import textwrap

from absl import flags

from jaxpt.config import resolve_preset
from jaxpt.errors import UserError

COMMANDS = {
    "prepare": "clean text files, train a WordPiece tokenizer, write BERT examples (tensorstore)",
    "pretrain": "pretrain BERT (MLM + NSP) on prepared data; re-run to resume",
    "plot": "draw a run's loss, learning rate, throughput and eval curves to a PNG",
    "import-hf": "HuggingFace BERT/RoBERTa directory -> jaxpt weights that pretrain and "
                 "finetune start from",
    "export-hf": "a jaxpt workdir -> config.json + model.safetensors + tokenizer for "
                 "transformers",
    "fill-mask": "print a model's top-k tokens at each [MASK] of the given texts",
    "finetune": "fine-tune a classifier on a labelled task (recipe or JSONL/CSV directory)",
    "evaluate": "score a fine-tuned workdir's best checkpoint: accuracy, P/R/F1, MCC",
    "compress": "prune (magnitude or attention heads) and int8-quantize a fine-tuned "
                "classifier",
}

USAGE = """usage: jaxpt COMMAND [--flag=value ...]

jaxpt: pretraining and fine-tuning BERT-style models with JAX and Flax NNX.

commands:
{commands}

`jaxpt COMMAND --help` describes a command's flags. Example, the `make pretrain` demo:
  jaxpt prepare --recipe=shakespeare --output=workdirs/shakespeare/data --vocab_size=8192
  jaxpt pretrain --config=shakespeare_tiny --workdir=workdirs/shakespeare
"""




class UsageError(UserError):
  pass


def _user_errors() -> tuple[type[Exception], ...]:
  """Every mistake a user can fix derives from `jaxpt.errors.UserError`; flags adds its own."""
  return (UsageError, UserError, flags.Error)


def _prepare_flags() -> flags.FlagValues:
  from jaxpt.data.corpora import RECIPES
  from jaxpt.data.prepare import PrepareOptions
  d = PrepareOptions()
  fv = flags.FlagValues()
  flags.DEFINE_multi_string("input", [], "Files, folders or globs; repeatable or "
                            "comma-separated. Plain text (documents separated by blank lines, "
                            "a sentence per line), JSONL, CSV/TSV, Parquet (a document per "
                            "row, see --text_column) or a saved `datasets` directory; "
                            ".gz/.zst compressed files too.", flag_values=fv)
  flags.DEFINE_enum("recipe", None, list(RECIPES), "A real corpus to fetch (into the cache) "
                    "and use as input: " + ", ".join(RECIPES), flag_values=fv)
  flags.DEFINE_string("output", None, "Output directory (created; must not hold files unless "
                      "--overwrite).", flag_values=fv)
  flags.DEFINE_string("tokenizer", d.tokenizer, "A vocab.txt or tokenizer.json to use instead "
                      "of training a WordPiece tokenizer.", flag_values=fv)
  flags.DEFINE_integer("vocab_size", d.vocab_size, "Size of the trained vocabulary.",
                       flag_values=fv)
  flags.DEFINE_string("tokenizer_type", d.tokenizer_type, "Tokenizer to train: wordpiece "
                      "(BERT) or bpe (byte-level, RoBERTa).", flag_values=fv)
  flags.DEFINE_string("examples", d.examples, "pairs (BERT sentence pairs with NSP labels) or "
                      "full_sentences (RoBERTa packing across documents, MLM only).",
                      flag_values=fv)
  flags.DEFINE_boolean("pack", d.pack, "Pack several examples into each row (less padding); "
                       "the model keeps them apart.", flag_values=fv)
  flags.DEFINE_integer("max_sequences_per_row", d.max_sequences_per_row, "With --pack: at "
                       "most this many examples per row.", flag_values=fv)
  flags.DEFINE_string("text_column", d.text_column, "The text field of JSONL / CSV / Parquet "
                      "/ datasets inputs.", flag_values=fv)
  flags.DEFINE_string("on_bad_input", d.on_bad_input, "error: stop at the first invalid "
                      "UTF-8 or JSON line (naming file and offset); skip: drop, count and "
                      "report such lines.", flag_values=fv)
  flags.DEFINE_integer("seq_length", d.seq_length, "Tokens per example, [CLS] and [SEP] "
                       "included.", flag_values=fv)
  flags.DEFINE_boolean("lowercase", d.lowercase, "Lower-case text (uncased BERT).",
                       flag_values=fv)
  flags.DEFINE_integer("min_chars", d.min_chars, "Drop documents shorter than this after "
                       "cleaning.", flag_values=fv)
  flags.DEFINE_integer("max_chars", d.max_chars, "Drop documents longer than this after "
                       "cleaning (0: no limit).", flag_values=fv)
  flags.DEFINE_float("near_duplicate_threshold", d.near_duplicate_threshold, "Drop documents "
                     "whose MinHash Jaccard similarity to a kept one reaches this (0: exact "
                     "duplicates only).", flag_values=fv)
  flags.DEFINE_float("validation_fraction", d.validation_fraction, "Fraction of documents "
                     "(by hash of their text) held out for evaluation.", flag_values=fv)
  flags.DEFINE_float("test_fraction", d.test_fraction, "Fraction of documents (by hash of "
                     "their text) held out as a test split.", flag_values=fv)
  flags.DEFINE_integer("shard_documents", d.shard_documents, "Documents tokenized and turned "
                       "into examples at a time (memory; BERT's random next sentence comes "
                       "from the same shard).", flag_values=fv)
  flags.DEFINE_float("short_seq_prob", d.short_seq_prob, "Probability of a shorter target "
                     "length for an example (BERT: 0.1).", flag_values=fv)
  flags.DEFINE_integer("seed", d.seed, "Seed of the example construction.", flag_values=fv)
  flags.DEFINE_boolean("overwrite", d.overwrite, "Replace an existing output directory.",
                       flag_values=fv)
  flags.DEFINE_string("cache_dir", None, "Where recipes cache downloads (default "
                      "$JAXPT_CACHE or ~/.cache/jaxpt).", flag_values=fv)
  flags.DEFINE_boolean("apt_update", False, "Let a recipe run `apt-get update` when a Debian "
                       "package cannot be downloaded (the package lists may be missing).",
                       flag_values=fv)
  flags.DEFINE_boolean("progress", True, "Show progress bars.", flag_values=fv)
  return fv


def _run_prepare(fv: flags.FlagValues, args: list[str]) -> int:
  from jaxpt.data import corpora
  from jaxpt.data.prepare import PrepareOptions, prepare
  if not fv.output:
    raise UsageError("--output is required")
  inputs = list(fv.input)
  if fv.apt_update:
    os.environ[corpora.APT_UPDATE] = "1"
  if fv.recipe:
    inputs.extend(str(d) for d in corpora.fetch(fv.recipe, fv.cache_dir))
  if not inputs:
    raise UsageError("give --input=PATH (or --recipe=NAME)")
  opts = PrepareOptions(
      vocab_size=fv.vocab_size, seq_length=fv.seq_length, tokenizer=fv.tokenizer,
      tokenizer_type=fv.tokenizer_type, examples=fv.examples, pack=fv.pack,
      max_sequences_per_row=fv.max_sequences_per_row, text_column=fv.text_column,
      on_bad_input=fv.on_bad_input, lowercase=fv.lowercase, min_chars=fv.min_chars,
      max_chars=fv.max_chars, near_duplicate_threshold=fv.near_duplicate_threshold,
      validation_fraction=fv.validation_fraction, test_fraction=fv.test_fraction,
      short_seq_prob=fv.short_seq_prob, shard_documents=fv.shard_documents,
      seed=fv.seed, overwrite=fv.overwrite, progress=fv.progress)
  manifest = prepare(inputs, fv.output, opts)
  splits = ", ".join(f"{name}: {s['examples']} examples ({s['tokens']} tokens)"
                     for name, s in manifest["splits"].items())
  print(f"jaxpt prepare: {fv.output}: vocabulary {manifest['tokenizer']['vocab_size']}, "
        f"{splits}; kept {manifest['cleaning']['documents_kept']} of "
        f"{manifest['cleaning']['documents_in']} documents "
        f"(removed: {manifest['cleaning']['removed']}) in {manifest['seconds']} s, "
        f"{manifest['tokens_per_second']:,} tokens/s")
  return 0


def _pretrain_flags() -> flags.FlagValues:
  from ml_collections import config_flags
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file(
      "config", None, "A preset name (bert_tiny, bert_base, ...: jaxpt/configs/) or a preset file; "
      "override fields with "
      "--config.optim.learning_rate=3e-4 and the like.", flag_values=fv, lock_config=True)
  flags.DEFINE_string("workdir", None, "Run directory: checkpoints/, metrics.jsonl, "
                      "tensorboard/. Re-running with the same one resumes.", flag_values=fv)
  flags.DEFINE_boolean("progress", True, "Show a progress bar.", flag_values=fv)
  flags.DEFINE_boolean("dry_run", False, "Compile the sharded train step for the configured "
                       "mesh and report parameters, FLOPs and per-device memory; train nothing. "
                       "Try meshes on fake CPU devices with "
                       "XLA_FLAGS=--xla_force_host_platform_device_count=N.", flag_values=fv)
  _distributed_flags(fv)
  return fv


def _distributed_flags(fv: flags.FlagValues) -> None:
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


def _initialize_distributed(fv: flags.FlagValues) -> None:
  from jaxpt import sharding
  sharding.initialize_distributed(fv.coordinator_address, fv.num_processes, fv.process_id,
                                  auto=fv.distributed, timeout_s=fv.distributed_timeout)


def _load_config(fv: flags.FlagValues):
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


def _run_pretrain(fv: flags.FlagValues, args: list[str]) -> int:
  if not fv.workdir and not fv.dry_run:
    raise UsageError("--workdir is required")
  cfg = _load_config(fv)
  _initialize_distributed(fv)
  from jaxpt.tasks import pretraining
  if fv.dry_run:
    print(pretraining.format_dry_run(pretraining.dry_run(cfg)))
    return 0
  pretraining.pretrain(cfg, fv.workdir, progress=fv.progress)
  return 0


def _plot_flags() -> flags.FlagValues:
  fv = flags.FlagValues()
  flags.DEFINE_string("workdir", None, "A run directory (holding metrics.jsonl).",
                      flag_values=fv)
  flags.DEFINE_string("out", None, "PNG to write (default WORKDIR/metrics.png).",
                      flag_values=fv)
  return fv


def _run_plot(fv: flags.FlagValues, args: list[str]) -> int:
  if not fv.workdir:
    raise UsageError("--workdir is required")
  from jaxpt.train import metrics
  try:
    print(metrics.plot(fv.workdir, fv.out))
  except FileNotFoundError as e:
    raise UsageError(str(e)) from None
  return 0


def _import_flags() -> flags.FlagValues:
  fv = flags.FlagValues()
  flags.DEFINE_string("from", None, "A HuggingFace BERT or RoBERTa directory: config.json, "
                      "model.safetensors, and vocab.txt / tokenizer.json when present.",
                      flag_values=fv)
  flags.DEFINE_string("workdir", None, "New directory to write: params/ (Orbax), model.json, "
                      "tokenizer/, and config.py (a preset with this architecture). "
                      "`jaxpt pretrain --workdir=DIR` continues pretraining from it; "
                      "`--config.train.init_from=DIR` starts another run from it.",
                      flag_values=fv)
  return fv


def _run_import(fv: flags.FlagValues, args: list[str]) -> int:
  source = getattr(fv, "from")
  if not source or not fv.workdir:
    raise UsageError("--from and --workdir are required")
  from jaxpt import hf, pretrained
  imported = hf.import_params(source)
  out = pretrained.write_imported(fv.workdir, imported)
  from jaxpt.models import params as params_lib
  n = params_lib.count(imported.params)
  print(f"jaxpt import-hf: {source} -> {out}: {imported.config.variant}, "
        f"{imported.config.num_layers} layers, hidden {imported.config.hidden_size}, "
        f"{n / 1e6:.2f}M parameters; tokenizer: "
        f"{'yes' if imported.tokenizer is not None else 'none found'}")
  if imported.missing:
    print(f"  freshly initialised (not in the checkpoint): {', '.join(imported.missing)}")
  if imported.unexpected:
    print(f"  ignored (not used by jaxpt): {', '.join(imported.unexpected)}")
  return 0


def _export_flags() -> flags.FlagValues:
  fv = flags.FlagValues()
  flags.DEFINE_string("workdir", None, "A pretraining workdir (its latest checkpoint) or an "
                      "import-hf directory.", flag_values=fv)
  flags.DEFINE_string("to", None, "HuggingFace directory to write (must not exist or be "
                      "empty, unless --overwrite).", flag_values=fv)
  flags.DEFINE_boolean("best", False, "Export the best-eval checkpoint (WORKDIR/best).",
                       flag_values=fv)
  flags.DEFINE_integer("step", None, "Export this checkpoint step instead of the latest.",
                       flag_values=fv)
  flags.DEFINE_enum("architecture", None, ["BertForPreTraining", "BertForMaskedLM", "BertModel",
                                           "RobertaForMaskedLM", "RobertaModel"],
                    "The transformers class the files are for (default: BertForPreTraining, "
                    "or RobertaForMaskedLM for a RoBERTa model).", flag_values=fv)
  flags.DEFINE_boolean("overwrite", False, "Replace an existing --to directory.",
                       flag_values=fv)
  return fv


def _run_export(fv: flags.FlagValues, args: list[str]) -> int:
  if not fv.workdir or not fv.to:
    raise UsageError("--workdir and --to are required")
  from jaxpt import hf, pretrained
  loaded = pretrained.load(fv.workdir, best=fv.best, step=fv.step)
  out = hf.save_bert(fv.to, loaded.params, loaded.config, loaded.tokenizer,
                     architecture=fv.architecture, overwrite=fv.overwrite)
  print(f"jaxpt export-hf: {loaded.source} -> {out} "
        f"({', '.join(sorted(p.name for p in out.iterdir()))})")
  if loaded.tokenizer is None:
    print("  no tokenizer found (WORKDIR/tokenizer or the data directory); add one before "
          "loading with AutoTokenizer")
  return 0


def _fill_mask_flags() -> flags.FlagValues:
  fv = flags.FlagValues()
  flags.DEFINE_string("workdir", None, "A pretraining workdir or an import-hf directory.",
                      flag_values=fv)
  flags.DEFINE_string("hf", None, "A HuggingFace directory (instead of --workdir).",
                      flag_values=fv)
  flags.DEFINE_integer("top_k", 5, "Predictions shown per mask.", flag_values=fv)
  flags.DEFINE_boolean("best", False, "Use the best-eval checkpoint of --workdir.",
                       flag_values=fv)
  return fv


def _run_fill_mask(fv: flags.FlagValues, args: list[str]) -> int:
  if bool(fv.workdir) == bool(fv.hf):
    raise UsageError("give exactly one of --workdir and --hf")
  if not args:
    raise UsageError('give one or more texts, e.g. "The cat sat on the [MASK]."')
  if fv.top_k <= 0:
    raise UsageError(f"--top_k={fv.top_k}: must be positive")
  from jaxpt import fill_mask, hf, pretrained
  loaded = pretrained.load(f"hf:{fv.hf}" if fv.hf else fv.workdir, best=fv.best)
  if loaded.tokenizer is None:
    raise UsageError(f"{loaded.source}: no tokenizer found beside the weights")
  if any(name.startswith(("cls.predictions", "lm_head")) for name in loaded.missing):
    raise UsageError(f"{loaded.source}: has no masked-LM head (e.g. a BertModel); its "
                     "predictions would be random")
  model = hf.build(loaded.config, loaded.params)
  for text, masks in zip(args, fill_mask.predict(model, loaded.tokenizer, args, fv.top_k)):
    print(text)
    for i, best in enumerate(masks):
      shown = "  ".join(f"{token} {p:.3f}" for token, p in best)
      print(f"  mask {i + 1}: {shown}")
  return 0


def _finetune_flags() -> flags.FlagValues:
  from ml_collections import config_flags
  from jaxpt.data.labelled import RECIPES
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file(
      "config", None, "A preset name or file (default: the packaged `finetune` preset); override "
      "fields with --config.optim.learning_rate=3e-5, --config.finetune.epochs=5 and the like.",
      flag_values=fv, lock_config=True)
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
                      "(default: bert-base-uncased's vocabulary); with another --init it must "
                      "equal the weights' own.", flag_values=fv)
  flags.DEFINE_boolean("progress", True, "Show a progress bar.", flag_values=fv)
  _distributed_flags(fv)
  return fv


def _run_finetune(fv: flags.FlagValues, args: list[str]) -> int:
  if not fv.workdir or not fv.task:
    raise UsageError("--workdir and --task are required")
  cfg = _load_config(fv)
  _initialize_distributed(fv)
  from jaxpt.tasks import classification
  setup = classification.setup(cfg, fv.task, fv.init, fv.tokenizer)
  classification.finetune(setup, fv.workdir, progress=fv.progress)
  return 0


def _evaluate_flags() -> flags.FlagValues:
  fv = flags.FlagValues()
  flags.DEFINE_string("workdir", None, "A `jaxpt finetune` workdir (its best/ checkpoint is "
                      "scored) or a `jaxpt compress` one.", flag_values=fv)
  flags.DEFINE_enum("split", "test", ["train", "validation", "test"], "Split to score.",
                    flag_values=fv)
  flags.DEFINE_string("task", None, "Score on this task instead of the one trained on (same "
                      "labels).", flag_values=fv)
  flags.DEFINE_string("out", None, "JSON report path (default WORKDIR/eval.json for test, "
                      "WORKDIR/eval_SPLIT.json otherwise).", flag_values=fv)
  return fv


def _run_evaluate(fv: flags.FlagValues, args: list[str]) -> int:
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


def _compress_flags() -> flags.FlagValues:
  fv = flags.FlagValues()
  flags.DEFINE_string("workdir", None, "A `jaxpt finetune` workdir (its best checkpoint is "
                      "compressed).", flag_values=fv)
  flags.DEFINE_string("out", None, "The compressed workdir to write (`jaxpt evaluate "
                      "--workdir=OUT` scores it).", flag_values=fv)
  flags.DEFINE_float("prune", 0.0, "Sparsity in [0, 1): the fraction of the encoder's dense "
                     "weights (magnitude) or of its attention heads (heads) removed.",
                     flag_values=fv)
  flags.DEFINE_string("scheme", "magnitude", "Pruning scheme: magnitude (global, "
                      "unstructured) or heads (attention heads by importance).", flag_values=fv)
  flags.DEFINE_integer("recover_steps", 0, "Fine-tune this many steps after pruning with the "
                       "mask held (0: no recovery).", flag_values=fv)
  flags.DEFINE_string("quantize", "none", "none, int8 (int8 weights of the dense layers, "
                      "per output channel) or w8a8 (also int8 activations, dynamic).",
                      flag_values=fv)
  flags.DEFINE_boolean("overwrite", False, "Replace --out if it exists.", flag_values=fv)
  flags.DEFINE_boolean("progress", True, "Show a progress bar (recovery).", flag_values=fv)
  return fv


def _run_compress(fv: flags.FlagValues, args: list[str]) -> int:
  if not fv.workdir or not fv.out:
    raise UsageError("--workdir and --out are required")
  from jaxpt import compress
  opts = compress.Options(prune=fv.prune, scheme=fv.scheme, recover_steps=fv.recover_steps,
                          quantize=fv.quantize, overwrite=fv.overwrite)
  record = compress.compress(fv.workdir, fv.out, opts, progress=fv.progress)
  s = record["sparsity"]
  print(f"jaxpt compress: {fv.out}: sparsity {s['sparsity']:.3f} of {s['prunable_weights']:,} "
        f"prunable weights; quantize {record['quantize']}; weights "
        f"{record['dense_bytes'] / 2**20:.2f} MiB -> {record['weight_bytes'] / 2**20:.2f} MiB "
        f"({record['disk_bytes'] / 2**20:.2f} MiB on disk)")
  return 0


_FLAGS = {"prepare": (_prepare_flags, _run_prepare), "pretrain": (_pretrain_flags, _run_pretrain),
          "plot": (_plot_flags, _run_plot), "import-hf": (_import_flags, _run_import),
          "export-hf": (_export_flags, _run_export),
          "fill-mask": (_fill_mask_flags, _run_fill_mask),
          "finetune": (_finetune_flags, _run_finetune),
          "evaluate": (_evaluate_flags, _run_evaluate),
          "compress": (_compress_flags, _run_compress)}
_POSITIONAL = {"fill-mask"}  # commands that take arguments besides flags


def _resolve_config_flag(arg: str) -> str:
  """--config=NAME -> --config=PATH of the packaged preset (a file path stays as it is)."""
  if arg.startswith("--config="):
    return "--config=" + resolve_preset(arg.split("=", 1)[1])
  return arg


def _usage() -> str:
  width = max(len(c) for c in COMMANDS)
  return USAGE.format(commands="\n".join(f"  {c:<{width}}  {h}" for c, h in COMMANDS.items()))


def _parse(fv: flags.FlagValues, argv: list[str], positional: bool = False) -> list[str]:
  try:
    rest = fv(argv)
  except flags.Error as e:
    raise UsageError(str(e).splitlines()[0]) from None
  except (KeyError, AttributeError, TypeError, ValueError) as e:
    # ml_collections reports an unknown --config.key as KeyError, a bad type as TypeError.
    message = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
    raise UsageError(message.splitlines()[0]) from None
  if len(rest) > 1 and not positional:
    raise UsageError(f"unexpected argument {rest[1]!r}")
  return rest[1:]


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(_usage())
    return 0
  command = argv[1]
  if command not in _FLAGS:
    print(f"jaxpt: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
    return 2
  define, run = _FLAGS[command]
  rest = argv[2:]
  if command == "finetune" and not any(a == "--config" or a.startswith("--config=")
                                       for a in rest):
    # The default preset; given as a flag so that --config.KEY=VALUE overrides apply to it.
    rest = ["--config=finetune"] + rest
  fv = define()
  if any(a in ("-h", "--help", "--helpfull") for a in argv[2:]):
    print(f"usage: jaxpt {command} [--flag=value ...]\n\n{COMMANDS[command]}\n")
    print(textwrap.indent(fv.get_help(include_special_flags=False), ""))
    return 0
  # ml_collections' config_flags reads the --config.KEY overrides from sys.argv while parsing:
  # make it this command line (main() is also called with an explicit argv, as in tests).
  saved_argv = sys.argv
  try:
    rest = [_resolve_config_flag(a) for a in rest]
    sys.argv = [f"jaxpt {command}"] + rest
    args = _parse(fv, [f"jaxpt {command}"] + rest, command in _POSITIONAL)
    return run(fv, args)
  except _user_errors() as e:  # the one place user errors are reported
    print(f"jaxpt {command}: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt as e:
    print(f"jaxpt {command}: interrupted" + (f"; {e}" if str(e) else ""), file=sys.stderr)
    return 130
  finally:
    sys.argv = saved_argv


if __name__ == "__main__":
  sys.exit(main())
