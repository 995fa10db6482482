"""The ModernBERT name table (`ModernBertModel`, `ModernBertForMaskedLM`, and the decoder of
Ettin: `ModernBertDecoderModel`, `ModernBertDecoderForCausalLM`) and its `config.json` fields
(transformers 5.x names, and the older `global_attn_every_n_layers`, `global_rope_theta`,
`local_rope_theta`).

The decoder is the same stack with causal attention, separate q/k/v projections and an
`lm_head` where the encoder has `head`; its local layers see `local_attention / 2` tokens
ending at the query (jaxpt's causal `local_window`)."""

from __future__ import annotations

from jaxpt.config import ModelConfig
from jaxpt.hf.layouts import Entry, HFError

MODEL_TYPES = ("modernbert", "modernbert-decoder")
IGNORED: tuple[str, ...] = ()
ALL_ARCHITECTURES = ("ModernBertForMaskedLM", "ModernBertModel", "ModernBertDecoderForCausalLM",
                     "ModernBertDecoderModel")
SEQUENCE = {"modernbert": "ModernBertForSequenceClassification"}
TOKEN = {"modernbert": "ModernBertForTokenClassification"}
BARE = ("ModernBertModel", "ModernBertDecoderModel")
TIED = {"decoder.weight"}
DUPLICATES: set[str] = set()
MLM_HEAD = ("head.", "lm_head.", "decoder.")  # prefixes of the LM head's tensors
_GLOBAL, _LOCAL = "full_attention", "sliding_attention"

# The fixed choices of the family: what makes a ModelConfig a ModernBERT.
FAMILY = dict(variant="modernbert", norm_position="pre", norm="layernorm", norm_bias=False,
              embedding_norm=True, attention_bias=False, mlp_bias=False, mlp="geglu",
              positions="rope", attention_kind="bidirectional", type_vocab_size=0,
              pooler=False, first_attention_norm=False, lm_head="transform")


def architectures(cfg: ModelConfig) -> tuple[str, ...]:
  if cfg.attention_kind == "causal":
    return ("ModernBertDecoderForCausalLM", "ModernBertDecoderModel")
  return ("ModernBertForMaskedLM", "ModernBertModel")


def prefix(cfg: ModelConfig) -> str:
  return "model."


def _norm(hf: str, jx: str, cfg: ModelConfig) -> list[tuple[str, Entry]]:
  out = [(hf + ".weight", Entry(jx + ".scale", "same"))]
  return out + ([(hf + ".bias", Entry(jx + ".bias", "same"))] if cfg.norm_bias else [])


def _linear(hf: str, jx: str, layout: str, bias: bool, bias_layout: str = "same",
            part=None) -> list[tuple[str, Entry]]:
  out = [(hf + ".weight", Entry(jx + ".kernel", layout, part))]
  return out + ([(hf + ".bias", Entry(jx + ".bias", bias_layout, part))] if bias else [])


def table(cfg: ModelConfig) -> list[tuple[str, Entry]]:
  """(HF name, jaxpt entry) pairs; a fused tensor appears once per part."""
  decoder = cfg.attention_kind == "causal"
  out = [("model.embeddings.tok_embeddings.weight",
          Entry("encoder.embeddings.word.embedding", "same"))]
  out += _norm("model.embeddings.norm", "encoder.embeddings.norm", cfg)
  for i in range(cfg.num_layers):
    hf, j = f"model.layers.{i}.", f"encoder.layers.{i}."
    if i > 0:  # layer 0 has no attention norm (an identity)
      out += _norm(hf + "attn_norm", j + "attention_norm", cfg)
    for index, name in enumerate(("query", "key", "value")):
      if decoder:  # separate projections
        out += _linear(hf + f"attn.{name[0]}_proj", j + f"attention.{name}", "qkv_kernel",
                       cfg.attention_bias, "heads_bias")
      else:
        out += _linear(hf + "attn.Wqkv", j + f"attention.{name}", "qkv_kernel",
                       cfg.attention_bias, "heads_bias", (index, 3))
    out += _linear(hf + "attn.Wo", j + "attention.out", "out_kernel", cfg.attention_bias)
    out += _norm(hf + "mlp_norm", j + "mlp_norm", cfg)
    # Wi's rows are the GeGLU's input (activated: jaxpt's `gate`), then its gate (`up`).
    out += _linear(hf + "mlp.Wi", j + "mlp.gate", "linear", cfg.mlp_bias, part=(0, 2))
    out += _linear(hf + "mlp.Wi", j + "mlp.up", "linear", cfg.mlp_bias, part=(1, 2))
    out += _linear(hf + "mlp.Wo", j + "mlp.down", "linear", cfg.mlp_bias)
  out += _norm("model.final_norm", "encoder.final_norm", cfg)
  head = "lm_head" if decoder else "head"
  out += _linear(head + ".dense", "mlm.transform", "linear", cfg.head_bias)
  out += _norm(head + ".norm", "mlm.norm", cfg)
  return out + [("decoder.bias", Entry("mlm.bias", "same"))]


def classifier_table(cfg: ModelConfig, kind: str) -> list[tuple[str, Entry]]:
  """ModernBertFor{Sequence,Token}Classification: the encoder, `head` (dense, activation,
  norm) and the classifier, for both kinds."""
  if cfg.attention_kind == "causal":
    raise HFError("ModernBERT decoder classifiers are not supported: jaxpt's classifiers read "
                  "[CLS] or the mean, ModernBertDecoderForSequenceClassification the last token")
  out = [(n, e) for n, e in table(cfg) if n.startswith("model.")]
  out += _linear("head.dense", "head.transform", "linear", cfg.head_bias)
  out += _norm("head.norm", "head.norm", cfg)
  return out + _linear("classifier", "classifier", "linear", True)


def heads(cfg: ModelConfig) -> set[str]:
  return {n for n, _ in table(cfg) if not n.startswith("model.")} | TIED


def exported(architecture: str, hf_name: str) -> bool:
  return architecture not in BARE or hf_name.startswith("model.")


def _layer_pattern(hf: dict, layers: int, source: str) -> int:
  """global_every from `layer_types` (or `global_attn_every_n_layers`); other patterns are
  refused by name."""
  kinds = hf.get("layer_types")
  if kinds is None:
    return int(hf.get("global_attn_every_n_layers", 3))
  unknown = sorted(set(kinds) - {_GLOBAL, _LOCAL})
  if unknown:
    raise HFError(f"{source}: layer_types has {unknown[0]!r}; jaxpt knows {_GLOBAL!r} and "
                  f"{_LOCAL!r}")
  if len(kinds) != layers:
    raise HFError(f"{source}: layer_types has {len(kinds)} entries for "
                  f"num_hidden_layers={layers}")
  for every in range(1, layers + 1):
    if kinds == [_LOCAL if i % every else _GLOBAL for i in range(layers)]:
      return every
  if all(k == _GLOBAL for k in kinds):
    return 1
  raise HFError(f"{source}: layer_types={kinds}: jaxpt's layers are global every n-th "
                "layer from layer 0 (global_every), which this pattern is not")


def _theta(hf: dict, kind: str, old: str, default: float, source: str) -> float:
  params = (hf.get("rope_parameters") or {}).get(kind) or {}
  rope_type = params.get("rope_type", "default")
  if rope_type != "default":
    raise HFError(f"{source}: rope_parameters[{kind!r}].rope_type={rope_type!r}; only "
                  "'default' rotary embeddings are supported")
  return float(params.get("rope_theta", hf.get(old, default)))


def config_from_hf(hf: dict, source: str) -> ModelConfig:
  for field, want in (("hidden_activation", "gelu"), ("classifier_activation", "gelu"),
                      ("tie_word_embeddings", True), ("decoder_bias", True)):
    if hf.get(field, want) != want:
      raise HFError(f"{source}: {field}={hf[field]!r}; jaxpt's ModernBERT has {want!r}")
  if float(hf.get("mlp_dropout", 0.0)) != float(hf.get("embedding_dropout", 0.0)):
    raise HFError(f"{source}: mlp_dropout={hf['mlp_dropout']} differs from embedding_dropout="
                  f"{hf.get('embedding_dropout', 0.0)}; jaxpt has one rate for both "
                  "(model.hidden_dropout)")
  decoder = hf.get("model_type") == "modernbert-decoder"
  try:
    layers = int(hf["num_hidden_layers"])
    local = int(hf.get("local_attention", 128))
    if decoder:  # a causal local layer sees local_attention // 2 tokens, itself included
      local //= 2
    every = _layer_pattern(hf, layers, source)
    return ModelConfig(
        **dict(FAMILY, norm_bias=bool(hf.get("norm_bias", False)),
               attention_kind="causal" if decoder else "bidirectional",
               attention_bias=bool(hf.get("attention_bias", False)),
               mlp_bias=bool(hf.get("mlp_bias", False))),
        vocab_size=int(hf["vocab_size"]), hidden_size=int(hf["hidden_size"]),
        num_layers=layers, num_heads=int(hf["num_attention_heads"]),
        intermediate_size=int(hf["intermediate_size"]),
        max_position_embeddings=int(hf.get("max_position_embeddings", 8192)),
        hidden_dropout=float(hf.get("embedding_dropout", 0.0)),
        attention_dropout=float(hf.get("attention_dropout", 0.0)),
        layer_norm_eps=float(hf.get("norm_eps", 1e-5)),
        initializer_range=float(hf.get("initializer_range", 0.02)), scaled_init=True,
        head_bias=bool(hf.get("classifier_bias", False)),
        classifier_pooling=str(hf.get("classifier_pooling", "cls")),
        rope_theta=_theta(hf, _GLOBAL, "global_rope_theta", 160_000.0, source),
        rope_theta_local=_theta(hf, _LOCAL, "local_rope_theta", 10_000.0, source),
        local_window=local if every > 1 else 0, global_every=every,
        pad_token_id=int(hf.get("pad_token_id", 50283)),
        eos_token_id=_eos(hf) if decoder else -1)
  except KeyError as e:
    raise HFError(f"{source}: missing field {e.args[0]!r}") from None


def _eos(hf: dict) -> int:
  eos = hf.get("eos_token_id", 50282)
  return int(eos[0] if isinstance(eos, list) else eos if eos is not None else -1)


def config_to_hf(cfg: ModelConfig, architecture: str) -> dict:
  kinds = [_LOCAL if local else _GLOBAL for local in
           (cfg.local_window > 0 and i % cfg.global_every != 0 for i in range(cfg.num_layers))]
  decoder = cfg.attention_kind == "causal"
  local = (cfg.local_window or 64) * 2 if decoder else cfg.local_window or 128
  out = {
      "architectures": [architecture],
      "model_type": "modernbert-decoder" if decoder else "modernbert",
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
      "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
      "intermediate_size": cfg.intermediate_size, "hidden_activation": "gelu",
      "max_position_embeddings": cfg.max_position_embeddings,
      "initializer_range": cfg.initializer_range, "norm_eps": cfg.layer_norm_eps,
      "norm_bias": cfg.norm_bias, "attention_bias": cfg.attention_bias,
      "mlp_bias": cfg.mlp_bias, "classifier_bias": cfg.head_bias, "decoder_bias": True,
      "embedding_dropout": cfg.hidden_dropout, "mlp_dropout": cfg.hidden_dropout,
      "attention_dropout": cfg.attention_dropout,
      "local_attention": local, "layer_types": kinds,
      "rope_parameters": {_GLOBAL: {"rope_type": "default", "rope_theta": cfg.rope_theta},
                          _LOCAL: {"rope_type": "default", "rope_theta": cfg.rope_theta_local}},
      "pad_token_id": cfg.pad_token_id, "tie_word_embeddings": True,
      "classifier_pooling": cfg.classifier_pooling, "classifier_activation": "gelu",
  }
  if decoder:  # the end of a document: [SEP] in ModernBERT's vocabulary
    out.update(eos_token_id=cfg.eos_token_id, sep_token_id=cfg.eos_token_id)
  return out


def check_exportable(cfg: ModelConfig) -> None:
  for name, want in FAMILY.items():
    if name in ("norm_bias", "attention_bias", "mlp_bias", "attention_kind"):
      continue
    if getattr(cfg, name) != want:
      raise HFError(f"model.{name}={getattr(cfg, name)!r}: HuggingFace's ModernBERT has "
                    f"{want!r}")
