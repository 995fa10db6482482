"""HuggingFace BERT and RoBERTa checkpoints in and out: `config.json` + `model.safetensors`.

The mapping is one table (`_LAYER`, `_TOP`): each HuggingFace tensor name, the jaxpt parameter
it becomes and how its layout changes. PyTorch `nn.Linear` stores `[out, in]`; jaxpt kernels
are `[in, out]`, and the attention projections keep heads as their own axis
(`[embed, heads, head_dim]`, `[heads, head_dim, embed]`) so that tensor parallelism can split
them. Weights are read and written only as safetensors; a PyTorch `.bin` file is read with
`torch.load(weights_only=True)` when torch is installed and refused otherwise; other pickle
formats are refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import jax
import numpy as np
from flax import nnx
from safetensors.numpy import load_file, save_file

from jaxpt import files
from jaxpt.config import ModelConfig, validate_model
from jaxpt.data import tokenizer as tok_lib
from jaxpt.errors import UserError
from jaxpt.models import bert

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
TORCH_WEIGHTS = "pytorch_model.bin"
_UNSAFE = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin")


class HFError(UserError, ValueError):
  """A HuggingFace directory jaxpt cannot use; the message names the file and the field."""


# HF tensor suffix -> (jaxpt path under the encoder layer / model, layout).
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
    "embeddings.word_embeddings.weight": ("bert.embeddings.word.embedding", "same"),
    "embeddings.position_embeddings.weight": ("bert.embeddings.position.embedding", "same"),
    "embeddings.token_type_embeddings.weight": ("bert.embeddings.token_type.embedding", "same"),
    "embeddings.LayerNorm.weight": ("bert.embeddings.norm.scale", "same"),
    "embeddings.LayerNorm.bias": ("bert.embeddings.norm.bias", "same"),
    "pooler.dense.weight": ("bert.pooler.kernel", "linear"),
    "pooler.dense.bias": ("bert.pooler.bias", "same"),
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
# Tensors HuggingFace may store that carry nothing new: buffers and tied copies.
_TIED = {"cls.predictions.decoder.weight", "lm_head.decoder.weight"}
_DUPLICATES = {"cls.predictions.decoder.bias", "lm_head.decoder.bias"}
_ARCHITECTURES = {"bert": ("BertForPreTraining", "BertForMaskedLM", "BertModel"),
                  "roberta": ("RobertaForMaskedLM", "RobertaModel")}


def _to_jaxpt(x: np.ndarray, layout: str, cfg: ModelConfig) -> np.ndarray:
  n, d = cfg.num_heads, cfg.head_dim
  if layout == "same":
    return x
  if layout == "linear":
    return x.T
  if layout == "qkv_kernel":  # [heads * head_dim, embed] -> [embed, heads, head_dim]
    return x.T.reshape(x.shape[1], n, d)
  if layout == "heads_bias":
    return x.reshape(n, d)
  if layout == "out_kernel":  # [embed, heads * head_dim] -> [heads, head_dim, embed]
    return x.T.reshape(n, d, x.shape[0])
  raise AssertionError(layout)


def _to_hf(x: np.ndarray, layout: str) -> np.ndarray:
  if layout == "same":
    return x
  if layout == "linear":
    return x.T
  if layout == "qkv_kernel":
    return x.reshape(x.shape[0], -1).T
  if layout == "heads_bias":
    return x.reshape(-1)
  if layout == "out_kernel":
    return x.reshape(-1, x.shape[-1]).T
  raise AssertionError(layout)


def _table(cfg: ModelConfig) -> dict[str, tuple[str, str]]:
  """Every HF name (with its prefix) -> (dotted jaxpt path, layout); layers unrolled."""
  prefix = "bert." if cfg.variant == "bert" else "roberta."
  table = {prefix + k: v for k, v in _ENCODER.items()}
  for i in range(cfg.num_layers):
    for k, (path, layout) in _LAYER.items():
      table[f"{prefix}encoder.layer.{i}.{k}"] = (f"bert.layers.{i}.{path}", layout)
  table.update(_HEADS[cfg.variant])
  return table


# ---------------------------------------------------------------------------------------------
# jaxpt parameters as flat {dotted path: array}, layers always unrolled.


def flatten(params: dict, cfg: ModelConfig) -> dict[str, np.ndarray]:
  """A pure-dict parameter tree -> {dotted path: numpy array}; stacked (scan) layers unrolled."""
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    if not isinstance(leaf, jax.ShapeDtypeStruct):  # abstract trees stay abstract
      leaf = np.asarray(jax.device_get(leaf))
    flat[".".join(str(k.key) for k in path)] = leaf
  if cfg.scan_layers:  # bert.layers.<sub> [layers, ...] -> bert.layers.<i>.<sub>
    for name in [n for n in flat if n.startswith("bert.layers.")]:
      stacked = flat.pop(name)
      sub = name[len("bert.layers."):]
      for i in range(cfg.num_layers):
        flat[f"bert.layers.{i}.{sub}"] = (
            jax.ShapeDtypeStruct(stacked.shape[1:], stacked.dtype)
            if isinstance(stacked, jax.ShapeDtypeStruct) else stacked[i])
  return flat


def unflatten(flat: dict[str, np.ndarray], cfg: ModelConfig) -> dict:
  """The inverse of `flatten`: a pure dict shaped like the model's parameters."""
  flat = dict(flat)
  if cfg.scan_layers:
    subs = sorted({n.split(".", 3)[3] for n in flat if n.startswith("bert.layers.")})
    for sub in subs:
      flat[f"bert.layers.{sub}"] = np.stack(
          [flat.pop(f"bert.layers.{i}.{sub}") for i in range(cfg.num_layers)])
  tree: dict = {}
  for name, value in flat.items():
    keys = [int(k) if k.isdigit() else k for k in name.split(".")]
    node = tree
    for k in keys[:-1]:
      node = node.setdefault(k, {})
    node[keys[-1]] = value
  return tree


# ---------------------------------------------------------------------------------------------
# Configs.


def config_from_hf(hf: dict, source: str = CONFIG) -> ModelConfig:
  """A HuggingFace `config.json` dict -> ModelConfig; anything not BERT/RoBERTa is an error."""
  model_type = hf.get("model_type")
  if model_type not in ("bert", "roberta"):
    raise HFError(f"{source}: model_type={model_type!r} is not a BERT or RoBERTa model")
  act = hf.get("hidden_act", "gelu")
  if act != "gelu":
    raise HFError(f"{source}: hidden_act={act!r}; jaxpt's BERT uses the exact (erf) 'gelu'")
  pos = hf.get("position_embedding_type", "absolute")
  if pos != "absolute":
    raise HFError(f"{source}: position_embedding_type={pos!r}; only 'absolute' is supported")
  if hf.get("is_decoder") or hf.get("add_cross_attention"):
    raise HFError(f"{source}: a decoder configuration (is_decoder/add_cross_attention)")
  try:
    cfg = ModelConfig(
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
  try:
    return validate_model(cfg)
  except ValueError as e:
    raise HFError(f"{source}: {e}") from None


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


# ---------------------------------------------------------------------------------------------
# Weights.


def read_weights(directory: pathlib.Path) -> tuple[dict[str, np.ndarray], str]:
  """(name -> array, file it came from). Safetensors preferred; `.bin` only with weights_only."""
  single, index = directory / WEIGHTS, directory / WEIGHTS_INDEX
  if single.exists():
    try:
      return load_file(str(single)), str(single)
    except Exception as e:  # safetensors raises its own error types
      raise HFError(f"{single}: not a readable safetensors file ({e})") from None
  if index.exists():
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    tensors = {}
    for shard in shards:
      tensors.update(load_file(str(directory / shard)))
    return tensors, str(index)
  torch_file = directory / TORCH_WEIGHTS
  if torch_file.exists():
    return _read_torch(torch_file), str(torch_file)
  unsafe = sorted(p.name for p in directory.iterdir() if p.suffix in _UNSAFE)
  if unsafe:
    raise HFError(f"{directory}: only pickle weight files ({', '.join(unsafe)}); jaxpt reads "
                  f"{WEIGHTS} (or {TORCH_WEIGHTS} with torch's weights_only loader). Convert "
                  "them with safetensors, from a trusted environment")
  raise HFError(f"{directory}: no {WEIGHTS} (nor {WEIGHTS_INDEX}, {TORCH_WEIGHTS})")


def _read_torch(path: pathlib.Path) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError:
    raise HFError(f"{path}: a PyTorch pickle; install torch to read it with "
                  "weights_only=True, or convert it to model.safetensors") from None
  try:  # weights_only: tensors and plain containers only; arbitrary objects are refused
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:
    raise HFError(f"{path}: refused by torch.load(weights_only=True): {e}") from None
  return {k: v.float().numpy() if v.dtype.is_floating_point else v.numpy()
          for k, v in state.items()}


@dataclasses.dataclass
class Imported:
  config: ModelConfig
  params: dict  # pure dict of numpy arrays, shaped like BertForPreTraining's parameters
  tokenizer: object | None  # tokenizers.Tokenizer, when the directory has one
  missing: list[str]  # jaxpt parameters (HF names) not in the checkpoint: freshly initialised
  unexpected: list[str]  # checkpoint tensors jaxpt does not use
  source: str


def import_params(directory: str | os.PathLike, *, seed: int = 0,
                  **config_changes) -> Imported:
  """Reads a HuggingFace directory into jaxpt parameters (numpy), checking every shape."""
  directory = pathlib.Path(directory)
  config_path = directory / CONFIG
  if not directory.is_dir():
    raise HFError(f"{directory}: not a directory")
  if not config_path.exists():
    raise HFError(f"{directory}: no {CONFIG}; not a HuggingFace model directory")
  try:
    hf_config = json.loads(config_path.read_text())
  except json.JSONDecodeError as e:
    raise HFError(f"{config_path}: not valid JSON ({e})") from None
  cfg = config_from_hf(hf_config, str(config_path))
  if config_changes:
    cfg = validate_model(dataclasses.replace(cfg, **config_changes))
  tensors, weights_file = read_weights(directory)

  # Names may lack the `bert.`/`roberta.` prefix (a bare BertModel).
  prefix = "bert." if cfg.variant == "bert" else "roberta."
  heads = set(_HEADS[cfg.variant]) | _TIED | _DUPLICATES
  tensors = {(k if k.startswith(prefix) or k in heads else prefix + k): v
             for k, v in tensors.items()}

  fresh = flatten(_init_params(cfg, seed), cfg)
  flat, missing, used = {}, [], set()
  for hf_name, (path, layout) in _table(cfg).items():
    want = fresh[path].shape
    if hf_name not in tensors:
      missing.append(hf_name)
      flat[path] = fresh[path]
      continue
    x = np.asarray(tensors[hf_name], np.float32)
    expected = _to_hf(np.empty(want, np.float32), layout).shape
    if x.shape != expected:
      raise HFError(f"{weights_file}: {hf_name} has shape {tuple(x.shape)}; {CONFIG} "
                    f"implies {tuple(expected)}")
    flat[path] = _to_jaxpt(x, layout, cfg)
    used.add(hf_name)
  word = flat["bert.embeddings.word.embedding"]
  for name in _TIED & set(tensors):
    used.add(name)
    if not np.array_equal(np.asarray(tensors[name], np.float32), word):
      raise HFError(f"{weights_file}: {name} differs from the word embeddings; jaxpt ties "
                    "the MLM decoder to them (tie_word_embeddings=false is not supported)")
  used |= _DUPLICATES & set(tensors)
  unexpected = sorted(k for k in tensors if k not in used and not k.endswith("position_ids")
                      and not k.endswith("token_type_ids"))
  tokenizer = _load_tokenizer(directory, cfg)
  return Imported(cfg, unflatten(flat, cfg), tokenizer, sorted(missing), unexpected,
                  str(directory))


def abstract_params(cfg: ModelConfig) -> dict:
  """The parameter tree of `cfg`'s model as ShapeDtypeStructs (nothing allocated)."""
  with nnx.use_eager_sharding(False):
    model = nnx.eval_shape(lambda: bert.BertForPreTraining(cfg, rngs=nnx.Rngs(0)))
  return nnx.state(model, nnx.Param).to_pure_dict()


def _init_params(cfg: ModelConfig, seed: int) -> dict:
  with nnx.use_eager_sharding(False):
    model = bert.BertForPreTraining(cfg, rngs=nnx.Rngs(params=seed))
  return nnx.state(model, nnx.Param).to_pure_dict()


def _load_tokenizer(directory: pathlib.Path, cfg: ModelConfig):
  """tokenizer.json, else vocab.txt (BERT) or vocab.json + merges.txt (RoBERTa); else None."""
  lowercase = True
  tc = directory / "tokenizer_config.json"
  if tc.exists():
    lowercase = bool(json.loads(tc.read_text()).get("do_lower_case", True))
  for name in ("tokenizer.json", "vocab.txt"):
    if (directory / name).exists():
      tok = tok_lib.load(str(directory / name), lowercase=lowercase)
      break
  else:
    if (directory / "vocab.json").exists() and (directory / "merges.txt").exists():
      tok = tok_lib.load_bpe(str(directory / "vocab.json"), str(directory / "merges.txt"))
    else:
      return None
  size = tok.get_vocab_size()
  if size != cfg.vocab_size:
    raise HFError(f"{directory}: the tokenizer has {size} tokens but the word embeddings "
                  f"have {cfg.vocab_size} rows (config.json vocab_size)")
  return tok


def load_bert(directory: str | os.PathLike, *, dtype: str = "float32", seed: int = 0):
  """(BertForPreTraining, Imported) from a HuggingFace BERT or RoBERTa directory.

  Heads missing from the checkpoint (a `BertModel` has no MLM or NSP head) are freshly
  initialised from `seed` and listed in `Imported.missing`.
  """
  imported = import_params(directory, seed=seed, dtype=dtype)
  return build(imported.config, imported.params), imported


def load_model(directory: str | os.PathLike, *, dtype: str = "float32", seed: int = 0):
  """(model, info) from a HuggingFace directory of any supported architecture (BERT and
  RoBERTa, with or without heads). `model.encode(input_ids, attention_mask, token_type_ids)`
  gives the last hidden states and `model.mlm_logits(...)` the masked-LM logits; `info`
  holds the config, the parameters as numpy arrays, the tokenizer (or None), and the heads
  that were freshly initialised (`info.missing`) because the checkpoint had none."""
  return load_bert(directory, dtype=dtype, seed=seed)


def save_model(directory: str | os.PathLike, model_or_params, config: ModelConfig,
               tokenizer=None, architecture: str | None = None, *,
               overwrite: bool = False) -> pathlib.Path:
  """Writes a model (an nnx module from `load_model`, or its pure parameter dict) as a
  HuggingFace directory for `architecture` (default: every head the model has)."""
  params = model_or_params
  if isinstance(model_or_params, nnx.Module):
    params = nnx.state(model_or_params, nnx.Param).to_pure_dict()
  params = jax.tree.map(np.asarray, params)
  return save_bert(directory, params, config, tokenizer, architecture=architecture,
                   overwrite=overwrite)


def build(cfg: ModelConfig, params: dict) -> bert.BertForPreTraining:
  """A BertForPreTraining module holding `params` (a pure dict)."""
  with nnx.use_eager_sharding(False):
    model = nnx.eval_shape(lambda: bert.BertForPreTraining(cfg, rngs=nnx.Rngs(0)))
  state = nnx.state(model, nnx.Param)
  state.replace_by_pure_dict(jax.tree.map(jax.numpy.asarray, params))
  nnx.update(model, state)
  return model


def export_tensors(params: dict, cfg: ModelConfig, *, heads: bool = True,
                   pooler: bool = True) -> dict[str, np.ndarray]:
  """jaxpt parameters -> HuggingFace tensor names and layouts (float32, contiguous)."""
  flat = flatten(params, cfg)
  out = {}
  for hf_name, (path, layout) in _table(cfg).items():
    if not heads and not hf_name.startswith(("bert.", "roberta.")):
      continue
    if not pooler and ".pooler." in hf_name:
      continue
    out[hf_name] = np.ascontiguousarray(_to_hf(flat[path], layout), np.float32)
  return out


def save_bert(directory: str | os.PathLike, params: dict, cfg: ModelConfig, tokenizer=None, *,
              architecture: str | None = None, overwrite: bool = False) -> pathlib.Path:
  """Writes config.json, model.safetensors and tokenizer files for `transformers`.

  The default architecture is BertForPreTraining (all heads) or RobertaForMaskedLM. Written
  into a temporary sibling directory and renamed into place: never half-written.
  """
  directory = pathlib.Path(directory)
  architecture = architecture or ("BertForPreTraining" if cfg.variant == "bert"
                                  else "RobertaForMaskedLM")
  if architecture not in _ARCHITECTURES[cfg.variant]:
    raise HFError(f"architecture {architecture!r} does not fit a {cfg.variant} model; "
                  f"choose from {', '.join(_ARCHITECTURES[cfg.variant])}")
  if directory.exists() and any(directory.iterdir()) and not overwrite:
    raise HFError(f"{directory}: exists and is not empty (pass overwrite to replace it)")
  heads = architecture not in ("BertModel", "RobertaModel")
  # The MLM-only classes have no pooler; writing one would be an unexpected key.
  pooler = architecture in ("BertForPreTraining", "BertModel", "RobertaModel")
  tensors = export_tensors(params, cfg, heads=heads, pooler=pooler)
  if architecture == "BertForMaskedLM":
    tensors = {k: v for k, v in tensors.items() if not k.startswith("cls.seq_relationship")}
  if not heads:  # a bare BertModel/RobertaModel: names without the prefix
    tensors = {k.split(".", 1)[1]: v for k, v in tensors.items()}

  with files.atomic_directory(directory) as tmp:
    (tmp / CONFIG).write_text(json.dumps(config_to_hf(cfg, architecture), indent=2) + "\n")
    save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
    if tokenizer is not None:
      tok_lib.save_for_transformers(tokenizer, str(tmp), cfg.variant,
                                    model_max_length=cfg.max_position_embeddings
                                    - (cfg.pad_token_id + 1 if cfg.variant == "roberta" else 0))
  return directory
