"""What the throughput numbers rest on: the masked-only MLM head computes the full head's loss
and gradients; the FLOPs formula matches a hand count and XLA's cost analysis; the benchmark
script runs and prints valid JSON."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxpt import metrics
from jaxpt.config import ModelConfig
from jaxpt.models import bert
from jaxpt.train_step import pretraining_sums

from test_cli import REPO

CFG = ModelConfig(vocab_size=300, hidden_size=64, num_layers=2, num_heads=4,
                  intermediate_size=256, max_position_embeddings=32, hidden_dropout=0.0,
                  attention_dropout=0.0)


def _batch(cfg, b=4, length=32, preds=5, seed=0):
  rng = np.random.default_rng(seed)
  return {"input_ids": jnp.asarray(rng.integers(5, cfg.vocab_size, (b, length)), jnp.int32),
          "token_type_ids": jnp.zeros((b, length), jnp.int32),
          "attention_mask": jnp.asarray(np.arange(length)[None] < rng.integers(20, length + 1,
                                                                               (b, 1)),
                                        jnp.int32),
          "masked_positions": jnp.asarray(np.sort(rng.integers(1, 20, (b, preds)), 1), jnp.int32),
          "masked_ids": jnp.asarray(rng.integers(5, cfg.vocab_size, (b, preds)), jnp.int32),
          "masked_weights": jnp.asarray(rng.random((b, preds)) < 0.8, jnp.float32),
          "nsp_labels": jnp.asarray(rng.integers(0, 2, b), jnp.int32)}


def test_masked_only_head_equals_the_full_head():
  with nnx.use_eager_sharding(False):
    graphdef, params = nnx.split(bert.BertForPreTraining(CFG, rngs=nnx.Rngs(0)))
  batch = _batch(CFG)

  def masked_only(p):  # the training path: the head runs on the gathered positions
    return pretraining_sums(nnx.merge(graphdef, p), batch, deterministic=True)["mlm_loss"]

  def full(p):  # the head on every position, then the same positions picked from its logits
    logits = nnx.merge(graphdef, p).mlm_logits(batch["input_ids"], batch["token_type_ids"],
                                               batch["attention_mask"])
    picked = jnp.take_along_axis(logits, batch["masked_positions"][..., None], axis=1)
    losses = optax.softmax_cross_entropy_with_integer_labels(picked, batch["masked_ids"])
    return jnp.sum(losses * batch["masked_weights"])

  (a, ga), (b, gb) = jax.value_and_grad(masked_only)(params), jax.value_and_grad(full)(params)
  np.testing.assert_allclose(a, b, rtol=1e-6)
  flat_a, flat_b = nnx.to_flat_state(ga), nnx.to_flat_state(gb)
  for (path, x), (_, y) in zip(flat_a, flat_b):
    np.testing.assert_allclose(x[...], y[...], atol=1e-5, err_msg=str(path))


def test_flops_formula_matches_a_hand_count_and_xla():
  h, i, layers, v, length, preds = 64, 256, 2, 300, 32, 5
  # Forward matmuls of one sequence, as (m, k, n) shapes; 2*m*k*n FLOPs each.
  per_layer = [(length, h, h)] * 4 + [(length, h, i), (length, i, h)]  # q k v out, mlp up/down
  per_layer += [(length, h, length), (length, length, h)]  # scores q.k and probs.v, all heads
  head = [(preds, h, h), (preds, h, v)]  # transform and decoder on the predicted positions
  forward = sum(2 * m * k * n for m, k, n in per_layer * layers + head)
  assert metrics.flops_per_token(CFG, length, preds) * length == pytest.approx(3 * forward)

  # XLA's count of the compiled forward + backward (elementwise work included) is within 10%.
  cfg = ModelConfig(vocab_size=512, hidden_size=256, num_layers=2, num_heads=4,
                    intermediate_size=1024, max_position_embeddings=128, hidden_dropout=0.0,
                    attention_dropout=0.0)
  with nnx.use_eager_sharding(False):
    graphdef, params = nnx.split(bert.BertForPreTraining(cfg, rngs=nnx.Rngs(0)))
  batch = _batch(cfg, b=8, length=128, preds=20)
  batch["masked_weights"] = jnp.ones_like(batch["masked_weights"])

  def loss(p):
    return pretraining_sums(nnx.merge(graphdef, p), batch, deterministic=True)["mlm_loss"]

  analysis = jax.jit(jax.grad(loss)).lower(params).compile().cost_analysis()
  analysis = analysis[0] if isinstance(analysis, list) else analysis
  formula = metrics.flops_per_token(cfg, 128, 20) * 8 * 128
  assert analysis["flops"] == pytest.approx(formula, rel=0.10)


def test_throughput_script_emits_valid_json(tmp_path):
  env = dict(os.environ, XLA_FLAGS="", PYTHONUNBUFFERED="1")  # one CPU device
  proc = subprocess.run(
      [sys.executable, "benchmarks/throughput.py", "--preset=bert_tiny", "--steps=3",
       "--batch_size=4", "--seq_len=32"], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
  assert len(rows) == 1
  row = rows[0]
  for key in ("preset", "seq_len", "batch_size", "tokens_per_sec", "step_time_s", "mfu",
              "peak_memory_bytes"):
    assert key in row, key
  assert row["preset"] == "bert_tiny" and row["seq_len"] == 32 and row["batch_size"] == 4
  assert row["tokens_per_sec"] > 0 and 0 < row["mfu"] < 1
  assert row["tokens_per_sec"] == pytest.approx(4 * 32 / row["step_time_s"])
