"""ModernBERT as a configuration of the stack: logits equal transformers' on the same weights,
bit-identical round trips through HuggingFace, published parameter counts, bad configs."""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from transformers import ModernBertConfig, ModernBertForMaskedLM, ModernBertModel  # noqa: E402

from jaxpt import config as config_lib  # noqa: E402
from jaxpt import hf  # noqa: E402
from jaxpt.data import loader  # noqa: E402
from jaxpt.hf import layouts  # noqa: E402
from jaxpt.models import heads, params as params_lib  # noqa: E402

SMALL = dict(vocab_size=100, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
             intermediate_size=48, max_position_embeddings=64, local_attention=8,
             pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2,
             global_attn_every_n_layers=3)  # layers 0 and 3 global, 1 and 2 local (window 4+4)


def random_modernbert(tmp_path, cls=ModernBertForMaskedLM, seed=0, **changes):
  """A saved random model whose norms and biases are not at their initial values (so a
  misplaced norm or bias shows in the logits)."""
  torch.manual_seed(seed)
  model = cls(ModernBertConfig(**dict(SMALL, **changes), attn_implementation="eager")).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name or name.endswith("bias"):
        p.add_(0.3 * torch.randn_like(p))
  model.save_pretrained(tmp_path)
  return model


def batch(seed=0, length=24):
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, SMALL["vocab_size"], (3, length))
  mask = np.ones_like(ids)
  mask[1, 17:] = 0  # a padded row
  mask[2, 9:] = 0
  ids[mask == 0] = SMALL["pad_token_id"]
  return ids, mask


@pytest.mark.parametrize("scan", [False, True])
def test_mlm_logits_equal_transformers(tmp_path, scan):
  reference = random_modernbert(tmp_path)
  ids, mask = batch()
  with torch.no_grad():
    want = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
  imported = hf.import_params(tmp_path, scan_layers=scan)
  assert not imported.missing and not imported.unexpected
  cfg = imported.config
  assert (cfg.variant, cfg.norm_position, cfg.mlp, cfg.positions) == (
      "modernbert", "pre", "geglu", "rope")
  assert (cfg.local_window, cfg.global_every, cfg.first_attention_norm) == (8, 3, False)
  model = hf.build(cfg, imported.params)
  got = np.asarray(model.mlm_logits(jnp.asarray(ids), jnp.asarray(mask)))
  real = mask.astype(bool)
  np.testing.assert_allclose(got[real], want.numpy()[real], rtol=1e-4, atol=1e-4)
  hidden = np.asarray(model.encode(jnp.asarray(ids), jnp.asarray(mask)))
  with torch.no_grad():
    base = reference.model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
  np.testing.assert_allclose(hidden[real], base.last_hidden_state.numpy()[real], rtol=1e-4,
                             atol=1e-4)


def test_the_comparison_can_fail(tmp_path):
  """The same weights read with a window that is too wide give other logits."""
  reference = random_modernbert(tmp_path)
  ids, mask = batch()
  with torch.no_grad():
    want = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
  imported = hf.import_params(tmp_path, local_window=16)
  got = np.asarray(hf.build(imported.config, imported.params).mlm_logits(
      jnp.asarray(ids), jnp.asarray(mask)))
  assert not np.allclose(got[mask == 1], want.numpy()[mask == 1], atol=1e-3)


def test_round_trip_through_transformers_is_bit_identical(tmp_path):
  random_modernbert(tmp_path / "hf")
  first = hf.import_params(tmp_path / "hf")
  hf.save_model(tmp_path / "out", first.params, first.config)
  reloaded = ModernBertForMaskedLM.from_pretrained(tmp_path / "out")
  reloaded.save_pretrained(tmp_path / "again")
  second = hf.import_params(tmp_path / "again")
  assert not second.missing and not second.unexpected
  a, b = params_lib.flatten(first.params), params_lib.flatten(second.params)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  saved = json.loads((tmp_path / "out" / "config.json").read_text())
  assert saved["layer_types"] == ["full_attention", "sliding_attention", "sliding_attention",
                                  "full_attention"]
  # A bare ModernBertModel: the encoder alone, its names without the `model.` prefix.
  hf.save_model(tmp_path / "bare", first.params, first.config, architecture="ModernBertModel")
  bare = ModernBertModel.from_pretrained(tmp_path / "bare")
  assert bare.embeddings.tok_embeddings.weight.shape == (100, 64)
  again = hf.import_params(tmp_path / "bare")
  assert set(again.missing) == {"head.dense.weight", "head.norm.weight", "decoder.bias"}


def _hf_count(**fields) -> int:
  with torch.device("meta"):
    model = ModernBertForMaskedLM(ModernBertConfig(**fields))
  return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,fields", [
    ("modernbert_base", {}),
    ("modernbert_large", dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16,
                              intermediate_size=2624)),
])
def test_published_parameter_counts(name, fields):
  cfg = config_lib.load(name).model
  abstract = hf.abstract_params(cfg)
  assert params_lib.count(abstract) == _hf_count(**fields)


@pytest.mark.parametrize("field,value,match", [
    ("hidden_activation", "silu", "hidden_activation='silu'"),
    ("layer_types", ["full_attention", "chunked_attention", "sliding_attention",
                     "full_attention"], "layer_types has 'chunked_attention'"),
    ("layer_types", ["sliding_attention", "full_attention", "full_attention",
                     "sliding_attention"], "global every n-th layer"),
    ("rope_parameters", {"full_attention": {"rope_type": "linear", "rope_theta": 1e4,
                                            "factor": 2.0}}, "rope_type='linear'"),
])
def test_unsupported_configs_are_refused_by_name(tmp_path, field, value, match):
  random_modernbert(tmp_path)
  path = tmp_path / "config.json"
  fields = json.loads(path.read_text())
  fields[field] = value
  path.write_text(json.dumps(fields))
  with pytest.raises(layouts.HFError, match=match):
    hf.import_params(tmp_path)


def test_a_bert_shaped_export_is_refused_for_a_modern_block():
  cfg = dataclasses.replace(config_lib.load("bert_tiny").model, norm_position="pre")
  with pytest.raises(layouts.HFError, match="model.norm_position='pre'"):
    hf.save_model("/nonexistent/never", {}, cfg)


@pytest.mark.slow
def test_a_tiny_modernbert_pretrains_packed_and_its_held_out_loss_falls(corpus_dir, tmp_path,
                                                                        jaxpt_here):
  jaxpt = jaxpt_here

  from jaxpt.data.prepare import PrepareOptions, prepare
  m = prepare([str(corpus_dir)], str(tmp_path / "data"),
              PrepareOptions(vocab_size=300, seq_length=64, tokenizer_type="bpe",
                             special_tokens="bert", examples="full_sentences", pack=True,
                             validation_fraction=0.2, progress=False))
  assert m["packed"]
  # ModernBERT's special tokens, [PAD] first: the preset's pad_token_id=0 fits as it is
  assert m["tokenizer"]["special_ids"] == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
  proc = jaxpt("pretrain", "--config=modernbert_tiny", "--noprogress",
               f"--workdir={tmp_path / 'run'}", f"--config.data.dir={tmp_path / 'data'}",
               "--config.model.vocab_size=300",
               "--config.model.local_window=16",  # a window shorter than the rows
               "--config.model.hidden_size=64", "--config.model.num_heads=2",
               "--config.model.intermediate_size=96",
               "--config.train.batch_size=16", "--config.train.num_steps=60",
               "--config.train.log_every_steps=10", "--config.train.eval_every_steps=10",
               "--config.train.eval_batches=2", "--config.optim.warmup_steps=5",
               "--config.checkpoint.every_steps=60", timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  evals = [r["eval/mlm_loss"] for r in rows if "eval/mlm_loss" in r]
  assert len(evals) == 6 and evals[-1] < evals[0] - 0.5, evals
  assert not any("nsp" in k for r in rows for k in r)
  # the family's 30% masking, as logged (targets per real token, [CLS] and [SEP] included)
  logged = [r["train/masked_fraction"] for r in rows if "train/masked_fraction" in r]
  assert logged and all(0.25 < f < 0.31 for f in logged), logged

  # Out to HuggingFace: transformers loads the model and the tokenizer and computes the logits
  # jaxpt computes; fill-mask runs on the workdir.
  proc = jaxpt("export-hf", f"--workdir={tmp_path / 'run'}", f"--to={tmp_path / 'hf'}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  from transformers import AutoTokenizer
  tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
  assert (tok.cls_token, tok.sep_token, tok.mask_token) == ("[CLS]", "[SEP]", "[MASK]")
  assert tok("the cat")["input_ids"][0] == 2 and tok("the cat")["input_ids"][-1] == 3
  reference = ModernBertForMaskedLM.from_pretrained(tmp_path / "hf").eval()
  enc = tok(["the cat sat on the mat", "a dog"], padding=True, return_tensors="np")
  with torch.no_grad():
    want = reference(input_ids=torch.tensor(enc["input_ids"]),
                     attention_mask=torch.tensor(enc["attention_mask"])).logits.numpy()
  model, _ = hf.load_model(tmp_path / "hf")
  got = np.asarray(model.mlm_logits(jnp.asarray(enc["input_ids"]),
                                    jnp.asarray(enc["attention_mask"])))
  real = enc["attention_mask"].astype(bool)
  np.testing.assert_allclose(got[real], want[real], rtol=1e-4, atol=1e-4)
  proc = jaxpt("fill-mask", f"--workdir={tmp_path / 'run'}", "the cat sat on the [MASK]")
  assert proc.returncode == 0 and "mask 1:" in proc.stdout, proc.stderr[-3000:]

  # Fine-tuning starts from the pretrained workdir (its classifier head from the MLM head's),
  # and the fine-tuned classifier goes out as ModernBertForSequenceClassification.
  from test_finetune import write_task
  task = write_task(tmp_path / "task", sizes=(("train", 64), ("validation", 16), ("test", 16)))
  proc = jaxpt("finetune", f"--workdir={tmp_path / 'ft'}", f"--task={task}",
               f"--init={tmp_path / 'run'}", "--noprogress", "--config.finetune.max_length=24",
               "--config.finetune.epochs=2", "--config.finetune.min_steps=0",
               "--config.train.batch_size=16",
               "--config.model.classifier_pooling=mean", timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((tmp_path / "ft" / "eval.json").read_text())
  assert report["num_examples"] == 16
  proc = jaxpt("export-hf", f"--workdir={tmp_path / 'ft'}", f"--to={tmp_path / 'hf_ft'}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  from transformers import ModernBertForSequenceClassification
  classifier = ModernBertForSequenceClassification.from_pretrained(tmp_path / "hf_ft")
  assert classifier.config.classifier_pooling == "mean" and classifier.config.num_labels == 3


ETTIN = {"17m": (7, 256, 384, 4), "32m": (10, 384, 576, 6), "68m": (19, 512, 768, 8),
         "150m": (22, 768, 1152, 12), "400m": (28, 1024, 2624, 16),
         "1b": (28, 1792, 3840, 28)}


@pytest.mark.parametrize("size", list(ETTIN))
def test_ettin_presets_have_the_suites_sizes(size):
  """Each Ettin encoder and decoder preset counts the parameters of transformers' ModernBERT
  (decoder) of that shape, and the count is the size its name gives (within 5%)."""
  layers, hidden, intermediate, heads = ETTIN[size]
  cfg = config_lib.validate(config_lib.load(f"ettin_encoder_{size}"))
  want = _hf_count(num_hidden_layers=layers, hidden_size=hidden,
                   intermediate_size=intermediate, num_attention_heads=heads)
  assert params_lib.count(hf.abstract_params(cfg.model)) == want
  named = float(size[:-1]) * (1e6 if size.endswith("m") else 1e9)
  assert abs(want / named - 1) < 0.05, (want, named)
  assert cfg.train.batch_size == 4608 and cfg.optim.name == "stable_adamw"
  assert loader.batch_phases(4608, cfg.train.batch_warmup_start, cfg.train.batch_warmup_tokens,
                             1024)[-1][1] == 4608
  # The paired decoder: transformers' ModernBertDecoderForCausalLM of the same shape.
  from transformers import ModernBertDecoderConfig, ModernBertDecoderForCausalLM
  dec = config_lib.validate(config_lib.load(f"ettin_decoder_{size}")).model
  assert dec.attention_kind == "causal"
  assert hf.config_to_hf(dec, "ModernBertDecoderForCausalLM")["local_attention"] == 128
  with torch.device("meta"):
    ref = ModernBertDecoderForCausalLM(ModernBertDecoderConfig(
        vocab_size=50368, num_hidden_layers=layers, hidden_size=hidden,
        intermediate_size=intermediate, num_attention_heads=heads))
  assert params_lib.count(hf.abstract_params(dec)) == sum(p.numel() for p in ref.parameters())
