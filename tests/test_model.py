"""BERT model: shapes for every preset, published parameter counts, learning one batch."""

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxpt import config as config_lib
from jaxpt.models import heads, params as params_lib
from jaxpt.tasks.pretraining import pretraining_sums

REPO = pathlib.Path(__file__).resolve().parent.parent
PRESETS = {"bert_tiny": (2, 128), "bert_mini": (4, 256), "bert_small": (4, 512),
           "bert_medium": (8, 512), "bert_base": (12, 768), "bert_large": (24, 1024)}


def load_preset(name: str) -> config_lib.Config:
  return config_lib.load(name)


def abstract_model(cfg: config_lib.ModelConfig):
  with nnx.use_eager_sharding(False):
    return nnx.eval_shape(lambda: heads.EncoderForPreTraining(cfg, rngs=nnx.Rngs(0)))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_output_shapes(name):
  cfg = config_lib.validate(load_preset(name)).model
  assert (cfg.num_layers, cfg.hidden_size) == PRESETS[name]
  batch, length, preds = 2, 128, 20
  model = abstract_model(cfg)
  ids = jax.ShapeDtypeStruct((batch, length), jnp.int32)
  pos = jax.ShapeDtypeStruct((batch, preds), jnp.int32)
  hidden = nnx.eval_shape(lambda m, x: m.encoder(x, x, x), model, ids)
  assert hidden.shape == (batch, length, cfg.hidden_size)
  mlm, nsp = nnx.eval_shape(lambda m, x, p: m(x, x, x, p), model, ids, pos)
  assert mlm.shape == (batch, preds, cfg.vocab_size) and mlm.dtype == jnp.float32
  assert nsp.shape == (batch, 2)


# HuggingFace's BertModel / BertForPreTraining parameter counts for bert-{base,large}-uncased
# (the "110M" and "340M" of Devlin et al.); the decoder matrix is tied to the word embeddings.
@pytest.mark.parametrize("name,encoder,total", [
    ("bert_base", 109_482_240, 110_106_428),
    ("bert_large", 335_141_888, 336_226_108),
    # RobertaModel (with pooler) of roberta-base, then the MLM head (dense, LayerNorm, bias).
    ("roberta_base", 124_645_632, 124_645_632 + 590_592 + 1_536 + 50_265),
])
def test_published_parameter_counts(name, encoder, total):
  _, state = nnx.split(abstract_model(load_preset(name).model))
  params = state.to_pure_dict()
  assert params_lib.count([params["encoder"], params["pooler"]]) == encoder  # BertModel
  assert params_lib.count(params) == total


def tiny_config(**changes) -> config_lib.ModelConfig:
  base = config_lib.ModelConfig(vocab_size=128, hidden_size=32, num_layers=2, num_heads=2,
                                intermediate_size=64, max_position_embeddings=32)
  return dataclasses.replace(base, **changes)


def random_batch(cfg, batch=8, length=16, preds=3, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, cfg.vocab_size, size=(batch, length))
  positions = np.stack([np.sort(rng.choice(np.arange(1, length), preds, replace=False))
                        for _ in range(batch)])
  targets = np.take_along_axis(ids, positions, axis=1)
  masked = ids.copy()
  np.put_along_axis(masked, positions, 4, axis=1)
  return {
      "input_ids": jnp.asarray(masked, jnp.int32),
      "token_type_ids": jnp.asarray(np.arange(length)[None].repeat(batch, 0) >= length // 2,
                                    jnp.int32),
      "attention_mask": jnp.ones((batch, length), jnp.int32),
      "masked_positions": jnp.asarray(positions, jnp.int32),
      "masked_ids": jnp.asarray(targets, jnp.int32),
      "masked_weights": jnp.ones((batch, preds), jnp.float32),
      "nsp_labels": jnp.asarray(rng.integers(0, 2, batch), jnp.int32),
  }


def overfit(graphdef, params, batch, steps: int) -> tuple[float, float]:
  """(MLM loss at the first step, after `steps` Adam steps at 3e-3 on the one batch)."""
  tx = optax.adam(3e-3)
  opt_state = tx.init(params)

  def loss_fn(p):
    sums = pretraining_sums(nnx.merge(graphdef, p), batch, deterministic=True)
    return sums["mlm_loss"] / sums["mlm_count"]

  @jax.jit
  def step(p, o):
    loss, g = jax.value_and_grad(loss_fn)(p)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o, loss

  first = None
  for _ in range(steps):
    params, opt_state, loss = step(params, opt_state)
    first = float(loss) if first is None else first
  return first, float(loss_fn(params))


@pytest.mark.slow
def test_overfits_one_batch():
  cfg = tiny_config(hidden_dropout=0.0, attention_dropout=0.0)
  with nnx.use_eager_sharding(False):
    graphdef, state = nnx.split(heads.EncoderForPreTraining(cfg, rngs=nnx.Rngs(0)))
  first, last = overfit(graphdef, state.to_pure_dict(), random_batch(cfg), 300)
  assert first > 4.0  # about ln(128) at initialisation
  assert last < 0.05


def test_padding_does_not_change_real_positions():
  """Keys masked out by attention_mask must not influence the other positions' outputs."""
  cfg = tiny_config()
  with nnx.use_eager_sharding(False):
    model = heads.EncoderForPreTraining(cfg, rngs=nnx.Rngs(1)).encoder
  ids = jnp.asarray(np.random.default_rng(0).integers(5, 128, (1, 12)), jnp.int32)
  mask = jnp.asarray([[1] * 8 + [0] * 4], jnp.int32)
  a = model(ids, None, mask)
  b = model(ids.at[:, 8:].set(7), None, mask)  # different padding tokens
  np.testing.assert_allclose(a[:, :8], b[:, :8], atol=1e-6)


def test_dropout_is_off_when_deterministic_and_on_in_training():
  cfg = tiny_config()
  with nnx.use_eager_sharding(False):
    model = heads.EncoderForPreTraining(cfg, rngs=nnx.Rngs(2)).encoder
  ids = jnp.ones((2, 8), jnp.int32) * 9
  a = model(ids)
  np.testing.assert_array_equal(a, model(ids))
  t1 = model(ids, deterministic=False, rngs=nnx.Rngs(dropout=0))
  t2 = model(ids, deterministic=False, rngs=nnx.Rngs(dropout=1))
  assert not np.allclose(t1, t2)


def stack_layers(params, num_layers):
  """Loop-model parameters -> scan-model parameters (a leading `layers` axis)."""
  out = dict(params)
  out["encoder"] = dict(params["encoder"])
  layers = [params["encoder"]["layers"][i] for i in range(num_layers)]
  out["encoder"]["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
  return out


def test_scan_over_layers_computes_the_same_function():
  cfg = tiny_config(num_layers=3)
  with nnx.use_eager_sharding(False):
    loop_def, loop_state = nnx.split(heads.EncoderForPreTraining(cfg, rngs=nnx.Rngs(0)))
    scan_def, scan_state = nnx.split(heads.EncoderForPreTraining(
        dataclasses.replace(cfg, scan_layers=True), rngs=nnx.Rngs(0)))
  params = loop_state.to_pure_dict()
  stacked = stack_layers(params, 3)
  assert (jax.tree.structure(stacked) == jax.tree.structure(scan_state.to_pure_dict()))
  assert stacked["encoder"]["layers"]["attention"]["query"]["kernel"].shape == (3, 32, 2, 16)
  batch = random_batch(cfg)
  loop = pretraining_sums(nnx.merge(loop_def, params), batch, deterministic=True)
  scan = pretraining_sums(nnx.merge(scan_def, stacked), batch, deterministic=True)
  np.testing.assert_allclose(scan["mlm_loss"], loop["mlm_loss"], rtol=1e-6)
  np.testing.assert_allclose(scan["nsp_loss"], loop["nsp_loss"], rtol=1e-6)
  # With dropout the scanned model still trains: different keys give different outputs.
  model = nnx.merge(scan_def, stacked)
  ids = batch["input_ids"]
  a = model.encoder(ids, deterministic=False, rngs=nnx.Rngs(dropout=0))
  b = model.encoder(ids, deterministic=False, rngs=nnx.Rngs(dropout=1))
  assert not np.allclose(a, b)
