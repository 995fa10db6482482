"""HuggingFace checkpoints in and out: `config.json` + `model.safetensors`, any family.

Each family is one module holding its name table and its config fields (`bert.py`: BERT and
RoBERTa; `modernbert.py`: ModernBERT and its decoder; `gpt2.py`: GPT-2); this module reads and
writes through them. Every tensor
is mapped by the table (`layouts.Entry`: the jaxpt path, the layout change, the part of a
fused tensor). Weights are read and written only as safetensors; a PyTorch `.bin` file is read
with `torch.load(weights_only=True)` when torch is installed and refused otherwise; other
pickle formats are refused.
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
from jaxpt.hf import bert, gpt2, modernbert
from jaxpt.hf.layouts import HFError, as_linear, hf_shape, take_part, to_hf, to_jaxpt
from jaxpt.models import heads as heads_lib
from jaxpt.models import params as params_lib

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
TORCH_WEIGHTS = "pytorch_model.bin"
_UNSAFE = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin")
_FAMILIES = (bert, modernbert, gpt2)

__all__ = ["HFError", "load_model", "save_model", "save_classifier", "import_params",
           "import_classifier", "export_tensors", "config_from_hf", "config_to_hf", "flatten",
           "unflatten", "build", "build_classifier"]


def family(variant: str):
  """The name-table module of a model family (`ModelConfig.variant`)."""
  for module in _FAMILIES:
    if variant in module.MODEL_TYPES:
      return module
  raise HFError(f"model.variant={variant!r}: no HuggingFace name table")


# ---------------------------------------------------------------------------------------------
# jaxpt parameters as flat {dotted path: array}, layers always unrolled.


def flatten(params: dict, cfg: ModelConfig) -> dict[str, np.ndarray]:
  """A pure-dict parameter tree -> {dotted path: numpy array}; stacked (scan) layers unrolled."""
  return params_lib.flatten(params, scanned=cfg.scan_layers, num_layers=cfg.num_layers)


def unflatten(flat: dict[str, np.ndarray], cfg: ModelConfig) -> dict:
  """The inverse of `flatten`: a pure dict shaped like the model's parameters."""
  return params_lib.unflatten(flat, scanned=cfg.scan_layers, num_layers=cfg.num_layers)


# ---------------------------------------------------------------------------------------------
# Configs.


def config_from_hf(hf: dict, source: str = CONFIG) -> ModelConfig:
  """A HuggingFace `config.json` dict -> ModelConfig; a family without a table is an error."""
  model_type = hf.get("model_type")
  known = [t for module in _FAMILIES for t in module.MODEL_TYPES]
  if model_type not in known:
    raise HFError(f"{source}: model_type={model_type!r} is not one jaxpt reads "
                  f"({', '.join(known)})")
  cfg = family(model_type).config_from_hf(hf, source)
  try:
    return validate_model(cfg)
  except ValueError as e:
    raise HFError(f"{source}: {e}") from None


def config_to_hf(cfg: ModelConfig, architecture: str) -> dict:
  return family(cfg.variant).config_to_hf(cfg, architecture)


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
  params: dict  # pure dict of numpy arrays, shaped like the jaxpt model's parameters
  tokenizer: object | None  # tokenizers.Tokenizer, when the directory has one
  missing: list[str]  # jaxpt parameters (HF names) not in the checkpoint: freshly initialised
  unexpected: list[str]  # checkpoint tensors jaxpt does not use
  source: str
  labels: list[str] | None = None  # a classifier's labels, in id order
  kind: str | None = None  # a classifier's kind: sequence | token


def _read(directory: pathlib.Path, config_changes: dict):
  """(ModelConfig, the config.json dict, tensors, the weights file) of a HF directory."""
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
  return cfg, hf_config, tensors, weights_file


def _map_tensors(cfg: ModelConfig, tensors: dict, entries, fresh: dict, weights_file: str):
  """(flat jaxpt params, missing HF names, used HF names): every entry's tensor checked for
  shape and laid out; parameters the checkpoint lacks (or no entry names) stay `fresh`."""
  flat, missing, used = {}, set(), set()
  for hf_name, entry in entries:
    want = fresh[entry.path].shape
    if hf_name not in tensors:
      missing.add(hf_name)
      flat[entry.path] = fresh[entry.path]
      continue
    x = np.asarray(tensors[hf_name], np.float32)
    expected = hf_shape(want, entry)
    if x.shape != expected:
      raise HFError(f"{weights_file}: {hf_name} has shape {tuple(x.shape)}; {CONFIG} "
                    f"implies {tuple(expected)}")
    flat[entry.path] = to_jaxpt(take_part(as_linear(x, entry), entry), entry.layout, cfg)
    used.add(hf_name)
  # Parameters no HF tensor maps to carry nothing: the unused layer-0 attention norm of a
  # scanned ModernBERT (its layers are stacked, so layer 0 has one), BERT's pooler in a token
  # classifier.
  for path, value in fresh.items():
    flat.setdefault(path, value)
  return flat, missing, used


def _unexpected(tensors: dict, used: set, ignored: tuple[str, ...] = ()) -> list[str]:
  """Checkpoint tensors nothing used, less index buffers and the family's `IGNORED` ones."""
  return sorted(k for k in tensors if k not in used and not k.endswith("position_ids")
                and not k.endswith("token_type_ids") and not k.endswith(ignored))


def classifier_kind(architecture: str | None) -> str | None:
  """'sequence' / 'token' for a transformers classification class, else None."""
  for module in _FAMILIES:
    if architecture in module.SEQUENCE.values():
      return "sequence"
    if architecture in module.TOKEN.values():
      return "token"
  return None


def import_params(directory: str | os.PathLike, *, seed: int = 0,
                  **config_changes) -> Imported:
  """Reads a HuggingFace directory into jaxpt parameters (numpy), checking every shape: the
  encoder and its pretraining heads (a classifier's directory gives its encoder; its
  classifier is listed as unexpected; `import_classifier` reads it whole)."""
  directory = pathlib.Path(directory)
  cfg, _, tensors, weights_file = _read(directory, config_changes)
  table_of = family(cfg.variant)
  # Names may lack the encoder's prefix (a bare BertModel / ModernBertModel).
  prefix, heads = table_of.prefix(cfg), table_of.heads(cfg)
  named = {(k if k.startswith(prefix) or k in heads else prefix + k): k for k in tensors}
  tensors = {k: tensors[original] for k, original in named.items()}
  fresh = flatten(_init_params(cfg, seed), cfg)
  flat, missing, used = _map_tensors(cfg, tensors, table_of.table(cfg), fresh, weights_file)
  word = flat["encoder.embeddings.word.embedding"]
  for name in table_of.TIED & set(tensors):
    used.add(name)
    if not np.array_equal(np.asarray(tensors[name], np.float32), word):
      raise HFError(f"{weights_file}: {name} differs from the word embeddings; jaxpt ties "
                    "the LM decoder to them (tie_word_embeddings=false is not supported)")
  used |= table_of.DUPLICATES & set(tensors)
  tokenizer = _load_tokenizer(directory, cfg)
  return Imported(cfg, unflatten(flat, cfg), tokenizer, sorted(missing),
                  sorted(named[k] for k in _unexpected(tensors, used, table_of.IGNORED)),
                  str(directory))


def _labels(hf_config: dict, source: str) -> list[str]:
  id2label = hf_config.get("id2label")
  if not id2label:
    n = int(hf_config.get("num_labels", 2))
    return [f"LABEL_{i}" for i in range(n)]
  try:
    return [str(id2label[str(i)] if str(i) in id2label else id2label[i])
            for i in range(len(id2label))]
  except KeyError:
    raise HFError(f"{source}: id2label keys are not 0..{len(id2label) - 1}") from None


def import_classifier(directory: str | os.PathLike, *, seed: int = 0,
                      **config_changes) -> Imported:
  """A `*ForSequenceClassification` / `*ForTokenClassification` directory, classifier and
  all, as jaxpt's EncoderForClassification parameters (`labels` and `kind` set)."""
  directory = pathlib.Path(directory)
  cfg, hf_config, tensors, weights_file = _read(directory, config_changes)
  architecture = (hf_config.get("architectures") or [None])[0]
  kind = classifier_kind(architecture)
  if kind is None:
    raise HFError(f"{directory / CONFIG}: architectures={architecture!r} is not a "
                  "sequence or token classifier")
  labels = _labels(hf_config, str(directory / CONFIG))
  fresh = flatten(_init_classifier(cfg, len(labels), kind, seed), cfg)
  table_of = family(cfg.variant)
  flat, missing, used = _map_tensors(cfg, tensors, table_of.classifier_table(cfg, kind),
                                     fresh, weights_file)
  return Imported(cfg, unflatten(flat, cfg), _load_tokenizer(directory, cfg), sorted(missing),
                  _unexpected(tensors, used), str(directory), labels, kind)


def abstract_params(cfg: ModelConfig) -> dict:
  """The parameter tree of `cfg`'s language model (`heads.model_class`) as
  ShapeDtypeStructs (nothing allocated)."""
  with nnx.use_eager_sharding(False):
    model = nnx.eval_shape(lambda: heads_lib.model_class(cfg)(cfg, rngs=nnx.Rngs(0)))
  return nnx.state(model, nnx.Param).to_pure_dict()


def _init_classifier(cfg: ModelConfig, num_labels: int, kind: str, seed: int) -> dict:
  with nnx.use_eager_sharding(False):
    model = heads_lib.EncoderForClassification(cfg, num_labels, kind,
                                               rngs=nnx.Rngs(params=seed))
  return nnx.state(model, nnx.Param).to_pure_dict()


def _init_params(cfg: ModelConfig, seed: int) -> dict:
  with nnx.use_eager_sharding(False):
    model = heads_lib.model_class(cfg)(cfg, rngs=nnx.Rngs(params=seed))
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
  """An alias of `load_model` (the name from before other families)."""
  return load_model(directory, dtype=dtype, seed=seed)


def load_model(directory: str | os.PathLike, *, dtype: str = "float32", seed: int = 0):
  """(model, info) from a HuggingFace directory of any supported architecture (BERT,
  RoBERTa and ModernBERT, with or without heads, or a sequence / token classifier: then the
  model is an EncoderForClassification and `info.labels` its labels; GPT-2 and ModernBERT's
  decoder: a DecoderForCausalLM, with `model.lm_logits(input_ids, attention_mask)`).
  `model.encode(input_ids, attention_mask, token_type_ids)` gives the last hidden states and
  `model.mlm_logits(...)` the masked-LM logits; `info` holds the config, the parameters as numpy arrays, the tokenizer (or None),
  and the heads that were freshly initialised (`info.missing`) because the checkpoint had
  none. Heads missing from the checkpoint are initialised from `seed`."""
  directory = pathlib.Path(directory)
  architecture = None
  if (directory / CONFIG).exists():
    try:
      architecture = (json.loads((directory / CONFIG).read_text()).get("architectures")
                      or [None])[0]
    except json.JSONDecodeError:
      pass  # import_params names the file
  if classifier_kind(architecture):
    imported = import_classifier(directory, seed=seed, dtype=dtype)
    return build_classifier(imported.config, imported.params, len(imported.labels),
                            imported.kind), imported
  imported = import_params(directory, seed=seed, dtype=dtype)
  return build(imported.config, imported.params), imported


def build(cfg: ModelConfig, params: dict):
  """The language model of `cfg` (an EncoderForPreTraining, or a DecoderForCausalLM when
  causal) holding `params` (a pure dict)."""
  with nnx.use_eager_sharding(False):
    model = nnx.eval_shape(lambda: heads_lib.model_class(cfg)(cfg, rngs=nnx.Rngs(0)))
  state = nnx.state(model, nnx.Param)
  state.replace_by_pure_dict(jax.tree.map(jax.numpy.asarray, params))
  nnx.update(model, state)
  return model


def build_classifier(cfg: ModelConfig, params: dict, num_labels: int,
                     kind: str) -> heads_lib.EncoderForClassification:
  with nnx.use_eager_sharding(False):
    model = nnx.eval_shape(lambda: heads_lib.EncoderForClassification(
        cfg, num_labels, kind, rngs=nnx.Rngs(0)))
  state = nnx.state(model, nnx.Param)
  state.replace_by_pure_dict(jax.tree.map(jax.numpy.asarray, params))
  nnx.update(model, state)
  return model


def _concatenate_parts(entries, flat: dict) -> dict[str, np.ndarray]:
  """HF tensors from the jaxpt parameters their entries name (fused ones from their parts)."""
  parts: dict[str, list] = {}
  for hf_name, entry in entries:
    parts.setdefault(hf_name, []).append(
        ((entry.part or (0, 1))[0], to_hf(flat[entry.path], entry.layout), entry))
  return {name: np.ascontiguousarray(as_linear(
      np.concatenate([x for _, x, _ in sorted(pieces, key=lambda p: p[0])], axis=0),
      pieces[0][2]), np.float32) for name, pieces in parts.items()}


def save_classifier(directory: str | os.PathLike, params: dict, cfg: ModelConfig,
                    labels: list[str], kind: str, tokenizer=None, *,
                    overwrite: bool = False) -> pathlib.Path:
  """A fine-tuned classifier (EncoderForClassification parameters) as the family's
  `*ForSequenceClassification` or `*ForTokenClassification` directory, labels included."""
  directory = pathlib.Path(directory)
  table_of = family(cfg.variant)
  table_of.check_exportable(cfg)
  architecture = (table_of.SEQUENCE if kind == "sequence" else table_of.TOKEN)[cfg.variant]
  if directory.exists() and any(directory.iterdir()) and not overwrite:
    raise HFError(f"{directory}: exists and is not empty (--overwrite, or overwrite=True, replaces it)")
  params = jax.tree.map(np.asarray, params)
  tensors = _concatenate_parts(table_of.classifier_table(cfg, kind), flatten(params, cfg))
  hf_config = config_to_hf(cfg, architecture)
  hf_config.update(num_labels=len(labels), id2label={str(i): l for i, l in enumerate(labels)},
                   label2id={l: i for i, l in enumerate(labels)})
  if kind == "sequence":
    hf_config["problem_type"] = "single_label_classification"
  _write(directory, hf_config, tensors, tokenizer, cfg)
  return directory


def _write(directory: pathlib.Path, hf_config: dict, tensors: dict, tokenizer,
           cfg: ModelConfig) -> None:
  with files.atomic_directory(directory) as tmp:
    (tmp / CONFIG).write_text(json.dumps(hf_config, indent=2) + "\n")
    save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
    if tokenizer is not None:
      tok_lib.save_for_transformers(tokenizer, str(tmp), cfg.variant,
                                    model_max_length=cfg.max_position_embeddings
                                    - (cfg.pad_token_id + 1 if cfg.variant == "roberta" else 0))


def export_tensors(params: dict, cfg: ModelConfig,
                   architecture: str | None = None) -> dict[str, np.ndarray]:
  """jaxpt parameters -> the HuggingFace tensors of `architecture` (default: every head),
  float32 and contiguous; fused tensors are concatenated from their parts."""
  table_of = family(cfg.variant)
  architecture = architecture or table_of.architectures(cfg)[0]
  out = _concatenate_parts([(n, e) for n, e in table_of.table(cfg)
                            if table_of.exported(architecture, n)], flatten(params, cfg))
  if architecture in table_of.BARE:  # a bare model: names without the prefix
    prefix = table_of.prefix(cfg)
    out = {k[len(prefix):]: v for k, v in out.items()}
  return out


def save_model(directory: str | os.PathLike, model_or_params, config: ModelConfig,
               tokenizer=None, architecture: str | None = None, *,
               overwrite: bool = False) -> pathlib.Path:
  """Writes a model (an nnx module from `load_model`, or its pure parameter dict) as a
  HuggingFace directory: config.json, model.safetensors and tokenizer files.

  The default architecture is the family's with every head (BertForPreTraining,
  RobertaForMaskedLM, ModernBertForMaskedLM, GPT2LMHeadModel, ModernBertDecoderForCausalLM). Written into a temporary sibling directory and
  renamed into place: never half-written. A fine-tuned classifier goes out with
  `save_classifier`.
  """
  directory, cfg = pathlib.Path(directory), config
  params = model_or_params
  if isinstance(model_or_params, nnx.Module):
    params = nnx.state(model_or_params, nnx.Param).to_pure_dict()
  params = jax.tree.map(np.asarray, params)
  table_of = family(cfg.variant)
  choices = table_of.architectures(cfg)
  architecture = architecture or choices[0]
  if architecture not in choices:
    raise HFError(f"architecture {architecture!r} does not fit a {cfg.variant} model; "
                  f"choose from {', '.join(choices)}")
  table_of.check_exportable(cfg)
  if directory.exists() and any(directory.iterdir()) and not overwrite:
    raise HFError(f"{directory}: exists and is not empty (--overwrite, or overwrite=True, replaces it)")
  if cfg.attention_kind == "causal" and cfg.eos_token_id < 0 and tokenizer is not None:
    # a jaxpt-trained decoder ends its documents with the tokenizer's [SEP] / </s>
    cfg = dataclasses.replace(cfg, eos_token_id=tok_lib.special_ids(tokenizer)["sep"])
  _write(directory, config_to_hf(cfg, architecture), export_tensors(params, cfg, architecture),
         tokenizer, cfg)
  return directory
