"""`jaxpt prepare`: text -> cleaned, deduplicated, split documents -> tokenizer -> examples."""

from __future__ import annotations

import os

from absl import flags

from jaxpt.cli.common import UsageError, define_options, options_from

HELP = ("clean and deduplicate text, train a WordPiece or BPE tokenizer, write examples "
        "(tensorstore)")


def define(fv: flags.FlagValues) -> None:
  from jaxpt.data.corpora import RECIPES
  from jaxpt.data.prepare import PrepareOptions
  flags.DEFINE_multi_string("input", [], "Files, folders or globs; repeatable or "
                            "comma-separated. Plain text (documents separated by blank lines, "
                            "a sentence per line), JSONL, CSV/TSV, Parquet (a document per "
                            "row, see --text_column) or a saved `datasets` directory; "
                            ".gz/.zst compressed files too.", flag_values=fv)
  flags.DEFINE_enum("recipe", None, list(RECIPES), "A real corpus to fetch (into the cache) "
                    "and use as input: " + ", ".join(RECIPES), flag_values=fv)
  flags.DEFINE_string("output", None, "Output directory (created; must not hold files unless "
                      "--overwrite).", flag_values=fv)
  flags.DEFINE_string("cache_dir", None, "Where recipes cache downloads (default "
                      "$JAXPT_CACHE or ~/.cache/jaxpt).", flag_values=fv)
  flags.DEFINE_boolean("apt_update", False, "Let a recipe run `apt-get update` when a Debian "
                       "package cannot be downloaded (the package lists may be missing).",
                       flag_values=fv)
  define_options(PrepareOptions, fv)


def run(fv: flags.FlagValues, args: list[str]) -> int:
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
  manifest = prepare(inputs, fv.output, options_from(PrepareOptions, fv))
  splits = ", ".join(f"{name}: {s['examples']} examples ({s['tokens']} tokens)"
                     for name, s in manifest["splits"].items())
  print(f"jaxpt prepare: {fv.output}: vocabulary {manifest['tokenizer']['vocab_size']}, "
        f"{splits}; kept {manifest['cleaning']['documents_kept']} of "
        f"{manifest['cleaning']['documents_in']} documents "
        f"(removed: {manifest['cleaning']['removed']}) in {manifest['seconds']} s, "
        f"{manifest['tokens_per_second']:,} tokens/s")
  for warning in manifest.get("warnings", []):
    print(f"jaxpt prepare: warning: {warning}")
  return 0
