"""The BERT and RoBERTa name table (`BertModel`, `BertForPreTraining`, `BertForMaskedLM`,
`RobertaModel`, `RobertaForMaskedLM`) and their `config.json` fields."""

from __future__ import annotations

from jaxpt.config import ModelConfig
from jaxpt.hf.layouts import Entry, HFError

MODEL_TYPES = ("bert", "roberta")
_ARCHITECTURES = {"bert": ("BertForPreTraining", "BertForMaskedLM", "BertModel"),
                  "roberta": ("RobertaForMaskedLM", "RobertaModel")}
ALL_ARCHITECTURES = tuple(a for group in _ARCHITECTURES.values() for a in group)
IGNORED: tuple[str, ...] = ()
SEQUENCE = {"bert": "BertForSequenceClassification", "roberta": "RobertaForSequenceClassification"}
TOKEN = {"bert": "BertForTokenClassification", "roberta": "RobertaForTokenClassification"}
BARE = ("BertModel", "RobertaModel")  # saved without the `bert.` / `roberta.` prefix
# Tensors HuggingFace may store that carry nothing new: tied copies and duplicates.
TIED = {"cls.predictions.decoder.weight", "lm_head.decoder.weight"}
DUPLICATES = {"cls.predictions.decoder.bias", "lm_head.decoder.bias"}
MLM_HEAD = ("cls.predictions.", "lm_head.")  # prefixes of the masked-LM head's tensors

# HF tensor suffix under the encoder layer -> (jaxpt path under encoder.layers.<i>, layout).
_LAYER = {
    "attention.self.query.weight": ("attention.query.kernel", "qkv_kernel"),
    "attention.self.query.bias": ("attention.query.bias", "heads_bias"),
    "attention.self.key.weight": ("attention.key.kernel", "qkv_kernel"),
    "attention.self.key.bias": ("attention.key.bias", "heads_bias"),
    "attention.self.value.weight": ("attention.value.kernel", "qkv_kernel"),
    "attention.self.value.bias": ("attention.value.bias", "heads_bias"),
    "attention.output.dense.weight": ("attention.out.kernel", "out_kernel"),
    "attention.output.dense.bias": ("attention.out.bias", "same"),
    "attention.output.LayerNorm.weight": ("attention_norm.scale", "same"),
    "attention.output.LayerNorm.bias": ("attention_norm.bias", "same"),
    "intermediate.dense.weight": ("mlp.up.kernel", "linear"),
    "intermediate.dense.bias": ("mlp.up.bias", "same"),
    "output.dense.weight": ("mlp.down.kernel", "linear"),
    "output.dense.bias": ("mlp.down.bias", "same"),
    "output.LayerNorm.weight": ("mlp_norm.scale", "same"),
    "output.LayerNorm.bias": ("mlp_norm.bias", "same"),
}
_ENCODER = {  # under the `bert.` / `roberta.` prefix
    "embeddings.word_embeddings.weight": ("encoder.embeddings.word.embedding", "same"),
    "embeddings.position_embeddings.weight": ("encoder.embeddings.position.embedding", "same"),
    "embeddings.token_type_embeddings.weight": ("encoder.embeddings.token_type.embedding", "same"),
    "embeddings.LayerNorm.weight": ("encoder.embeddings.norm.scale", "same"),
    "embeddings.LayerNorm.bias": ("encoder.embeddings.norm.bias", "same"),
    "pooler.dense.weight": ("pooler.kernel", "linear"),
    "pooler.dense.bias": ("pooler.bias", "same"),
}
_HEADS = {
    "bert": {
        "cls.predictions.transform.dense.weight": ("mlm.transform.kernel", "linear"),
        "cls.predictions.transform.dense.bias": ("mlm.transform.bias", "same"),
        "cls.predictions.transform.LayerNorm.weight": ("mlm.norm.scale", "same"),
        "cls.predictions.transform.LayerNorm.bias": ("mlm.norm.bias", "same"),
        "cls.predictions.bias": ("mlm.bias", "same"),
        "cls.seq_relationship.weight": ("nsp.kernel", "linear"),
        "cls.seq_relationship.bias": ("nsp.bias", "same"),
    },
    "roberta": {
        "lm_head.dense.weight": ("mlm.transform.kernel", "linear"),
        "lm_head.dense.bias": ("mlm.transform.bias", "same"),
        "lm_head.layer_norm.weight": ("mlm.norm.scale", "same"),
        "lm_head.layer_norm.bias": ("mlm.norm.bias", "same"),
        "lm_head.bias": ("mlm.bias", "same"),
    },
}


def architectures(cfg: ModelConfig) -> tuple[str, ...]:
  """The transformers classes of this family, the default (every head) first."""
  return _ARCHITECTURES[cfg.variant]


def prefix(cfg: ModelConfig) -> str:
  return "bert." if cfg.variant == "bert" else "roberta."


def table(cfg: ModelConfig) -> list[tuple[str, Entry]]:
  """(HF name with its prefix, jaxpt entry) for every tensor; layers unrolled."""
  p = prefix(cfg)
  out = [(p + k, Entry(*v)) for k, v in _ENCODER.items()]
  for i in range(cfg.num_layers):
    out += [(f"{p}encoder.layer.{i}.{k}", Entry(f"encoder.layers.{i}.{path}", layout))
            for k, (path, layout) in _LAYER.items()]
  return out + [(k, Entry(*v)) for k, v in _HEADS[cfg.variant].items()]


def classifier_table(cfg: ModelConfig, kind: str) -> list[tuple[str, Entry]]:
  """The tensors of Bert/RobertaFor{Sequence,Token}Classification: the encoder; for sequences
  BERT's pooler, or RoBERTa's `classifier.dense` (the same tanh dense over <s>); the
  classifier."""
  p = prefix(cfg)
  out = [(n, e) for n, e in table(cfg) if n.startswith(p) and ".pooler." not in n]
  linear = lambda hf, jx: [(hf + ".weight", Entry(jx + ".kernel", "linear")),
                           (hf + ".bias", Entry(jx + ".bias", "same"))]
  if kind == "sequence" and cfg.variant == "bert":
    return out + linear(p + "pooler.dense", "pooler") + linear("classifier", "classifier")
  if kind == "sequence":
    return out + linear("classifier.dense", "pooler") + linear("classifier.out_proj",
                                                               "classifier")
  return out + linear("classifier", "classifier")


def heads(cfg: ModelConfig) -> set[str]:
  """HF names outside the encoder prefix (the heads, and their tied copies)."""
  return set(_HEADS[cfg.variant]) | TIED | DUPLICATES


def exported(architecture: str, hf_name: str) -> bool:
  """Whether `architecture` holds the tensor `hf_name` (a prefixed name of `table`)."""
  if architecture in BARE and not hf_name.startswith(("bert.", "roberta.")):
    return False
  # The MLM-only classes have no pooler; writing one would be an unexpected key.
  if ".pooler." in hf_name and architecture not in ("BertForPreTraining", *BARE):
    return False
  return not (architecture == "BertForMaskedLM" and hf_name.startswith("cls.seq_relationship"))


def config_from_hf(hf: dict, source: str) -> ModelConfig:
  model_type = hf.get("model_type")
  act = hf.get("hidden_act", "gelu")
  if act != "gelu":
    raise HFError(f"{source}: hidden_act={act!r}; jaxpt's BERT uses the exact (erf) 'gelu'")
  pos = hf.get("position_embedding_type", "absolute")
  if pos != "absolute":
    raise HFError(f"{source}: position_embedding_type={pos!r}; only 'absolute' is supported")
  if hf.get("is_decoder") or hf.get("add_cross_attention"):
    raise HFError(f"{source}: a decoder configuration (is_decoder/add_cross_attention)")
  try:
    return ModelConfig(
        variant=model_type, vocab_size=int(hf["vocab_size"]),
        hidden_size=int(hf["hidden_size"]), num_layers=int(hf["num_hidden_layers"]),
        num_heads=int(hf["num_attention_heads"]),
        intermediate_size=int(hf["intermediate_size"]),
        max_position_embeddings=int(hf["max_position_embeddings"]),
        type_vocab_size=int(hf.get("type_vocab_size", 2)),
        hidden_dropout=float(hf.get("hidden_dropout_prob", 0.1)),
        attention_dropout=float(hf.get("attention_probs_dropout_prob", 0.1)),
        layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
        initializer_range=float(hf.get("initializer_range", 0.02)),
        pad_token_id=int(hf.get("pad_token_id") if hf.get("pad_token_id") is not None
                         else (1 if model_type == "roberta" else 0)))
  except KeyError as e:
    raise HFError(f"{source}: missing field {e.args[0]!r}") from None


def config_to_hf(cfg: ModelConfig, architecture: str) -> dict:
  hf = {
      "architectures": [architecture], "model_type": cfg.variant,
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
      "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
      "intermediate_size": cfg.intermediate_size, "hidden_act": "gelu",
      "hidden_dropout_prob": cfg.hidden_dropout,
      "attention_probs_dropout_prob": cfg.attention_dropout,
      "max_position_embeddings": cfg.max_position_embeddings,
      "type_vocab_size": cfg.type_vocab_size, "initializer_range": cfg.initializer_range,
      "layer_norm_eps": cfg.layer_norm_eps, "pad_token_id": cfg.pad_token_id,
      "position_embedding_type": "absolute", "tie_word_embeddings": True,
  }
  if cfg.variant == "roberta":
    hf.update(bos_token_id=0, eos_token_id=2)
  return hf


def check_exportable(cfg: ModelConfig) -> None:
  """The block choices BERT's classes can hold (a pre-LN or rotary model is not a BERT)."""
  base = ModelConfig()
  for name in ("norm_position", "norm", "norm_bias", "embedding_norm", "attention_bias",
               "mlp_bias", "head_bias", "mlp", "positions", "attention_kind", "local_window",
               "pooler", "lm_head"):
    if getattr(cfg, name) != getattr(base, name):
      raise HFError(f"model.{name}={getattr(cfg, name)!r}: HuggingFace's {cfg.variant} "
                    f"classes have {getattr(base, name)!r}")
