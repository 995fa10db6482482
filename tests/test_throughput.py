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

from jaxpt.train import metrics
from jaxpt.config import ModelConfig
from jaxpt.models import heads
from jaxpt.tasks.pretraining import pretraining_sums

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


@pytest.mark.slow
def test_masked_only_head_equals_the_full_head():
  with nnx.use_eager_sharding(False):
    graphdef, params = nnx.split(heads.EncoderForPreTraining(CFG, rngs=nnx.Rngs(0)))
  batch = _batch(CFG)

  def masked_only(p):  # the training path: the head runs on the gathered positions
    return pretraining_sums(nnx.merge(graphdef, p), batch, deterministic=True)["mlm_loss"]

  def full(p):  # the head on every position, then the same positions picked from its logits
    logits = nnx.merge(graphdef, p).mlm_logits(batch["input_ids"], batch["attention_mask"],
                                               batch["token_type_ids"])
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
    graphdef, params = nnx.split(heads.EncoderForPreTraining(cfg, rngs=nnx.Rngs(0)))
  batch = _batch(cfg, b=8, length=128, preds=20)
  batch["masked_weights"] = jnp.ones_like(batch["masked_weights"])

  def loss(p):
    return pretraining_sums(nnx.merge(graphdef, p), batch, deterministic=True)["mlm_loss"]

  analysis = jax.jit(jax.grad(loss)).lower(params).compile().cost_analysis()
  analysis = analysis[0] if isinstance(analysis, list) else analysis
  formula = metrics.flops_per_token(cfg, 128, 20) * 8 * 128
  assert analysis["flops"] == pytest.approx(formula, rel=0.10)


@pytest.mark.slow
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


@pytest.mark.slow
def test_packed_sequences_do_not_attend_across_their_boundaries():
  # Two examples alone, each in its own padded row, and the same two packed into one row:
  # every real position's hidden state, and the MLM / NSP logits, are the same.
  cfg = CFG
  with nnx.use_eager_sharding(False):
    model = heads.EncoderForPreTraining(cfg, rngs=nnx.Rngs(1))
  rng = np.random.default_rng(0)
  a = [2, *rng.integers(5, 300, 9), 3, *rng.integers(5, 300, 6), 3]  # [CLS] A [SEP] B [SEP]
  b = [2, *rng.integers(5, 300, 7), 3, *rng.integers(5, 300, 4), 3]
  ta = [0] * 11 + [1] * 7
  tb = [0] * 9 + [1] * 5
  length = 32

  def row(ids, types):
    pad = length - len(ids)
    return ids + [0] * pad, types + [0] * pad, [1] * len(ids) + [0] * pad

  alone = [row(a, ta), row(b, tb)]
  ids = jnp.asarray([r[0] for r in alone], jnp.int32)
  types = jnp.asarray([r[1] for r in alone], jnp.int32)
  mask = jnp.asarray([r[2] for r in alone], jnp.int32)
  positions = jnp.asarray([[1, 12], [1, 10]], jnp.int32)
  mlm_alone, nsp_alone = model(ids, types, mask, positions)
  h_alone = model.encoder(ids, types, mask)

  p_ids, p_types, p_mask = row(a + b, ta + tb)
  segments = [1] * len(a) + [2] * len(b) + [0] * (length - len(a) - len(b))
  packed = dict(segment_ids=jnp.asarray([segments], jnp.int32),
                cls_positions=jnp.asarray([[0, len(a), -1]], jnp.int32))
  mlm_packed, nsp_packed = model(
      jnp.asarray([p_ids]), jnp.asarray([p_types]), jnp.asarray([p_mask]),
      jnp.asarray([[1, 12, len(a) + 1, len(a) + 10]], jnp.int32), **packed)
  h_packed = model.encoder(jnp.asarray([p_ids]), jnp.asarray([p_types]),
                               jnp.asarray([p_mask]), segment_ids=packed["segment_ids"])
  np.testing.assert_allclose(h_packed[0, :len(a)], h_alone[0, :len(a)], atol=2e-5)
  np.testing.assert_allclose(h_packed[0, len(a):len(a) + len(b)], h_alone[1, :len(b)],
                             atol=2e-5)
  np.testing.assert_allclose(mlm_packed[0], mlm_alone.reshape(4, -1), atol=2e-4)
  np.testing.assert_allclose(nsp_packed[0, :2], nsp_alone, atol=2e-5)
  # Without the segment ids the packed row mixes the two: the check can fail.
  h_mixed = model.encoder(jnp.asarray([p_ids]), jnp.asarray([p_types]),
                              jnp.asarray([p_mask]))
  assert np.abs(h_mixed[0, len(a):len(a) + len(b)] - h_alone[1, :len(b)]).max() > 1e-2


def test_packing_keeps_every_example_and_cuts_padding():
  from jaxpt.data import examples
  rng = np.random.default_rng(0)
  n, width = 300, 32
  lengths = rng.integers(4, width + 1, n)  # BERT's short_seq_prob and document ends
  ids = np.where(np.arange(width)[None] < lengths[:, None], rng.integers(5, 300, (n, width)), 0)
  arrays = examples.ExampleArrays(ids, (np.arange(width)[None] >= lengths[:, None] // 2) * 1,
                                  lengths, rng.integers(0, 2, n))
  packed = examples.pack(arrays, 3, pad_id=0)
  assert len(packed) < len(arrays) and packed.lengths.sum() == arrays.lengths.sum()
  assert (packed.cls_positions >= 0).sum() == len(arrays)
  assert 1 - packed.lengths.sum() / (len(packed) * width) < 1 - arrays.lengths.sum() / (
      len(arrays) * width)
  # Each packed sequence is one original example, intact, with its NSP label.
  originals = {(arrays.input_ids[i, :n].tobytes(), int(arrays.nsp_labels[i]))
               for i, n in enumerate(arrays.lengths)}
  found = set()
  for r in range(len(packed)):
    for k, start in enumerate(packed.cls_positions[r]):
      if start < 0:
        continue
      n = int(np.sum(packed.segment_ids[r] == k + 1))
      found.add((packed.input_ids[r, start:start + n].tobytes(), int(packed.nsp_labels[r, k])))
  assert found == originals


@pytest.mark.slow
def test_throughput_script_packs_documents_for_the_span_kernel():
  """`--docs`: synthetic rows of packed documents, whose segment ids reach the global layers'
  span kernel; a BERT preset (sentence pairs for next-sentence prediction) is refused."""
  env = dict(os.environ, XLA_FLAGS="", PYTHONUNBUFFERED="1")
  run = lambda preset: subprocess.run(
      [sys.executable, "benchmarks/throughput.py", f"--preset={preset}", "--steps=1",
       "--batch_size=2", "--seq_len=128", "--docs=16"], cwd=REPO, env=env,
      capture_output=True, text=True, timeout=300)
  proc = run("modernbert_tiny")
  assert proc.returncode == 0, proc.stderr[-3000:]
  row = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")][-1]
  assert row["docs"] == 16 and "by spans of keys" in row["kernels"] and row["tokens_per_sec"] > 0
  refused = run("bert_tiny")
  assert refused.returncode != 0 and "--docs" in refused.stderr
  code = ("import json, sys; sys.path.insert(0, 'benchmarks'); "
          "from throughput import packed_segments; "
          "print(json.dumps(packed_segments(3, 512, 32, seed=1).tolist()))")
  seg = np.asarray(json.loads(subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                                             capture_output=True, text=True, check=True,
                                             timeout=120).stdout.splitlines()[-1]))
  assert (seg > 0).all() and (np.diff(seg, axis=1) >= 0).all()  # every token, in order
  lengths = np.concatenate([np.bincount(row)[1:] for row in seg])
  assert 20 < lengths[:-1].mean() < 45 and lengths.max() > 64  # geometric around 32
