"""`jaxpt.attention`: every implementation that runs here against a numpy reference, values
and gradients, on each mask kind; plants show the comparisons can fail."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpt
from jaxpt.models import attention as attention_lib

B, L, H, KV, D = 2, 128, 4, 2, 16  # splash tiles of 128: one block per row
PACKED = np.array([[1] * 50 + [2] * 60 + [0] * 18, [1] * 100 + [0] * 28])


def reference(q, k, v, *, segment_ids=None, causal=False, window=None):
  """Softmax attention in numpy, float64, with the contract's mask."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  groups = q.shape[2] // k.shape[2]
  k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
  scores = np.einsum("bqnd,bknd->bnqk", q, k) / np.sqrt(q.shape[-1])
  i, j = np.arange(L)[:, None], np.arange(L)[None]
  allowed = np.ones((q.shape[0], L, L), bool)
  if segment_ids is not None:
    allowed &= segment_ids[:, :, None] == segment_ids[:, None, :]
  if causal:
    allowed &= j <= i
  if window is not None:
    allowed &= (j >= i - window[0]) & (j <= i + window[1])
  scores = np.where(allowed[:, None], scores, -np.inf)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  return np.einsum("bnqk,bknd->bqnd", probs, v)


def inputs(seed=0):
  rng = np.random.default_rng(seed)
  return tuple(jnp.asarray(rng.standard_normal(shape), jnp.float32)
               for shape in ((B, L, H, D), (B, L, KV, D), (B, L, KV, D)))


CASES = {
    "full": {},
    "padded": dict(segment_ids=(np.arange(L)[None] < np.array([[L], [90]])).astype(np.int32)),
    "packed": dict(segment_ids=PACKED),
    "causal": dict(causal=True),
    "symmetric_window": dict(window=(8, 8)),
    "left_window_causal": dict(window=(8, 0), causal=True),
    "packed_window": dict(segment_ids=PACKED, window=(4, 4)),
    "packed_causal": dict(segment_ids=PACKED, causal=True),
}


def real_queries(kw):
  seg = kw.get("segment_ids")
  return np.ones((B, L), bool) if seg is None else np.asarray(seg) > 0


def run(implementation, kw, q, k, v):
  args = dict(kw)
  if args.get("segment_ids") is not None:
    args["segment_ids"] = jnp.asarray(args["segment_ids"])
  return jaxpt.attention(q, k, v, implementation=implementation, interpret=True, **args)


def check_values(implementation, kw, q, k, v, **plant):
  got = np.asarray(run(implementation, dict(kw, **plant), q, k, v))
  want = reference(q, k, v, **{key: np.asarray(val) if key == "segment_ids" else val
                               for key, val in kw.items()})
  real = real_queries(kw)
  np.testing.assert_allclose(got[real], want[real], rtol=2e-5, atol=2e-5)
  assert np.isfinite(got).all()


def check_gradients(implementation, kw, q, k, v):
  """d/d(q, k, v) of sum(out * w) over real queries, against the XLA reference's (whose
  values the test above checks against numpy)."""
  real = jnp.asarray(real_queries(kw))[..., None, None]
  w = jnp.asarray(np.random.default_rng(5).standard_normal((B, L, H, D)), jnp.float32) * real

  def loss(impl):
    return lambda q, k, v: jnp.sum(run(impl, kw, q, k, v) * w)

  got = jax.grad(loss(implementation), argnums=(0, 1, 2))(q, k, v)
  want = jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)
  for g, r in zip(got, want):
    assert np.isfinite(np.asarray(g)).all()
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", list(CASES))
def test_xla_equals_the_reference(case):
  check_values("xla", CASES[case], *inputs())


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_splash_equals_the_reference_values_and_gradients(case):
  q, k, v = inputs()
  check_values("splash", CASES[case], q, k, v)
  check_gradients("splash", CASES[case], q, k, v)


def test_splash_packed_window_in_the_fast_tier():
  check_values("splash", CASES["packed_window"], *inputs())


@pytest.mark.parametrize("implementation", ["xla", "splash"])
def test_plants_make_the_comparison_fail(implementation):
  q, k, v = inputs()
  # A kernel that ignores segment ids lets packed documents see each other.
  with pytest.raises(AssertionError):
    check_values(implementation, CASES["packed"], q, k, v, segment_ids=None)
  # A window that looks one token into the future.
  with pytest.raises(AssertionError):
    check_values(implementation, CASES["left_window_causal"], q, k, v, causal=False,
                 window=(8, 1))


def test_bad_arguments_are_named():
  q, k, v = inputs()
  with pytest.raises(ValueError, match="implementation='cudnn_x'"):
    jaxpt.attention(q, k, v, implementation="cudnn_x")
  with pytest.raises(ValueError, match="window=\\(4, -1\\)"):
    jaxpt.attention(q, k, v, window=(4, -1))
  with pytest.raises(ValueError, match="no attention dropout"):
    jaxpt.attention(q, k, v, implementation="splash", dropout_rate=0.1,
                    dropout_rng=jax.random.key(0))
  with pytest.raises(ValueError, match="must divide query heads"):
    jaxpt.attention(q, k[:, :, :1].repeat(3, axis=2), v[:, :, :1].repeat(3, axis=2))


def test_auto_picks_an_exact_implementation_for_every_backend():
  choose = attention_lib.choose
  assert choose(backend="cpu", dropout=False) == "xla"
  assert choose(backend="tpu", dropout=False) == "splash"
  assert choose(backend="tpu", dropout=True) == "xla"  # BERT's dropout
  # A GPU: cuDNN only where its arguments say exactly what the contract asks, in bf16.
  assert choose(backend="gpu", dropout=False) == "cudnn"
  assert choose(backend="gpu", dropout=False, segments="padding", causal=True,
                window=(63, 0)) == "cudnn"  # Ettin's decoders
  for kw in (dict(dropout=True), dict(dropout=False, dtype=jnp.float32),
             dict(dropout=False, segments="packed"),  # MaxText #4476: documents would mix
             dict(dropout=False, window=(64, 64)),  # ModernBERT's local layers
             dict(dropout=False, window=(8, 1)),  # jax #39576: a window into the future
             dict(dropout=False, segments="left or right?")):
    assert choose(backend="gpu", **kw) == "xla", kw


# The cases cuDNN's arguments express: padding as lengths (`padding_only`), causal masks,
# windows on the left of a causal mask (a (left, 0) window is one), grouped queries.
CUDNN_CASES = ("full", "padded", "causal", "left_window_causal", "padded_causal",
               "left_window")
CASES_ALL = dict(CASES, padded_causal=dict(CASES["padded"], causal=True),
                 left_window=dict(window=(8, 0)))


@pytest.mark.parametrize("case", CUDNN_CASES)
def test_the_cudnn_arguments_say_exactly_what_the_contract_asks(case):
  """`_cudnn` turns the contract into `jax.nn.dot_product_attention`'s arguments (lengths,
  is_causal, local_window_size); run through JAX's own XLA implementation of those same
  arguments, they equal the numpy reference. On a GPU the next test runs them through cuDNN."""
  q, k, v = inputs()
  kw = CASES_ALL[case]
  seg = kw.get("segment_ids")
  got = attention_lib._cudnn(q, k, v, segment_ids=None if seg is None else jnp.asarray(seg),
                             causal=kw.get("causal", False), window=kw.get("window"),
                             scale=D ** -0.5, implementation="xla")
  want = reference(q, k, v, **kw)
  real = real_queries(kw)
  np.testing.assert_allclose(np.asarray(got)[real], want[real], rtol=2e-5, atol=2e-5)
  # The plant: lengths dropped, padding keys are seen (a causal query never sees the right
  # padding anyway).
  if seg is not None and not kw.get("causal"):
    planted = attention_lib._cudnn(q, k, v, segment_ids=None, causal=kw.get("causal", False),
                                   window=kw.get("window"), scale=D ** -0.5,
                                   implementation="xla")
    assert not np.allclose(np.asarray(planted)[real], want[real], rtol=2e-5, atol=2e-5)


def test_cudnn_refuses_what_it_cannot_compute_exactly_in_one_line():
  q, k, v = (x.astype(jnp.bfloat16) for x in inputs())
  for kw, needle in ((dict(segment_ids=jnp.asarray(PACKED)), "packed rows"),
                     (dict(window=(8, 8)), "to the right"),
                     (dict(dropout_rate=0.1, dropout_rng=jax.random.key(0)), "dropout")):
    with pytest.raises(ValueError, match=needle) as e:
      jaxpt.attention(q, k, v, implementation="cudnn", **kw)
    assert "implementation='cudnn'" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("window,causal,length", [((8, 8), False, L), ((4, 4), False, 37),
                                                  ((7, 0), True, L), ((5, 2), False, 50)])
def test_local_blocks_equal_the_reference_and_xla_gradients(window, causal, length):
  """XLA's blockwise local attention (only 3 x block keys per query block) against the float64
  reference, with packed rows and padding, lengths that are not a multiple of the block, and
  its gradients against the full masked path's."""
  q, k, v = (x[:, :length] for x in inputs(3))
  seg = np.asarray(PACKED)[:, :length].copy()
  seg[1, length - 5:] = 0  # padding at the end of row 1
  window = (window[0], 0) if causal else window
  real = seg > 0
  got = attention_lib.local_blocks(q, k, v, jnp.asarray(seg), window=window, scale=D ** -0.5)
  want = reference_at(q, k, v, seg, window, length)
  np.testing.assert_allclose(np.asarray(got)[real], want[real], atol=2e-5, rtol=2e-5)

  def loss(fn):
    return lambda q, k, v: jnp.sum(jnp.where(jnp.asarray(real)[..., None, None], fn(q, k, v),
                                             0.0) ** 2)
  blocks = loss(lambda q, k, v: attention_lib.local_blocks(q, k, v, jnp.asarray(seg),
                                                            window=window, scale=D ** -0.5))
  full = loss(lambda q, k, v: attention_lib.dot_product(
      q, k, v, attention_lib.mask(length, segment_ids=jnp.asarray(seg), window=window),
      scale=D ** -0.5))
  for a, b in zip(jax.grad(blocks, argnums=(0, 1, 2))(q, k, v),
                  jax.grad(full, argnums=(0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4, rtol=1e-4)
  # Planted: a window one token wider on the left is a different function.
  wider = attention_lib.local_blocks(q, k, v, jnp.asarray(seg), window=(window[0] + 1, window[1]),
                                     scale=D ** -0.5)
  assert np.abs(np.asarray(wider)[real] - want[real]).max() > 1e-3


def reference_at(q, k, v, seg, window, length):
  """`reference` at another length (it reads the module's L)."""
  global L
  saved, L = L, length
  try:
    return reference(q, k, v, segment_ids=seg, window=window)
  finally:
    L = saved


def test_global_spans_on_a_mesh_equal_one_device():
  """`global_spans` under an 8-device mesh (rows over data x fsdp, heads over tensor, by
  shard_map) computes what it computes without one: values and gradients."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  from jaxpt import config as config_lib, sharding
  rng = np.random.default_rng(3)
  q, k, v = (jnp.asarray(rng.standard_normal((4, 256, 4, 8)), jnp.float32) for _ in range(3))
  seg = np.ones((4, 256), np.int32)
  seg[0, 100:] = 2
  seg[1, 30:200], seg[1, 200:] = 2, 0
  seg[2, ::64] = 3  # a sequence that is not contiguous: its span covers every occurrence
  seg = jnp.asarray(seg)

  def loss(q, k, v):
    out = attention_lib.global_spans(q, k, v, seg, causal=False, scale=8 ** -0.5)
    return jnp.sum(jnp.where(seg[..., None, None] > 0, out, 0.0) ** 2), out
  (value, out), grads = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(q, k, v)
  mesh = sharding.make_mesh(config_lib.MeshConfig(data=2, fsdp=2, tensor=2))
  rows = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor", None))
  with jax.set_mesh(mesh):
    placed = [jax.device_put(x, rows) for x in (q, k, v)]
    assert "shard_map" in str(jax.make_jaxpr(loss)(*placed))
    (value_m, out_m), grads_m = jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))(
        *placed)
  real = np.asarray(seg > 0)
  np.testing.assert_allclose(np.asarray(out_m)[real], np.asarray(out)[real], atol=1e-5)
  for a, b in zip(grads_m, grads):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
  # and against the whole-mask path: the same function at real tokens
  full = attention_lib.dot_product(q, k, v, attention_lib.mask(256, segment_ids=seg),
                                   scale=8 ** -0.5)
  np.testing.assert_allclose(np.asarray(out)[real], np.asarray(full)[real], atol=1e-5)
