"""The stack's block choices on small shapes: norms, biases, MLP kinds, rotary positions, and
the attention each layer gets (causal, local windows, packed rows)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpt import config as config_lib
from jaxpt.models import attention, heads, params as params_lib, transformer
from jaxpt.train import metrics

MODERN = dict(norm_position="pre", norm_bias=False, attention_bias=False, mlp_bias=False,
              head_bias=False, mlp="geglu", positions="rope", type_vocab_size=0,
              rope_theta=160_000.0, rope_theta_local=10_000.0, variant="roberta",
              pooler=False, pad_token_id=1)


def tiny(**changes) -> config_lib.ModelConfig:
  base = config_lib.ModelConfig(vocab_size=96, hidden_size=32, num_layers=3, num_heads=2,
                                intermediate_size=48, max_position_embeddings=64,
                                hidden_dropout=0.0, attention_dropout=0.0)
  return config_lib.validate_model(dataclasses.replace(base, **changes))


def encoder(cfg, seed=0):
  with nnx.use_eager_sharding(False):
    return heads.EncoderForPreTraining(cfg, rngs=nnx.Rngs(seed))


def ids(batch=2, length=24, seed=0, low=5, high=96):
  return jnp.asarray(np.random.default_rng(seed).integers(low, high, (batch, length)),
                     jnp.int32)


def flat_params(model):
  return params_lib.flatten(nnx.state(model, nnx.Param).to_pure_dict())


# ---- parameters follow the fields ----


def test_biases_norms_and_positions_follow_the_config():
  bert = flat_params(encoder(tiny()))
  modern = flat_params(encoder(tiny(**MODERN)))
  layer = "encoder.layers.0."
  assert layer + "attention.query.bias" in bert and layer + "mlp.up.bias" in bert
  assert "encoder.embeddings.position.embedding" in bert and "encoder.final_norm.scale" not in bert
  # no biases anywhere in the encoder, no position or token-type tables, a gate, a final norm
  assert not [k for k in modern if k.startswith("encoder.") and k.endswith(".bias")]
  assert "encoder.embeddings.position.embedding" not in modern
  assert "encoder.embeddings.token_type.embedding" not in modern
  assert modern[layer + "mlp.gate.kernel"].shape == (32, 48)
  assert "encoder.final_norm.scale" in modern and "pooler.kernel" not in modern
  assert "mlm.transform.bias" not in modern and "mlm.bias" in modern  # the decoder's bias stays
  rms = flat_params(encoder(tiny(norm="rmsnorm")))
  assert layer + "mlp_norm.scale" in rms and layer + "mlp_norm.bias" not in rms


@pytest.mark.parametrize("field,value", [("norm", "batchnorm"), ("mlp", "relu"),
                                         ("positions", "alibi"), ("norm_position", "sandwich"),
                                         ("attention_kind", "prefix"), ("local_window", -2),
                                         ("global_every", 0)])
def test_unknown_choices_are_refused_by_name(field, value):
  with pytest.raises(config_lib.ConfigError, match=f"model.{field}"):
    tiny(**{field: value})


def test_layer_kinds_follow_global_every():
  cfg = tiny(num_layers=7, local_window=8, global_every=3)
  assert transformer.local_layers(cfg) == [False, True, True, False, True, True, False]
  assert transformer.local_window(cfg) == (4, 4)
  assert transformer.local_window(tiny(**MODERN, local_window=8, attention_kind="causal")) == (7, 0)
  assert not any(transformer.local_layers(tiny(global_every=3)))  # no window: all global


# ---- masks ----


def test_mask_against_a_loop_over_query_key_pairs():
  length = 10
  segments = np.array([[1, 1, 1, 2, 2, 2, 2, 3, 0, 0]])
  key_mask = (segments > 0).astype(np.int32)
  for causal in (False, True):
    for window in (None, (2, 1), (3, 0)):
      got = np.asarray(attention.mask(length, key_mask=jnp.asarray(key_mask),
                                      segment_ids=jnp.asarray(segments), causal=causal,
                                      window=window))[0, 0]
      for i in range(length):
        for j in range(length):
          ok = key_mask[0, j] == 1
          if segments[0, i]:  # a real query: its own sequence, the order, the band
            ok = ok and segments[0, i] == segments[0, j]
            ok = ok and (not causal or j <= i)
            if window:
              ok = ok and i - window[0] <= j <= i + window[1]
          else:  # a padding query: the real keys it is allowed by order and band
            ok = ok and (not causal or j <= i) and (
                not window or i - window[0] <= j <= i + window[1])
          assert got[i, j] == ok, (causal, window, i, j)


# ---- what each position can see, measured on the model's outputs ----


def _changed(model, base, position):
  """Positions whose output changes when the token at `position` changes."""
  other = base.at[:, position].set((base[:, position] + 7) % 90 + 5)
  a, b = np.asarray(model.encode(base)), np.asarray(model.encode(other))
  return set(np.nonzero(np.abs(a - b).max(axis=(0, 2)) > 1e-6)[0].tolist())


def test_causal_layers_never_see_later_tokens():
  model = encoder(tiny(**MODERN, attention_kind="causal", local_window=4, global_every=2))
  x = ids(batch=1, length=16)
  for position in (0, 5, 15):
    assert _changed(model, x, position) == set(range(position, 16))


def test_local_layers_see_only_their_window():
  cfg = tiny(**MODERN, num_layers=2, local_window=4, global_every=2)  # layer 1: (2, 2)
  model = encoder(cfg)
  x = ids(batch=1, length=20)
  kinds = model.encoder._masks_and_ropes(x, jnp.ones_like(x), None)
  # Without attention dropout the local layer's kernel computes its window by blocks.
  local = kinds["local"][0]
  assert isinstance(local, attention.LayerMask) and local.is_local is True
  assert local.local_window == (2, 2) and np.asarray(local.global_mask).all()
  # Layer 0 is global, so token 10 reaches every position through it...
  assert _changed(model, x, 10) == set(range(20))
  # ...while the local layer alone, given the hidden states, lets position 10 reach 8..12.
  layer = model.encoder.layers[1]
  h = jnp.asarray(np.random.default_rng(3).standard_normal((1, 20, 32)), jnp.float32)
  a = layer(h, *kinds["local"], deterministic=True, rngs=None)
  bump = jnp.asarray(np.random.default_rng(4).standard_normal(32), jnp.float32)
  b = layer(h.at[:, 10].add(bump), *kinds["local"], deterministic=True, rngs=None)
  changed = np.nonzero(np.abs(np.asarray(a - b)).max(axis=(0, 2)) > 1e-6)[0].tolist()
  assert changed == [8, 9, 10, 11, 12]


def test_scanned_layers_pick_each_layers_kind():
  cfg = tiny(**MODERN, num_layers=4, local_window=4, global_every=2)
  loop = encoder(cfg)
  scan = encoder(dataclasses.replace(cfg, scan_layers=True))
  params = nnx.state(loop, nnx.Param).to_pure_dict()
  stacked = params_lib.unflatten(params_lib.flatten(params), scanned=False)
  stacked = params_lib.unflatten(
      params_lib.stack_layers(params_lib.flatten(stacked), cfg.num_layers))
  state = nnx.state(scan, nnx.Param)
  state.replace_by_pure_dict(stacked)
  nnx.update(scan, state)
  x = ids(batch=2, length=20)
  np.testing.assert_allclose(scan.encode(x), loop.encode(x), rtol=1e-5, atol=1e-5)
  # and the kinds matter: with every layer global the outputs differ
  all_global = encoder(dataclasses.replace(cfg, local_window=0))
  nnx.update(all_global, nnx.state(loop, nnx.Param))
  assert not np.allclose(all_global.encode(x), loop.encode(x), atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("changes", [{}, MODERN, dict(MODERN, local_window=4, global_every=2)])
def test_packed_sequences_equal_each_sequence_alone(changes):
  cfg = tiny(**changes)
  model = encoder(cfg)
  a, b = ids(batch=1, length=7, seed=1), ids(batch=1, length=9, seed=2)
  pad = jnp.full((1, 4), cfg.pad_token_id, jnp.int32)
  packed = jnp.concatenate([a, b, pad], axis=1)
  segments = jnp.asarray([[1] * 7 + [2] * 9 + [0] * 4])
  hidden = model.encoder(packed, None, (segments > 0).astype(jnp.int32), segment_ids=segments)
  np.testing.assert_allclose(hidden[:, :7], model.encode(a), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(hidden[:, 7:16], model.encode(b), rtol=1e-5, atol=1e-5)


# ---- rotary positions against transformers' implementation ----


def test_rope_equals_transformers():
  torch = pytest.importorskip("torch")
  from transformers import ModernBertConfig
  from transformers.models.modernbert import modeling_modernbert as mb
  hf_cfg = ModernBertConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=3,
                            intermediate_size=32, vocab_size=64, pad_token_id=0,
                            bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)
  rotary = mb.ModernBertRotaryEmbedding(hf_cfg)
  rng = np.random.default_rng(0)
  q = rng.standard_normal((2, 12, 4, 16)).astype(np.float32)  # [batch, length, heads, head_dim]
  positions = np.stack([np.arange(12), np.r_[np.arange(5), np.arange(7)]])
  for layer_type, theta in (("full_attention", 160_000.0), ("sliding_attention", 10_000.0)):
    assert hf_cfg.rope_parameters[layer_type]["rope_theta"] == theta
    cos, sin = rotary(torch.tensor(q), torch.tensor(positions), layer_type)
    want, _ = mb.apply_rotary_pos_emb(torch.tensor(q), torch.tensor(q), cos, sin,
                                      unsqueeze_dim=2)
    got = transformer.apply_rope(jnp.asarray(q), *transformer.rope_tables(
        jnp.asarray(positions), 16, theta))
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)


def test_rope_scores_depend_only_on_the_distance():
  rng = np.random.default_rng(1)
  q, k = (jnp.asarray(rng.standard_normal((1, 1, 1, 16)), jnp.float32) for _ in range(2))

  def score(i, j):
    rq = transformer.apply_rope(q, *transformer.rope_tables(jnp.asarray([[i]]), 16, 1e4))
    rk = transformer.apply_rope(k, *transformer.rope_tables(jnp.asarray([[j]]), 16, 1e4))
    return float(jnp.sum(rq * rk))

  assert score(3, 1) == pytest.approx(score(40, 38), rel=1e-4)
  assert score(3, 1) != pytest.approx(score(3, 2), rel=1e-3)


# ---- the public attention function ----


def test_public_attention_matches_a_softmax_reference():
  rng = np.random.default_rng(2)
  q = jnp.asarray(rng.standard_normal((2, 10, 4, 8)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((2, 10, 2, 8)), jnp.float32)  # grouped: 2 kv heads
  v = jnp.asarray(rng.standard_normal((2, 10, 2, 8)), jnp.float32)
  segments = jnp.asarray([[1] * 6 + [2] * 4, [1] * 10])
  got = attention.attention(q, k, v, segment_ids=segments, causal=True, window=(3, 0))
  kk, vv = np.repeat(np.asarray(k), 2, axis=2), np.repeat(np.asarray(v), 2, axis=2)
  scores = np.einsum("bqnd,bknd->bnqk", np.asarray(q), kk) / np.sqrt(8)
  i, j = np.arange(10)[:, None], np.arange(10)[None]
  s = np.asarray(segments)
  allowed = (s[:, :, None] == s[:, None, :]) & (j <= i) & (j >= i - 3)
  scores = np.where(allowed[:, None], scores, -np.inf)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  np.testing.assert_allclose(got, np.einsum("bnqk,bknd->bqnd", probs, vv), rtol=1e-5,
                             atol=1e-5)
  with pytest.raises(ValueError, match="implementation='flash'"):
    attention.attention(q, k, v, implementation="flash")
  with pytest.raises(ValueError, match="multiple of 128"):
    attention.attention(q, k, v, implementation="splash", interpret=True)
  dropped = attention.attention(q, k, v, dropout_rate=0.5, dropout_rng=jax.random.key(0))
  assert not np.allclose(dropped, attention.attention(q, k, v))


# ---- training: a modern block learns, and the FLOPs formula counts its matmuls ----


@pytest.mark.slow
def test_a_modern_block_overfits_one_batch():
  from test_model import overfit
  cfg = tiny(**MODERN, num_layers=2, local_window=4, global_every=2)
  graphdef, state = nnx.split(encoder(cfg))
  params = state.to_pure_dict()
  rng = np.random.default_rng(0)
  x = rng.integers(5, cfg.vocab_size, (8, 16))
  positions = np.stack([np.sort(rng.choice(16, 3, replace=False)) for _ in range(8)])
  masked = x.copy()
  np.put_along_axis(masked, positions, 4, axis=1)
  batch = {"input_ids": jnp.asarray(masked, jnp.int32),
           "token_type_ids": jnp.zeros((8, 16), jnp.int32),
           "attention_mask": jnp.ones((8, 16), jnp.int32),
           "masked_positions": jnp.asarray(positions, jnp.int32),
           "masked_ids": jnp.asarray(np.take_along_axis(x, positions, 1), jnp.int32),
           "masked_weights": jnp.ones((8, 3), jnp.float32)}
  first, last = overfit(graphdef, params, batch, 200)
  assert first > 4.0 and last < 0.1


def test_flops_formula_counts_the_gate():
  from jaxpt.tasks.pretraining import pretraining_sums
  cfg = tiny(**MODERN, hidden_size=256, num_heads=4, intermediate_size=512, vocab_size=512)
  graphdef, state = nnx.split(encoder(cfg))
  params = state.to_pure_dict()
  b, length, p = 4, 64, 8
  batch = {"input_ids": ids(batch=b, length=length), "token_type_ids": jnp.zeros((b, length), jnp.int32),
           "attention_mask": jnp.ones((b, length), jnp.int32),
           "masked_positions": jnp.tile(jnp.arange(p)[None], (b, 1)),
           "masked_ids": jnp.ones((b, p), jnp.int32),
           "masked_weights": jnp.ones((b, p), jnp.float32)}

  def loss(params):
    return pretraining_sums(nnx.merge(graphdef, params), batch, deterministic=True)["mlm_loss"]

  analysis = jax.jit(jax.grad(loss)).lower(params).compile().cost_analysis()
  analysis = analysis[0] if isinstance(analysis, list) else analysis
  formula = metrics.flops_per_token(cfg, length, p) * b * length
  assert analysis["flops"] == pytest.approx(formula, rel=0.10)
  ungated = metrics.flops_per_token(dataclasses.replace(cfg, mlp="gelu"), length, p) * b * length
  assert analysis["flops"] != pytest.approx(ungated, rel=0.10)


def test_scaled_init_shrinks_only_the_output_projections():
  """GPT-2 / ModernBERT: attention out and MLP down start at 0.02 / sqrt(2 * layers); the
  input projections and embeddings keep 0.02 (a truncated normal at 2 sigma has std 0.88 of
  its scale)."""
  cfg = tiny(**MODERN, num_layers=8, hidden_size=128, intermediate_size=256,
             scaled_init=True, scan_layers=True)
  flat = params_lib.flatten(nnx.state(encoder(cfg), nnx.Param).to_pure_dict(), scanned=True,
                        num_layers=8)
  def std(suffix):
    return float(np.std(np.concatenate([v.ravel() for k, v in flat.items()
                                        if k.endswith(suffix)])))
  full, scaled = 0.02 * 0.88, 0.02 * 0.88 / 4.0
  for suffix in ("attention.out.kernel", "mlp.down.kernel"):
    assert abs(std(suffix) - scaled) < 0.05 * scaled, suffix
  for suffix in ("attention.query.kernel", "mlp.up.kernel", "mlp.gate.kernel",
                 "word.embedding"):
    assert abs(std(suffix) - full) < 0.05 * full, suffix
  plain = params_lib.flatten(nnx.state(encoder(dataclasses.replace(cfg, scaled_init=False)),
                                   nnx.Param).to_pure_dict(), scanned=True, num_layers=8)
  assert abs(float(np.std(plain["encoder.layers.0.mlp.down.kernel"])) - full) < 0.1 * full


@pytest.mark.parametrize("scan,causal", [pytest.param(False, False, marks=pytest.mark.slow),
                                         (True, True)])
def test_splash_inside_the_stack_equals_xla(scan, causal):
  """model.attention='splash' (the TPU kernel, interpreted on CPU): the same hidden states and
  gradients as the XLA path, with packed rows, padding, and local and global layers (scanned
  layers choose the kernel's window by a traced flag)."""
  cfg = tiny(**MODERN, num_layers=3, local_window=32, global_every=2, max_position_embeddings=128,
             scan_layers=scan, attention_kind="causal" if causal else "bidirectional")
  rng = np.random.default_rng(0)
  input_ids = jnp.asarray(rng.integers(5, 96, (2, 128)))
  segments = np.zeros((2, 128), np.int32)
  segments[0, :50], segments[0, 50:120] = 1, 2  # two documents, then padding
  segments[1, :128] = 1
  segments = jnp.asarray(segments)
  mask = (segments > 0).astype(jnp.int32)
  outs = {}
  for kind in ("xla", "splash"):
    model = encoder(dataclasses.replace(cfg, attention=kind))
    graphdef, state = nnx.split(model)

    def loss(state):
      hidden = nnx.merge(graphdef, state).encoder(input_ids, None, mask, segment_ids=segments)
      return jnp.sum(jnp.where(mask[..., None] > 0, hidden, 0.0) ** 2), hidden
    (value, hidden), grads = jax.value_and_grad(loss, has_aux=True)(state)
    outs[kind] = hidden, grads
  real = np.asarray(mask) > 0
  np.testing.assert_allclose(np.asarray(outs["splash"][0])[real], np.asarray(outs["xla"][0])[real],
                             atol=2e-5, rtol=2e-5)
  for a, b in zip(jax.tree.leaves(outs["splash"][1]), jax.tree.leaves(outs["xla"][1])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4, rtol=1e-3)


def test_auto_attention_picks_splash_only_where_it_applies():
  from jaxpt.models.attention import resolve
  assert resolve("auto", length=1024, dropout=False, backend="tpu") == "splash"
  assert resolve("auto", length=1000, dropout=False, backend="tpu") == "xla"  # not a tile
  assert resolve("auto", length=1024, dropout=True, backend="tpu") == "xla"  # BERT's dropout
  assert resolve("auto", length=1024, dropout=False, backend="gpu") == "xla"
  assert resolve("splash", length=1024, dropout=False, backend="cpu") == "splash"
  with pytest.raises(config_lib.ConfigError, match="splash has no attention dropout"):
    tiny(attention="splash", attention_dropout=0.1)


def test_each_layer_kind_takes_cudnn_only_where_exact_and_a_named_cudnn_is_checked():
  """`model.attention="cudnn"`: refused up front for what no batch could make exact (float32,
  ModernBERT's symmetric local window), and per layer kind at trace time for packed rows or a
  padding mask not known to be right padding; an Ettin-style decoder (causal, a left
  window) takes it on global and local layers alike."""
  with pytest.raises(config_lib.ConfigError, match="bf16"):
    tiny(attention="cudnn")
  with pytest.raises(config_lib.ConfigError, match="to the right.*local_window=16"):
    tiny(attention="cudnn", dtype="bfloat16", local_window=16, global_every=3)
  with pytest.raises(config_lib.ConfigError, match="no attention dropout"):
    tiny(attention="cudnn", dtype="bfloat16", attention_dropout=0.1)
  decoder = tiny(attention="cudnn", dtype="bfloat16", local_window=8, global_every=3,
                 attention_kind="causal", variant="roberta", pad_token_id=1)
  with nnx.use_eager_sharding(False):
    stack = heads.DecoderForCausalLM(decoder, rngs=nnx.Rngs(0)).encoder
  assert stack.kernels(32, packed=False, right_padded=True) == {"global": "cudnn",
                                                               "local": "cudnn"}
  for packed, right_padded, needle in ((True, True, "packed rows"),
                                       (False, False, "not known to be right padding")):
    with pytest.raises(ValueError, match=needle):
      stack.kernels(32, packed=packed, right_padded=right_padded)
  # auto on this CPU: XLA everywhere.
  auto = dataclasses.replace(decoder, attention="auto")
  with nnx.use_eager_sharding(False):
    stack = heads.DecoderForCausalLM(auto, rngs=nnx.Rngs(0)).encoder
  assert set(stack.kernels(32, packed=True, right_padded=False).values()) == {"xla"}


def test_auto_attention_per_layer_kind_on_each_backend():
  """What `model.attention="auto"` runs, per layer kind, for the presets' mask kinds."""
  from jaxpt import config as config_lib
  from jaxpt.models.transformer import layer_kernels

  def kernels(preset, backend, packed, **model):
    cfg = config_lib.load(config_lib.resolve_preset(preset)).model
    cfg = dataclasses.replace(cfg, **model)
    return layer_kernels(cfg, 1024, packed=packed, right_padded=True, backend=backend)
  bf16 = dict(dtype="bfloat16")
  assert kernels("modernbert_base", "gpu", True, **bf16) == {"global": "xla", "local": "xla"}
  assert kernels("modernbert_base", "gpu", False, **bf16) == {"global": "cudnn",
                                                              "local": "xla"}
  assert kernels("ettin_decoder_17m", "gpu", False, **bf16) == {"global": "cudnn",
                                                                "local": "cudnn"}
  assert kernels("ettin_decoder_17m", "gpu", False) == {"global": "xla", "local": "xla"}
  assert kernels("bert_base", "gpu", False, **bf16) == {"global": "xla"}  # dropout 0.1
  assert kernels("bert_base", "gpu", False, attention_dropout=0.0, **bf16) == {
      "global": "cudnn"}
  assert kernels("gpt2", "gpu", False, **bf16) == {"global": "xla"}  # GPT-2's dropout
  assert kernels("modernbert_base", "tpu", True, **bf16) == {"global": "splash",
                                                             "local": "splash"}
  assert kernels("modernbert_base", "cpu", False) == {"global": "xla", "local": "xla"}


@pytest.mark.parametrize("scan", [False, True])
def test_global_layers_by_spans_equal_the_whole_mask_in_the_stack(scan):
  """At 256 tokens XLA's global layers run `global_spans` (model.kernels=auto on CPU); the
  same weights with `model.kernels=plain` run them over the whole mask. Packed rows with
  padding, local and global layers: the same hidden states at real tokens and the same
  gradients of a loss on them."""
  cfg = tiny(**MODERN, num_layers=3, local_window=16, global_every=2,
             max_position_embeddings=256, scan_layers=scan)
  assert "by spans of keys" in transformer.describe_kernels(cfg, 256, packed=True)
  plain_cfg = dataclasses.replace(cfg, kernels="plain")
  assert "spans" not in transformer.describe_kernels(plain_cfg, 256, packed=True)
  spans, plain = encoder(cfg), encoder(plain_cfg)
  nnx.update(plain, nnx.state(spans, nnx.Param))
  segments = np.zeros((2, 256), np.int32)
  segments[0, :40], segments[0, 40:170], segments[0, 170:230] = 1, 2, 3
  segments[1, :256] = 1
  segments = jnp.asarray(segments)
  input_ids = ids(batch=2, length=256, seed=4)
  real = (segments > 0)[..., None]

  def loss(model):
    hidden = model.encoder(input_ids, None, (segments > 0).astype(jnp.int32),
                           segment_ids=segments)
    return jnp.sum(jnp.where(real, hidden, 0.0) ** 2), hidden
  # the two paths differ in code: the spans' work list runs as while loops
  def jaxpr(model):
    graphdef, state = nnx.split(model)
    return str(jax.make_jaxpr(lambda state: loss(nnx.merge(graphdef, state))[0])(state))
  assert "while" in jaxpr(spans) and "while" not in jaxpr(plain)
  (_, h_spans), g_spans = nnx.value_and_grad(loss, has_aux=True)(spans)
  (_, h_plain), g_plain = nnx.value_and_grad(loss, has_aux=True)(plain)
  np.testing.assert_allclose(np.asarray(h_spans)[np.asarray(segments) > 0],
                             np.asarray(h_plain)[np.asarray(segments) > 0], atol=2e-5)
  for a, b in zip(jax.tree.leaves(g_spans), jax.tree.leaves(g_plain)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4, rtol=1e-4)
