"""`jaxpt generate`: continue prompts with a causal LM (a decoder workdir or a HuggingFace
GPT-2 / ModernBERT-decoder directory)."""

from __future__ import annotations

from absl import flags

from jaxpt.cli.common import UsageError, define_model_source, load_model_source

HELP = "continue the given prompts with a causal LM and print the decode speed"
POSITIONAL = True  # the prompts


def define(fv: flags.FlagValues) -> None:
  define_model_source(fv, "A causal-LM pretraining workdir or an import-hf directory.")
  flags.DEFINE_integer("max_new_tokens", 40, "Tokens to generate per prompt (fewer when the "
                       "end-of-text token comes first).", flag_values=fv)
  flags.DEFINE_float("temperature", 0.0, "0: greedy; otherwise sample from logits / T.",
                     flag_values=fv)
  flags.DEFINE_integer("top_k", 0, "Sample only among the k likeliest tokens (0: all).",
                       flag_values=fv)
  flags.DEFINE_float("top_p", 1.0, "Sample only within the smallest set of tokens whose "
                     "probability reaches p (1: all).", flag_values=fv)
  flags.DEFINE_integer("seed", 0, "Seed of the sampling: the same seed, the same text.",
                       flag_values=fv)
  flags.DEFINE_boolean("truncate", False, "Keep the last tokens of a prompt too long for the "
                       "model's positions (saying how many were cut) instead of refusing it.",
                       flag_values=fv)


def run(fv: flags.FlagValues, args: list[str]) -> int:
  if not args:
    raise UsageError('give one or more prompts, e.g. "To be, or not to be"')
  from jaxpt import hf
  from jaxpt.models import generation
  loaded = load_model_source(fv, "generation needs a causal LM")
  cfg = loaded.config
  if cfg.attention_kind != "causal":
    raise UsageError(f"{loaded.source}: a bidirectional {cfg.variant} encoder; generation "
                     "needs a causal LM (model.attention_kind='causal', e.g. GPT-2); for an "
                     "encoder use `jaxpt fill-mask`")
  if loaded.tokenizer is None:
    raise UsageError(f"{loaded.source}: no tokenizer found beside the weights")
  tok = loaded.tokenizer
  eos, start = cfg.eos_token_id, []
  if eos < 0:  # a jaxpt-trained decoder: its rows are [CLS] / <s> text [SEP] / </s>
    from jaxpt.data import tokenizer as tok_lib
    special = tok_lib.special_ids(tok)
    eos, start = special["sep"], [special["cls"]]
  prompts = []
  limit = cfg.max_position_embeddings - fv.max_new_tokens
  for i, text in enumerate(args):
    ids = start + tok.encode(text, add_special_tokens=False).ids
    if limit < 1:
      raise UsageError(f"--max_new_tokens={fv.max_new_tokens}: the model has only "
                       f"{cfg.max_position_embeddings} positions")
    if len(ids) > limit:
      if not fv.truncate:
        raise UsageError(f"prompt {i + 1} has {len(ids)} tokens; with --max_new_tokens="
                         f"{fv.max_new_tokens} the model's {cfg.max_position_embeddings} "
                         f"positions allow {limit} (pass --truncate to keep the last {limit})")
      print(f"prompt {i + 1}: cut {len(ids) - limit} tokens from the start (--truncate)")
      ids = ids[len(ids) - limit:]
    prompts.append(ids)
  model = hf.build(cfg, loaded.params)
  out, stats = generation.generate(model, prompts, fv.max_new_tokens, fv.temperature,
                                   fv.top_k, fv.top_p, fv.seed, eos_token_id=eos,
                                   return_stats=True)
  for text, prompt, ids in zip(args, prompts, out):
    print(text + tok.decode(ids[len(prompt):], skip_special_tokens=True))
    print()
  print(f"jaxpt generate: {stats.new_tokens} tokens for {len(prompts)} prompts in "
        f"{stats.steps} decode steps, {stats.decode_tokens_per_second:,.0f} tokens/s "
        f"(prefill {stats.prefill_seconds * 1e3:.0f} ms, compile {stats.compile_seconds:.1f} s)")
  return 0

