"""`jaxpt fill-mask`: a model's top-k tokens at each [MASK] of the given texts."""

from __future__ import annotations

from absl import flags

from jaxpt.cli.common import UsageError, define_model_source, load_model_source

HELP = "print a model's top-k tokens at each [MASK] of the given texts"
POSITIONAL = True  # the texts


def define(fv: flags.FlagValues) -> None:
  define_model_source(fv, "A pretraining workdir or an import-hf directory.")
  flags.DEFINE_integer("top_k", 5, "Predictions shown per mask.", flag_values=fv)


def run(fv: flags.FlagValues, args: list[str]) -> int:
  if not args:
    raise UsageError('give one or more texts, e.g. "The cat sat on the [MASK]."')
  if fv.top_k <= 0:
    raise UsageError(f"--top_k={fv.top_k}: must be positive")
  from jaxpt import fill_mask, hf
  loaded = load_model_source(fv, "it has no masked-LM head to fill masks with (use its "
                                 "pretraining workdir or `jaxpt evaluate`)")
  if loaded.config.attention_kind == "causal":
    raise UsageError(f"{loaded.source}: a causal LM (a decoder); filling masks needs a "
                     "bidirectional encoder with a masked-LM head (use `jaxpt generate`)")
  if loaded.tokenizer is None:
    raise UsageError(f"{loaded.source}: no tokenizer found beside the weights")
  if any(n.startswith(hf.family(loaded.config.variant).MLM_HEAD) for n in loaded.missing):
    raise UsageError(f"{loaded.source}: has no masked-LM head (e.g. a BertModel); its "
                     "predictions would be random")
  model = hf.build(loaded.config, loaded.params)
  for text, masks in zip(args, fill_mask.predict(model, loaded.tokenizer, args, fv.top_k)):
    print(text)
    for i, best in enumerate(masks):
      shown = "  ".join(f"{token} {p:.3f}" for token, p in best)
      print(f"  mask {i + 1}: {shown}")
  return 0
