"""Decoders on the one stack: GPT-2 and ModernBERT's decoder against transformers (logits,
round trips, greedy generation), causality and packed documents, the key/value cache against
recomputation, sampling, the causal-LM task end to end, and CLM then MLM."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file

import jaxpt
from jaxpt import config as config_lib
from jaxpt import hf
from jaxpt.models import generation, heads
from jaxpt.models import params as params_lib
from jaxpt.tasks import pretraining

VOCAB = 97


def perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
  """Random noise on every parameter (norms and biases included), so that a mapping that
  drops or swaps one shows in the logits."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn(p.shape, generator=g))
  return model.eval()


def gpt2_reference(tmp_path, seed=0):
  torch.manual_seed(seed)
  c = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64,
                              bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1)
  ref = perturbed(transformers.GPT2LMHeadModel(c), seed)
  ref.save_pretrained(tmp_path / "gpt2")
  return ref, tmp_path / "gpt2"


def decoder_reference(tmp_path, seed=0):
  """4 layers (global, local, global, local), a local window of 4 tokens (local_attention 8)
  shorter than the 24-token rows."""
  torch.manual_seed(seed)
  c = transformers.ModernBertDecoderConfig(
      vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
      intermediate_size=48, local_attention=8, global_attn_every_n_layers=2,
      max_position_embeddings=64, pad_token_id=0, eos_token_id=1, bos_token_id=2,
      cls_token_id=2, sep_token_id=1)
  ref = perturbed(transformers.ModernBertDecoderForCausalLM(c), seed)
  ref.save_pretrained(tmp_path / "dec")
  return ref, tmp_path / "dec"


REFERENCES = {"gpt2": gpt2_reference, "modernbert-decoder": decoder_reference}


def batch(seed=0, length=24):
  ids = np.random.default_rng(seed).integers(3, VOCAB, (3, length))
  mask = np.ones_like(ids)
  mask[1, 17:] = 0
  mask[2, 9:] = 0
  return ids, mask


@pytest.mark.parametrize("family", sorted(REFERENCES))
@pytest.mark.parametrize("scan", [False, True])
def test_logits_equal_transformers(family, scan, tmp_path):
  ref, directory = REFERENCES[family](tmp_path)
  imported = hf.import_params(directory, scan_layers=scan)
  assert imported.missing == [] and imported.unexpected == []
  assert imported.config.attention_kind == "causal"
  model = hf.build(imported.config, imported.params)
  assert isinstance(model, heads.DecoderForCausalLM)
  ids, mask = batch()
  with torch.no_grad():
    want = ref(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
  got = np.asarray(model.lm_logits(jnp.asarray(ids), jnp.asarray(mask)))
  real = mask.astype(bool)
  np.testing.assert_allclose(got[real], want[real], rtol=1e-4, atol=1e-4)
  assert np.abs(want[real]).max() > 1.0  # logits worth comparing


def test_a_wrong_decoder_window_is_caught(tmp_path):
  """Planted: one token more in the local window changes the logits beyond the tolerance."""
  ref, directory = decoder_reference(tmp_path)
  imported = hf.import_params(directory)
  assert imported.config.local_window == 4
  wrong = dataclasses.replace(imported.config, local_window=5)
  ids, mask = batch()
  with torch.no_grad():
    want = ref(torch.tensor(ids)).logits.numpy()
  got = np.asarray(hf.build(wrong, imported.params).lm_logits(jnp.asarray(ids)))
  assert np.abs(got - want).max() > 1e-2


@pytest.mark.parametrize("family", sorted(REFERENCES))
def test_round_trip_through_transformers_is_bit_identical(family, tmp_path):
  _, directory = REFERENCES[family](tmp_path)
  first = hf.import_params(directory)
  hf.save_model(tmp_path / "out", first.params, first.config)
  again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
  again.save_pretrained(tmp_path / "again")
  second = hf.import_params(tmp_path / "again")
  assert second.missing == [] and second.unexpected == []
  assert second.config == first.config
  a, b = hf.flatten(first.params, first.config), hf.flatten(second.params, second.config)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  # and the files transformers wrote hold what jaxpt exported, tensor for tensor
  ours, theirs = load_file(str(tmp_path / "out" / "model.safetensors")), load_file(
      str(tmp_path / "again" / "model.safetensors"))
  for k in ours:
    np.testing.assert_array_equal(ours[k], theirs[k], err_msg=k)


@pytest.mark.parametrize("family", sorted(REFERENCES))
def test_greedy_generation_equals_transformers(family, tmp_path):
  """Prompts of different lengths in one left-padded batch: each continuation equals
  transformers' greedy `generate` on that prompt alone, for 24 tokens."""
  ref, directory = REFERENCES[family](tmp_path)
  model, _ = hf.load_model(directory)
  prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49,
                                                      50, 51, 52, 53, 54, 55, 56, 57]]
  got = jaxpt.generate(model, prompts, 24, eos_token_id=-1)
  for p, g in zip(prompts, got):
    with torch.no_grad():
      want = ref.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=int),
                          max_new_tokens=24, min_new_tokens=24, do_sample=False,
                          eos_token_id=None, pad_token_id=0)[0].tolist()
    assert g == want
  assert len({tuple(g[-24:]) for g in got}) == 3  # three different continuations


def next_token_logits(model, width=64):
  """A jitted f(ids) -> the logits after the last of `ids` (a list), recomputed from the
  whole right-padded sequence: one compile for every length."""
  graphdef, state = nnx.split(model)
  run = jax.jit(lambda state, ids, mask: nnx.merge(graphdef, state).lm_logits(ids, mask))

  def f(seq):
    ids = np.zeros((1, width), np.int32)
    ids[0, :len(seq)] = seq
    return np.asarray(run(state, ids, (np.arange(width) < len(seq))[None].astype(np.int32))
                      [0, len(seq) - 1])
  return f


@pytest.mark.parametrize("scan", [False, True])
def test_the_cache_equals_recomputing_the_sequence(scan, tmp_path):
  _, directory = decoder_reference(tmp_path)
  model, _ = hf.load_model(directory) if not scan else (None, None)
  if scan:
    imported = hf.import_params(directory, scan_layers=True)
    model = hf.build(imported.config, imported.params)
  prompt = [7, 8, 9, 10, 11]
  cached = jaxpt.generate(model, prompt, 20, eos_token_id=-1)
  logits_after = next_token_logits(model)
  seq = list(prompt)
  for _ in range(20):  # no cache: the whole sequence at every step
    seq.append(int(np.argmax(logits_after(seq))))
  assert cached == seq


def test_generation_stops_at_the_end_of_text_token(tmp_path):
  _, directory = gpt2_reference(tmp_path)
  model, _ = hf.load_model(directory)
  free = jaxpt.generate(model, [[5, 6, 7], [8, 9]], 12, eos_token_id=-1)
  stop = free[0][5]  # the third generated token of prompt 0
  out, stats = jaxpt.generate(model, [[5, 6, 7], [8, 9]], 12, eos_token_id=stop,
                              return_stats=True)
  assert out[0] == free[0][:6]  # up to and including the end-of-text token
  cut = free[1].index(stop) + 1 if stop in free[1][2:] else len(free[1])
  assert out[1] == free[1][:cut]
  assert stats.new_tokens == sum(len(o) for o in out) - 5


def test_causality_later_tokens_change_nothing_before_them(tmp_path):
  _, directory = decoder_reference(tmp_path)
  model, _ = hf.load_model(directory)
  ids, _ = batch()
  changed = ids.copy()
  changed[:, 15] = (changed[:, 15] + 1) % VOCAB
  a = np.asarray(model.lm_logits(jnp.asarray(ids)))
  b = np.asarray(model.lm_logits(jnp.asarray(changed)))
  np.testing.assert_array_equal(a[:, :15], b[:, :15])
  assert np.abs(a[:, 15:] - b[:, 15:]).max() > 1e-3


def tiny_causal_config(**model):
  cfg = config_lib.load("shakespeare_decoder")
  return config_lib.with_model(cfg, vocab_size=VOCAB, hidden_size=32, num_layers=2,
                               num_heads=4, intermediate_size=64, max_position_embeddings=32,
                               **model)


@pytest.mark.parametrize("family", ["gpt2", "modernbert"])
def test_packed_documents_compute_what_they_compute_alone(family):
  """The causal-LM loss of a packed row is the sum of its documents' losses alone (positions
  restart, nothing crosses a boundary); without segment ids it differs (planted)."""
  if family == "gpt2":
    cfg = tiny_causal_config().model
  else:
    from jaxpt.configs.modernbert_base import modern
    cfg = modern(config_lib.Config(), vocab_size=VOCAB, pad_token_id=0, hidden_size=32,
                 num_layers=3, num_heads=4, intermediate_size=48,
                 max_position_embeddings=32).model
    cfg = dataclasses.replace(cfg, attention_kind="causal", local_window=3)
  with nnx.use_eager_sharding(False):
    model = heads.DecoderForCausalLM(cfg, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(1)
  docs = [rng.integers(3, VOCAB, n) for n in (9, 6, 11)]
  row = np.zeros((1, 32), np.int32)
  seg = np.zeros((1, 32), np.int32)
  at = 0
  for k, d in enumerate(docs):
    row[0, at:at + len(d)], seg[0, at:at + len(d)] = d, k + 1
    at += len(d)
  packed = {"input_ids": jnp.asarray(row), "attention_mask": jnp.asarray(seg > 0, jnp.int32),
            "segment_ids": jnp.asarray(seg)}
  graphdef, state = nnx.split(model)
  sums = jax.jit(lambda state, batch: pretraining.causal_sums(nnx.merge(graphdef, state), batch,
                                                              deterministic=True))
  total = sums(state, packed)
  alone = [sums(state, {"input_ids": jnp.asarray(d[None]),
                        "attention_mask": jnp.ones((1, len(d)), jnp.int32)}) for d in docs]
  assert float(total["clm_count"]) == sum(len(d) - 1 for d in docs)
  np.testing.assert_allclose(float(total["clm_loss"]),
                             sum(float(a["clm_loss"]) for a in alone), rtol=1e-5)
  unpacked = dict(packed)
  del unpacked["segment_ids"]
  leaky = sums(state, unpacked)
  assert abs(float(leaky["clm_loss"]) - float(total["clm_loss"])) > 1e-2


def test_sampling_is_reproducible_and_stays_in_the_allowed_set(tmp_path):
  _, directory = gpt2_reference(tmp_path)
  model, _ = hf.load_model(directory)
  prompt = [5, 6, 7]
  a = jaxpt.generate(model, prompt, 16, temperature=1.5, seed=3, eos_token_id=-1)
  b = jaxpt.generate(model, prompt, 16, temperature=1.5, seed=3, eos_token_id=-1)
  c = jaxpt.generate(model, prompt, 16, temperature=1.5, seed=4, eos_token_id=-1)
  assert a == b and a != c
  logits_after = next_token_logits(model)
  for kwargs in ({"top_k": 3}, {"top_p": 0.3}, {"top_k": 5, "top_p": 0.5}):
    out = jaxpt.generate(model, prompt, 16, temperature=2.0, seed=0, eos_token_id=-1,
                         **kwargs)
    for t in range(len(prompt), len(out)):
      logits = logits_after(out[:t]) / 2.0
      order = np.argsort(-logits)
      allowed = set(order[:kwargs.get("top_k", VOCAB)].tolist())
      if "top_p" in kwargs:
        probs = np.exp(logits[order] - logits[order].max())
        probs /= probs.sum()
        before = np.cumsum(probs) - probs
        allowed &= set(order[before < kwargs["top_p"]].tolist())
      assert out[t] in allowed, (kwargs, t)
  # the restriction itself: exactly the top-k survive
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(4, VOCAB)), jnp.float32)
  kept = np.isfinite(np.asarray(generation.restrict(logits, 7, 1.0)))
  assert (kept.sum(axis=1) == 7).all()


def test_bad_generation_requests_are_named(tmp_path):
  _, directory = gpt2_reference(tmp_path)
  model, _ = hf.load_model(directory)
  with pytest.raises(generation.GenerationError, match="passes the model's 64 positions"):
    jaxpt.generate(model, list(range(3, 53)), 20)
  with pytest.raises(generation.GenerationError, match="max_new_tokens=0"):
    jaxpt.generate(model, [5], 0)
  with pytest.raises(generation.GenerationError, match="token id 500 is outside"):
    jaxpt.generate(model, [5, 500], 3)
  with pytest.raises(generation.GenerationError, match="top_p=0"):
    jaxpt.generate(model, [5], 3, temperature=1.0, top_p=0.0)
  with nnx.use_eager_sharding(False):
    encoder = heads.EncoderForPreTraining(
        config_lib.with_model(config_lib.Config(), vocab_size=VOCAB, hidden_size=16,
                              num_layers=1, num_heads=2, intermediate_size=32).model,
        rngs=nnx.Rngs(0))
  with pytest.raises(generation.GenerationError, match="bidirectional encoder"):
    jaxpt.generate(encoder, [5], 3)


def test_gpt2_preset_parameter_counts_equal_transformers():
  for name, c in (("gpt2", transformers.GPT2Config()),
                  ("gpt2_medium", transformers.GPT2Config(n_embd=1024, n_layer=24, n_head=16))):
    with torch.device("meta"):
      want = sum(p.numel() for p in transformers.GPT2LMHeadModel(c).parameters())
    cfg = config_lib.load(name).model
    assert params_lib.count(hf.abstract_params(cfg)) == want, name
    assert {k: getattr(cfg, k) for k in hf.gpt2.FAMILY} == hf.gpt2.FAMILY
    assert hf.config_from_hf(hf.config_to_hf(cfg, "GPT2LMHeadModel")) == cfg


def test_hf_configs_the_stack_lacks_are_refused(tmp_path):
  base = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=4,
                                 eos_token_id=1).to_dict()
  for field, value in (("activation_function", "relu"), ("scale_attn_by_inverse_layer_idx", True),
                       ("tie_word_embeddings", False)):
    with pytest.raises(hf.HFError, match=f"{field}="):
      hf.config_from_hf(dict(base, **{field: value}))
  with pytest.raises(hf.HFError, match="embd_pdrop=0.3 differs"):
    hf.config_from_hf(dict(base, embd_pdrop=0.3))


def test_decoder_checkpoints_and_encoders_go_to_their_own_commands(tmp_path):
  from test_cli import jaxpt as run_cli
  _, directory = gpt2_reference(tmp_path)
  proc = run_cli("fill-mask", f"--hf={directory}", "the [MASK]")
  assert proc.returncode == 2 and "a causal LM (a decoder)" in proc.stderr
  bert = tmp_path / "bert"
  transformers.BertForMaskedLM(transformers.BertConfig(
      vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
      intermediate_size=32)).save_pretrained(bert)
  proc = run_cli("generate", f"--hf={bert}", "hello")
  assert proc.returncode == 2 and "generation needs a causal LM" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_a_tiny_decoder_pretrains_generates_and_goes_out_to_transformers(corpus_dir, tmp_path,
                                                                         jaxpt_here):
  """prepare (BPE, FULL-SENTENCES, packed) -> causal-LM pretraining, whose held-out loss
  falls -> `jaxpt generate` -> export-hf as GPT2LMHeadModel with jaxpt's logits -> CLM then
  MLM: the causal ModernBERT checkpoint restores into the bidirectional encoder whole."""
  run_cli = jaxpt_here

  from jaxpt.data.prepare import PrepareOptions, prepare
  prepare([str(corpus_dir)], str(tmp_path / "data"),
          PrepareOptions(vocab_size=300, seq_length=64, tokenizer_type="bpe",
                         examples="full_sentences", pack=True, validation_fraction=0.2,
                         lowercase=False, progress=False))
  common = [f"--config.data.dir={tmp_path / 'data'}", "--config.model.vocab_size=300",
            "--noprogress", "--config.train.batch_size=16", "--config.train.log_every_steps=10",
            "--config.train.eval_every_steps=10", "--config.train.eval_batches=2",
            "--config.optim.warmup_steps=5"]
  proc = run_cli("pretrain", "--config=shakespeare_decoder", f"--workdir={tmp_path / 'run'}",
                 "--config.train.num_steps=50", "--config.checkpoint.every_steps=50",
                 "--config.model.max_position_embeddings=64", "--config.model.hidden_size=64",
                 "--config.model.num_heads=2", "--config.model.intermediate_size=128",
                 "--config.model.num_layers=2", *common, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  evals = [r["eval/clm_loss"] for r in rows if "eval/clm_loss" in r]
  assert len(evals) == 5 and evals[-1] < evals[0] - 0.5, evals
  assert all("eval/perplexity" in r for r in rows if "eval/clm_loss" in r)

  proc = run_cli("generate", f"--workdir={tmp_path / 'run'}", "--max_new_tokens=12",
                 "The cat", "A dog sat")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.count("The cat") == 1 and "tokens/s" in proc.stdout

  proc = run_cli("export-hf", f"--workdir={tmp_path / 'run'}", f"--to={tmp_path / 'hf'}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
  reference = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
  enc = tok(["The cat sat on the mat", "A dog"], padding=True, return_tensors="np")
  with torch.no_grad():
    want = reference(input_ids=torch.tensor(enc["input_ids"]),
                     attention_mask=torch.tensor(enc["attention_mask"])).logits.numpy()
  model, _ = hf.load_model(tmp_path / "hf")
  got = np.asarray(model.lm_logits(jnp.asarray(enc["input_ids"]),
                                   jnp.asarray(enc["attention_mask"])))
  real = enc["attention_mask"].astype(bool)
  np.testing.assert_allclose(got[real], want[real], rtol=1e-4, atol=1e-4)

  # CLM, then MLM (arXiv 2507.00994): a causal ModernBERT, continued as an encoder.
  modern = ["--config=modernbert_tiny", "--config.model.pad_token_id=1",
            "--config.model.local_window=16", "--config.checkpoint.every_steps=20",
            "--config.model.hidden_size=64", "--config.model.num_heads=2",
            "--config.model.intermediate_size=96", *common]
  proc = run_cli("pretrain", *modern, f"--workdir={tmp_path / 'clm'}",
                 "--config.model.attention_kind=causal", "--config.train.num_steps=20",
                 timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  proc = run_cli("pretrain", *modern, f"--workdir={tmp_path / 'mlm'}",
                 f"--config.train.init_from={tmp_path / 'clm'}", "--config.train.num_steps=20",
                 timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"parameters from {tmp_path / 'clm'}" in proc.stdout
  assert "freshly initialised" not in proc.stdout
  rows = [json.loads(l) for l in (tmp_path / "mlm" / "metrics.jsonl").read_text().splitlines()]
  assert any("eval/mlm_loss" in r for r in rows)
