"""Sharded training equals one device; parameters land where the rules say; errors early."""

import dataclasses

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxpt import config as config_lib
from jaxpt import sharding
from jaxpt.tasks import pretraining
from jaxpt.config import ConfigError

pytestmark = pytest.mark.slow  # subprocess runs and compiles: `make test` only

STEPS = 5


def tiny_config(**train) -> config_lib.Config:
  cfg = config_lib.with_model(config_lib.Config(), vocab_size=128, hidden_size=32,
                              num_layers=2, num_heads=2, intermediate_size=64,
                              max_position_embeddings=32)
  return dataclasses.replace(
      cfg, optim=dataclasses.replace(cfg.optim, learning_rate=1e-3, warmup_steps=2),
      train=dataclasses.replace(cfg.train, batch_size=16, num_steps=100, **train))


def batches(cfg, steps=STEPS, length=16, preds=3):
  rng = np.random.default_rng(0)
  out = []
  for _ in range(steps):
    b = cfg.train.batch_size
    ids = rng.integers(5, cfg.model.vocab_size, (b, length)).astype(np.int32)
    lengths = rng.integers(length // 2, length + 1, b)
    out.append({
        "input_ids": ids,
        "token_type_ids": (np.arange(length)[None] >= length // 2).repeat(b, 0).astype(np.int32),
        "attention_mask": (np.arange(length)[None] < lengths[:, None]).astype(np.int32),
        "masked_positions": np.sort(rng.integers(1, length // 2, (b, preds)), 1).astype(np.int32),
        "masked_ids": rng.integers(5, cfg.model.vocab_size, (b, preds)).astype(np.int32),
        "masked_weights": (rng.random((b, preds)) < 0.9).astype(np.float32),
        "nsp_labels": rng.integers(0, 2, b).astype(np.int32),
    })
  return out


def run(cfg, mesh, data):
  program = pretraining.build_program(cfg, mesh)
  losses = []
  with jax.set_mesh(mesh):
    state = program.init_state()
    for batch in data:
      batch = {k: jax.device_put(v, program.batch_sharding) for k, v in batch.items()}
      state, metrics = program.train_step(state, batch)
      losses.append(float(metrics["train/loss"]))
  return np.array(losses), state, program


@pytest.fixture(scope="module")
def reference():
  cfg = tiny_config()
  one = sharding.make_mesh(config_lib.MeshConfig(1, 1, 1), devices=jax.devices()[:1])
  losses, state, _ = run(cfg, one, batches(cfg))
  return losses, jax.device_get(state.params)


# (1, 8, 1) and (2, 2, 2) also run as real processes in test_multiprocess.py.
@pytest.mark.parametrize("shape", [(2, 2, 2), (1, 4, 2)])
def test_sharded_training_equals_one_device(reference, shape):
  cfg = tiny_config()
  mesh = sharding.make_mesh(config_lib.MeshConfig(*shape))
  losses, state, program = run(cfg, mesh, batches(cfg))
  ref_losses, ref_params = reference
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  assert losses[-1] < losses[0]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               jax.device_get(state.params), ref_params)

  # Every parameter and optimizer moment is laid out as the rules say.
  expected = {
      ("encoder", "embeddings", "word", "embedding"): P("tensor", "fsdp"),
      ("encoder", "embeddings", "position", "embedding"): P(None, "fsdp"),
      ("encoder", "layers", 0, "attention", "query", "kernel"): P("fsdp", "tensor", None),
      ("encoder", "layers", 0, "attention", "query", "bias"): P("tensor", None),
      ("encoder", "layers", 1, "attention", "out", "kernel"): P("tensor", None, "fsdp"),
      ("encoder", "layers", 1, "mlp", "up", "kernel"): P("fsdp", "tensor"),
      ("encoder", "layers", 1, "mlp", "down", "kernel"): P("tensor", "fsdp"),
      ("encoder", "layers", 0, "mlp_norm", "scale"): P(None),
      ("mlm", "bias"): P("tensor"),
  }
  mu, nu = state.opt_state[1][0].mu, state.opt_state[1][0].nu  # (clip, adamw(scale_by_adam, ...))
  for path, spec in expected.items():
    want = NamedSharding(mesh, spec)
    for tree in (state.params, mu, nu):
      leaf = tree
      for key in path:
        leaf = leaf[key]
      assert leaf.sharding.is_equivalent_to(want, leaf.ndim), (path, leaf.sharding.spec)
  for p, m in zip(jax.tree.leaves(state.params), jax.tree.leaves(mu)):
    assert m.sharding.is_equivalent_to(p.sharding, p.ndim)
  # FSDP: no device holds the whole word-embedding matrix.
  word = state.params["encoder"]["embeddings"]["word"]["embedding"]
  shard = word.addressable_shards[0].data.shape
  assert shard == (128 // shape[2], 32 // shape[1])


def test_microbatches_equal_one_pass():
  cfg = config_lib.with_model(tiny_config(), hidden_dropout=0.0, attention_dropout=0.0)
  mesh = sharding.make_mesh(config_lib.MeshConfig(2, 2, 2))
  data = batches(cfg)
  whole, _, _ = run(cfg, mesh, data)
  cfg4 = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, microbatches=4))
  sharding.check_fits(cfg4, mesh)
  split, _, _ = run(cfg4, mesh, data)
  np.testing.assert_allclose(split, whole, rtol=1e-5)


def test_mesh_and_divisibility_errors_name_the_field():
  with pytest.raises(ConfigError, match="needs 12 devices, 8 are present"):
    sharding.mesh_shape(config_lib.MeshConfig(2, 3, 2), 8)
  with pytest.raises(ConfigError, match="not divisible by 3"):
    sharding.mesh_shape(config_lib.MeshConfig(-1, 3, 1), 8)
  with pytest.raises(ConfigError, match="at most one axis may be -1"):
    sharding.mesh_shape(config_lib.MeshConfig(-1, -1, 1), 8)
  assert sharding.mesh_shape(config_lib.MeshConfig(-1, 2, 2), 8) == (2, 2, 2)
  mesh = sharding.make_mesh(config_lib.MeshConfig(1, 2, 4))
  with pytest.raises(ConfigError, match=r"model.num_heads=2 .* tensor axis \(4\)"):
    sharding.check_fits(tiny_config(), mesh)
  mesh = sharding.make_mesh(config_lib.MeshConfig(2, 4, 1))
  with pytest.raises(ConfigError, match="batch_size=12 .* data x fsdp = 8"):
    sharding.check_fits(dataclasses.replace(
        tiny_config(), train=dataclasses.replace(tiny_config().train, batch_size=12)), mesh)
  with pytest.raises(ConfigError, match="train.microbatches=4 gives 4 sequences"):
    sharding.check_fits(tiny_config(microbatches=4), mesh)
  cfg = config_lib.with_model(tiny_config(), vocab_size=127)
  with pytest.raises(ConfigError, match="model.vocab_size=127 .* round it up"):
    sharding.check_fits(cfg, sharding.make_mesh(config_lib.MeshConfig(4, 1, 2)))


def test_local_batch_rows_cover_the_batch():
  mesh = sharding.make_mesh(config_lib.MeshConfig(2, 2, 2))
  assert sharding.local_batch_rows(sharding.batch_sharding(mesh), 16) == (0, 16)


@pytest.mark.parametrize("remat", ["full", "save_dots"])
def test_rematerialisation_changes_memory_not_results(reference, remat):
  cfg = config_lib.with_model(tiny_config(), remat=remat)
  one = sharding.make_mesh(config_lib.MeshConfig(1, 1, 1), devices=jax.devices()[:1])
  losses, _, _ = run(cfg, one, batches(cfg))
  np.testing.assert_allclose(losses, reference[0], rtol=1e-6)


def test_scanned_layers_shard_and_train_like_one_device():
  cfg = config_lib.with_model(tiny_config(), scan_layers=True, remat="full")
  one = sharding.make_mesh(config_lib.MeshConfig(1, 1, 1), devices=jax.devices()[:1])
  ref, _, _ = run(cfg, one, batches(cfg))
  mesh = sharding.make_mesh(config_lib.MeshConfig(2, 2, 2))
  losses, state, _ = run(cfg, mesh, batches(cfg))
  np.testing.assert_allclose(losses, ref, rtol=1e-5)
  kernel = state.params["encoder"]["layers"]["attention"]["query"]["kernel"]  # [layers, embed, ...]
  assert kernel.sharding.is_equivalent_to(
      NamedSharding(mesh, P(None, "fsdp", "tensor", None)), kernel.ndim)


def test_roberta_variant_trains_on_masked_lm_alone():
  cfg = config_lib.with_model(tiny_config(), variant="roberta", pad_token_id=1,
                              type_vocab_size=1, max_position_embeddings=34)
  one = sharding.make_mesh(config_lib.MeshConfig(1, 1, 1), devices=jax.devices()[:1])
  data = [dict(b, token_type_ids=np.zeros_like(b["token_type_ids"])) for b in batches(cfg)]
  program = pretraining.build_program(cfg, one)
  assert "nsp" not in program.model.abstract_params
  with jax.set_mesh(one):
    state = program.init_state()
    losses = []
    for batch in data * 4:
      state, metrics = program.train_step(state, jax.device_put(batch, program.batch_sharding))
      losses.append(float(metrics["train/loss"]))
  assert "train/nsp_loss" not in metrics
  assert float(metrics["train/loss"]) == float(metrics["train/mlm_loss"])
  assert losses[-1] < losses[0]
