"""The GPT-2 name table (`GPT2Model`, `GPT2LMHeadModel`) and its `config.json` fields.

GPT-2's linear layers are `Conv1D`: weights stored `[in, out]`, transposed relative to
`nn.Linear` (entries say `transposed`), and its q, k and v are one fused `c_attn`.
"""

from __future__ import annotations

from jaxpt.config import ModelConfig
from jaxpt.hf.layouts import Entry, HFError

MODEL_TYPES = ("gpt2",)
SEQUENCE: dict[str, str] = {}  # GPT2ForSequenceClassification reads the last token: not here
TOKEN: dict[str, str] = {}
BARE = ("GPT2Model",)
TIED = {"lm_head.weight"}
DUPLICATES: set[str] = set()
MLM_HEAD = ("lm_head.",)
# Buffers older checkpoints store (the causal mask), which carry no weights.
IGNORED = (".attn.bias", ".attn.masked_bias")

FAMILY = dict(variant="gpt2", norm_position="pre", norm="layernorm", norm_bias=True,
              embedding_norm=False, attention_bias=True, mlp_bias=True, mlp="gelu_tanh",
              positions="learned", attention_kind="causal", type_vocab_size=0, pooler=False,
              first_attention_norm=True, lm_head="tied", local_window=0)


ALL_ARCHITECTURES = ("GPT2LMHeadModel", "GPT2Model")


def architectures(cfg: ModelConfig) -> tuple[str, ...]:
  return ALL_ARCHITECTURES


def prefix(cfg: ModelConfig) -> str:
  return "transformer."


def _conv(hf: str, jx: str, layout: str, bias_layout: str = "same", part=None):
  return [(hf + ".weight", Entry(jx + ".kernel", layout, part, transposed=True)),
          (hf + ".bias", Entry(jx + ".bias", bias_layout, part))]


def _norm(hf: str, jx: str):
  return [(hf + ".weight", Entry(jx + ".scale", "same")), (hf + ".bias", Entry(jx + ".bias", "same"))]


def table(cfg: ModelConfig) -> list[tuple[str, Entry]]:
  out = [("transformer.wte.weight", Entry("encoder.embeddings.word.embedding", "same")),
         ("transformer.wpe.weight", Entry("encoder.embeddings.position.embedding", "same"))]
  for i in range(cfg.num_layers):
    hf, j = f"transformer.h.{i}.", f"encoder.layers.{i}."
    out += _norm(hf + "ln_1", j + "attention_norm")
    for index, name in enumerate(("query", "key", "value")):
      out += _conv(hf + "attn.c_attn", j + f"attention.{name}", "qkv_kernel", "heads_bias",
                   (index, 3))
    out += _conv(hf + "attn.c_proj", j + "attention.out", "out_kernel")
    out += _norm(hf + "ln_2", j + "mlp_norm")
    out += _conv(hf + "mlp.c_fc", j + "mlp.up", "linear")
    out += _conv(hf + "mlp.c_proj", j + "mlp.down", "linear")
  return out + _norm("transformer.ln_f", "encoder.final_norm")


def classifier_table(cfg: ModelConfig, kind: str):
  raise HFError("GPT-2 classifiers are not supported: jaxpt's classifiers read [CLS] or the "
                "mean, GPT2ForSequenceClassification the last token")


def heads(cfg: ModelConfig) -> set[str]:
  return set(TIED)


def exported(architecture: str, hf_name: str) -> bool:
  return True


def config_from_hf(hf: dict, source: str) -> ModelConfig:
  for field, want in (("activation_function", "gelu_new"), ("scale_attn_weights", True),
                      ("scale_attn_by_inverse_layer_idx", False),
                      ("reorder_and_upcast_attn", False), ("add_cross_attention", False),
                      ("tie_word_embeddings", True)):
    if hf.get(field, want) != want:
      raise HFError(f"{source}: {field}={hf[field]!r}; jaxpt's GPT-2 has {want!r}")
  resid = float(hf.get("resid_pdrop", 0.1))
  if float(hf.get("embd_pdrop", 0.1)) != resid:
    raise HFError(f"{source}: embd_pdrop={hf['embd_pdrop']} differs from resid_pdrop={resid}; "
                  "jaxpt has one rate for both (model.hidden_dropout)")
  try:
    hidden = int(hf.get("n_embd", 768))
    inner = hf.get("n_inner")
    eos = hf.get("eos_token_id", 50256)
    eos_id = int(eos[0] if isinstance(eos, list) else eos if eos is not None else 50256)
    pad = hf.get("pad_token_id")
    return ModelConfig(
        **FAMILY, vocab_size=int(hf.get("vocab_size", 50257)), hidden_size=hidden,
        num_layers=int(hf.get("n_layer", 12)), num_heads=int(hf.get("n_head", 12)),
        intermediate_size=int(inner) if inner else 4 * hidden,
        max_position_embeddings=int(hf.get("n_positions", 1024)),
        hidden_dropout=resid, attention_dropout=float(hf.get("attn_pdrop", 0.1)),
        layer_norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        initializer_range=float(hf.get("initializer_range", 0.02)), scaled_init=True,
        pad_token_id=int(pad if pad is not None else eos_id),
        eos_token_id=eos_id)
  except (TypeError, ValueError) as e:
    raise HFError(f"{source}: {e}") from None


def config_to_hf(cfg: ModelConfig, architecture: str) -> dict:
  return {
      "architectures": [architecture], "model_type": "gpt2",
      "vocab_size": cfg.vocab_size, "n_embd": cfg.hidden_size, "n_layer": cfg.num_layers,
      "n_head": cfg.num_heads, "n_inner": cfg.intermediate_size,
      "n_positions": cfg.max_position_embeddings, "activation_function": "gelu_new",
      "resid_pdrop": cfg.hidden_dropout, "embd_pdrop": cfg.hidden_dropout,
      "attn_pdrop": cfg.attention_dropout, "layer_norm_epsilon": cfg.layer_norm_eps,
      "initializer_range": cfg.initializer_range, "scale_attn_weights": True,
      "tie_word_embeddings": True, "bos_token_id": cfg.eos_token_id,
      "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id,
  }


def check_exportable(cfg: ModelConfig) -> None:
  for name, want in FAMILY.items():
    if getattr(cfg, name) != want:
      raise HFError(f"model.{name}={getattr(cfg, name)!r}: HuggingFace's GPT-2 has {want!r}")
