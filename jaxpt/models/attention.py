"""Attention: the masks every layer kind needs, and the one function that applies them.

Shapes: `q` `[batch, length, heads, head_dim]`, `k` and `v` `[batch, keys, kv_heads, head_dim]`
(`kv_heads` divides `heads`: grouped queries); masks are boolean, True where a query may see a
key, `[batch, 1, queries, keys]`. A window `(left, right)` lets the query at i see keys j with
i - left <= j <= i + right.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jaxpt.models import ops

# The mesh axes of the batch and of the heads (jaxpt.sharding.LOGICAL_AXIS_RULES; not imported:
# jaxpt.config imports this module).
_ROWS, _HEADS = ("data", "fsdp"), "tensor"


def mask(length: int, *, key_mask=None, segment_ids=None, causal: bool = False,
         window: tuple[int, int] | None = None):
  """`[batch or 1, 1, length or 1, length]` boolean mask.

  `key_mask` `[batch, length]` (1 = a real token) hides padding keys. `segment_ids`
  `[batch, length]` (packed rows: 1..K per sequence, 0 at padding) keeps each query within its
  own sequence; a padding query sees the real keys of its row (its output is never read, and a
  row it could see nothing in would divide by zero in the softmax's backward pass).
  """
  if not causal and window is None and segment_ids is None:  # padding only: [batch, 1, 1, keys]
    if key_mask is None:
      return jnp.ones((1, 1, length, length), bool)
    return (key_mask > 0)[:, None, None, :]
  i = jnp.arange(length)[:, None]
  j = jnp.arange(length)[None, :]
  allowed = jnp.ones((length, length), bool)
  if causal:
    allowed = allowed & (j <= i)
  if window is not None:
    left, right = window
    allowed = allowed & (j >= i - left) & (j <= i + right)
  allowed = allowed[None]  # [1, queries, keys]
  if segment_ids is not None:
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    pad_query = (segment_ids == 0)[:, :, None]
    real_key = (segment_ids != 0)[:, None, :]
    allowed = allowed & (same | (pad_query & real_key))
  if key_mask is not None:
    allowed = allowed & (key_mask[:, None, :] > 0)
  return allowed[:, None]  # [batch or 1, 1, queries, keys]


def dot_product(q, k, v, mask, *, scale: float, keep=None, keep_prob=None,
                custom: bool = False):
  """softmax(q k^T * scale, where `mask`) v `[batch, length, heads, head_dim]`.

  `keep` (a boolean `[batch, heads, queries, keys]` dropout mask, kept entries scaled by
  1 / `keep_prob`) is dropout on the probabilities, which needs them materialised: then the
  scores are computed here (`custom`: with ops.attention's hand-written backward pass).
  Without dropout, `custom` runs `ops.attention_blocks` (queries by blocks, probabilities
  recomputed in the backward pass), otherwise `jax.nn.dot_product_attention`.
  """
  if keep is None:
    if custom:
      return ops.attention_blocks(q, k, v, mask, scale)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale)
  groups = q.shape[2] // k.shape[2]
  if groups > 1:  # grouped queries: each key/value head serves `groups` query heads
    k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
  keep_prob = jnp.asarray(keep_prob, jnp.float32)
  kernel = ops.attention if custom else ops.attention_plain
  return kernel(q, k, v, mask, keep, keep_prob, scale)


IMPLEMENTATIONS = ("auto", "xla", "cudnn", "splash")
CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)  # cuDNN's fused attention takes no float32


def cudnn_refusal(*, segments: str, causal: bool, window, dropout: bool) -> str | None:
  """Why `jax.nn.dot_product_attention(implementation="cudnn")` cannot compute this case
  exactly, or None when it can. `segments`: "none", "padding" (one sequence per row, then
  padding: taken as lengths) or "packed" (several sequences a row). Its arguments express
  causal masks, right padding as sequence lengths, and a window on the left of a causal mask;
  it has no segment ids (so packed rows would attend across documents), no window to the
  right of the query, and no dropout in its public arguments."""
  if dropout:
    return "attention dropout (jax.nn.dot_product_attention takes none)"
  if segments == "packed":
    return "packed rows (segment ids: cuDNN would let the sequences of a row see each other)"
  if segments not in ("none", "padding"):
    return ("a padding mask not known to be right padding (cuDNN takes padding as lengths; "
            "the caller passes right_padded=True when it is)")
  if window is not None and not causal and window[1] > 0:
    return f"a window that sees {window[1]} token(s) to the right (cuDNN windows are causal)"
  return None


def _cudnn(q, k, v, *, segment_ids, causal: bool, window, scale: float,
           implementation: str = "cudnn"):
  """The contract's case as `jax.nn.dot_product_attention` arguments: padding (segment ids of
  1 then 0) as sequence lengths, a (left, 0) window as a causal window. `implementation`
  "xla" runs the same arguments through JAX's reference (tests of this translation on CPU)."""
  lengths = None
  if segment_ids is not None:
    lengths = jnp.sum(segment_ids > 0, axis=1).astype(jnp.int32)
  if window is not None:
    causal = True  # (left, 0), or anything under a causal mask: the right side is hidden
    window = (window[0], 0)
  return jax.nn.dot_product_attention(
      q, k, v, scale=scale, is_causal=causal, query_seq_lengths=lengths,
      key_value_seq_lengths=lengths, local_window_size=window, implementation=implementation)


def _splash(q, k, v, *, segment_ids, causal: bool, window, scale: float, interpret: bool):
  """TPU splash attention (Pallas): `interpret=True` runs the same kernel on any backend (slow:
  for tests). Its masks are exact for causal, windows and packed rows; it does not scale the
  scores, so q is scaled here; grouped key/value heads are repeated to the query heads."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
  b, length, n, _ = q.shape
  left, right = window if window is not None else (None, None)
  if causal:
    right = 0 if right is None else min(right, 0)
  if left is None and right is None:
    base = sm.FullMask((length, length))
  elif left is None and right == 0:
    base = sm.CausalMask((length, length))
  else:
    base = sm.LocalMask((length, length), (left, right), offset=0)
  block = 128  # the kernel's tile along queries and keys
  if length % block:
    raise ValueError(f"implementation='splash': the length ({length}) must be a multiple "
                     f"of {block}")
  sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                        block_q_dq=block, block_kv_dq=block)
  kernel = sk.make_splash_mha(sm.MultiHeadMask([base] * n), block_sizes=sizes, head_shards=1,
                              q_seq_shards=1, interpret=interpret)
  groups = n // k.shape[2]
  if groups > 1:
    k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
  heads_first = lambda x: jnp.swapaxes(x, 1, 2)  # [batch, heads, length, head_dim]
  qh = heads_first(q * jnp.asarray(scale, q.dtype))
  if segment_ids is None:
    out = jax.vmap(kernel)(qh, heads_first(k), heads_first(v))
  else:
    out = jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=sk.SegmentIds(s, s)))(
        qh, heads_first(k), heads_first(v), segment_ids.astype(jnp.int32))
  return jnp.swapaxes(out, 1, 2).astype(q.dtype)


def local_blocks(q, k, v, segment_ids, *, window: tuple[int, int], scale: float):
  """Attention within a window `(left, right)` that computes only the scores it needs: the
  length is cut into blocks of max(left, right) tokens, and each block of queries attends to
  its own block and its two neighbours (3 x block keys, not the whole row). The same function
  as `dot_product` under `mask(window=...)` with `segment_ids` (1..K per sequence, 0 at
  padding) keeping sequences apart: O(length x window), not O(length^2). No dropout.
  (Autodiff here: `ops.attention_blocks`' recomputing kernel measured no faster on these
  small blocks.)"""
  b, length, n, d = q.shape
  left, right = window
  block = max(left, right, 1)
  blocks = -(-length // block)
  pad = blocks * block - length
  if pad:
    q, k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (q, k, v))
    segment_ids = jnp.pad(segment_ids, ((0, 0), (0, pad)), constant_values=-1)
  groups = n // k.shape[2]
  if groups > 1:
    k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)

  def around(x, fill):  # [b, blocks * block, ...] -> [b, blocks, 3 * block, ...]
    x = x.reshape(b, blocks, block, *x.shape[2:])
    widths = [(0, 0), (1, 1)] + [(0, 0)] * (x.ndim - 2)
    x = jnp.pad(x, widths, constant_values=fill)
    return jnp.concatenate([x[:, :-2], x[:, 1:-1], x[:, 2:]], axis=2)

  qb = q.reshape(b, blocks, block, n, d)
  kb, vb = around(k, 0), around(v, 0)
  seg_q = segment_ids.reshape(b, blocks, block)
  seg_k = around(segment_ids, -2)  # -2: outside the row, never equal to a query's segment
  scores = jnp.einsum("bxqnd,bxknd->bxnqk", qb, kb,
                      preferred_element_type=jnp.float32) * scale
  i = jnp.arange(block)[:, None]  # query offset within its block
  j = jnp.arange(3 * block)[None, :] - block  # key offset from the block's start
  near = (j - i >= -left) & (j - i <= right)  # [block, 3 * block]
  allowed = near[None, None] & (seg_q[..., :, None] == seg_k[..., None, :])
  scores = jnp.where(allowed[:, :, None], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum("bxnqk,bxknd->bxqnd", probs, vb)
  return out.reshape(b, blocks * block, n, d)[:, :length]


def spans_apply(*, length: int, dropout: bool, custom: bool) -> bool:
  """Whether XLA's global layers run `global_spans` (a block of queries against only the keys
  of its sequences) rather than `dot_product` over a whole mask: with jaxpt's kernels
  (`model.kernels`), no attention dropout, and a length that is a multiple of its block."""
  return custom and not dropout and length % ops.SPAN_BLOCK == 0


def global_spans(q, k, v, segment_ids, *, causal: bool, scale: float):
  """`ops.attention_spans` (packed rows' global attention, each block of queries against the
  keys of its own sequences) on each device's rows: under a mesh, a `shard_map` over the
  batch axes (and the heads' tensor axis), since its work list is per row. `segment_ids`
  `[batch, length]`, 1..K per sequence, 0 at padding."""
  groups = q.shape[2] // k.shape[2]
  if groups > 1:  # grouped queries: each key/value head serves `groups` query heads
    k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
  run = lambda q, k, v, s: ops.attention_spans(q, k, v, s, scale, causal, ops.SPAN_BLOCK)
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not {*_ROWS, _HEADS} <= set(mesh.axis_names):
    return run(q, k, v, segment_ids)
  rows, heads = mesh.shape[_ROWS[0]] * mesh.shape[_ROWS[1]], mesh.shape[_HEADS]
  if rows * heads == 1 or q.shape[0] % rows or q.shape[2] % heads:
    return run(q, k, v, segment_ids)
  spec = P(_ROWS, None, _HEADS, None)
  return jax.shard_map(run, mesh=mesh, in_specs=(spec, spec, spec, P(_ROWS, None)),
                       out_specs=spec, check_vma=False)(q, k, v, segment_ids)


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["segment_ids", "is_local", "global_mask"],
                   meta_fields=["causal", "local_window", "implementation", "interpret",
                                "local_implementation", "padding_only", "custom"])
@dataclasses.dataclass
class LayerMask:
  """What a layer passes in place of a mask array when its kernel builds the mask itself:
  splash, or XLA's local layers computed by blocks (`local_blocks`). It holds the segment ids
  (packed rows, or 1 at real tokens and 0 at padding), the global layers' mask array (XLA),
  causality, the local window, and whether this layer is local (a Python bool, or a traced
  flag of scanned layers: then `lax.cond` picks the kernel)."""

  segment_ids: jax.Array
  is_local: object
  # [batch, 1, length, length] for XLA's global layers by `dot_product`; None for splash,
  # cuDNN, and XLA's global layers by `global_spans`
  global_mask: object
  causal: bool
  local_window: tuple[int, int] | None
  implementation: str  # of the global layers: "xla" | "splash" | "cudnn"
  interpret: bool = False
  local_implementation: str = "xla"  # of the local layers (splash: the global layers')
  padding_only: bool = False  # segment_ids are 1s then 0s (right padding), not packed rows
  custom: bool = False  # XLA's global layers through ops.attention_blocks (model.kernels)

  def run(self, q, k, v, scale: float):
    def kernel(local: bool):
      window = self.local_window if local else None
      chosen = self.local_implementation if local else self.implementation
      if self.implementation == "splash":
        return attention(q, k, v, segment_ids=self.segment_ids, causal=self.causal,
                         window=window, scale=scale, implementation="splash",
                         interpret=self.interpret)
      if chosen == "cudnn":
        return attention(q, k, v, segment_ids=self.segment_ids, causal=self.causal,
                         window=window, scale=scale, implementation="cudnn",
                         padding_only=self.padding_only)
      if local:
        return local_blocks(q, k, v, self.segment_ids, window=window, scale=scale)
      if self.global_mask is None:  # XLA's global layers by spans of keys (`spans_apply`)
        return global_spans(q, k, v, self.segment_ids, causal=self.causal, scale=scale)
      return dot_product(q, k, v, self.global_mask, scale=scale, custom=self.custom)
    if self.local_window is None or self.is_local is False:
      return kernel(False)
    if self.is_local is True:
      return kernel(True)
    return jax.lax.cond(self.is_local, lambda: kernel(True), lambda: kernel(False))


def resolve(implementation: str, *, length: int, dropout: bool,
            backend: str | None = None, dtype=jnp.float32) -> str:
  """The kernel a model's layers run (`model.attention`): "auto" is splash on TPU when the
  layers have no attention dropout and the length is a multiple of splash's 128-token tile;
  cuDNN on a GPU for bf16 without dropout (each layer kind then takes it only where exact:
  `transformer.layer_kernels`); else XLA's."""
  if implementation != "auto":
    return implementation
  backend = backend or jax.default_backend()
  chosen = choose(backend=backend, dropout=dropout, dtype=dtype)
  return chosen if chosen != "splash" or length % 128 == 0 else "xla"


def choose(*, backend: str, dropout: bool, segments: str = "none", causal: bool = False,
           window=None, dtype=jnp.bfloat16) -> str:
  """What `implementation="auto"` runs: splash on TPU when no dropout is asked for (its masks
  are exact for every kind); cuDNN on a GPU for bf16/fp16 when its arguments express the case
  exactly (`cudnn_refusal`); else XLA's."""
  if backend == "tpu" and not dropout:
    return "splash"
  if (backend == "gpu" and jnp.dtype(dtype) in [jnp.dtype(d) for d in CUDNN_DTYPES]
      and cudnn_refusal(segments=segments, causal=causal, window=window,
                        dropout=dropout) is None):
    return "cudnn"
  return "xla"


def attention(q, k, v, *, segment_ids=None, causal: bool = False,
              window: tuple[int, int] | None = None, dropout_rate: float = 0.0,
              dropout_rng=None, scale: float | None = None, implementation: str = "auto",
              interpret: bool = False, padding_only: bool = False):
  """Self-attention of `q` `[batch, length, heads, head_dim]` and `k, v`
  `[batch, length, kv_heads, head_dim]` (kv_heads divides heads) under one contract.

  `segment_ids` `[batch, length]` (0 = padding) keeps packed sequences apart: a token sees
  only keys of its own sequence (a padding query's output is not meaningful); `causal` hides
  later keys; `window=(left, right)`, both >= 0, lets the query at i see keys
  i - left <= j <= i + right; `dropout_rate` with `dropout_rng` drops attention
  probabilities; `scale` defaults to 1/sqrt(head_dim); `padding_only` says the segment ids
  are one sequence per row followed by padding (1s then 0s), which cuDNN can take as lengths.
  Implementations: "xla" (the reference: scores materialised, any combination), "cudnn"
  (`jax.nn.dot_product_attention`'s cuDNN kernel, on NVIDIA GPUs, bf16/fp16; only the cases
  its arguments express exactly, `cudnn_refusal`: no packed rows, no window to the right of
  a non-causal query, no dropout), "splash" (TPU splash attention; `interpret=True` runs it
  anywhere, for tests; no dropout), "auto" (`choose`). Returns q's shape and dtype.
  """
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation={implementation!r}: must be one of "
                     + ", ".join(IMPLEMENTATIONS))
  if q.shape[2] % k.shape[2]:
    raise ValueError(f"key/value heads ({k.shape[2]}) must divide query heads ({q.shape[2]})")
  if not 0.0 <= dropout_rate < 1.0:
    raise ValueError(f"dropout_rate={dropout_rate}: must be in [0, 1)")
  if window is not None and (window[0] < 0 or window[1] < 0):
    raise ValueError(f"window={window}: both sides must be >= 0 (a token sees itself)")
  segments = "none" if segment_ids is None else ("padding" if padding_only else "packed")
  if implementation == "auto":
    implementation = choose(backend=jax.default_backend(), dropout=dropout_rate > 0,
                            segments=segments, causal=causal, window=window, dtype=q.dtype)
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  if implementation == "cudnn":
    why = cudnn_refusal(segments=segments, causal=causal, window=window,
                        dropout=dropout_rate > 0)
    if why:
      raise ValueError(f"implementation='cudnn' cannot compute {why} exactly; use 'xla'")
    return _cudnn(q, k, v, segment_ids=segment_ids, causal=causal, window=window, scale=scale)
  if implementation == "splash":
    if dropout_rate > 0:
      raise ValueError("implementation='splash' has no attention dropout; use 'xla'")
    return _splash(q, k, v, segment_ids=segment_ids, causal=causal, window=window,
                   scale=scale, interpret=interpret)
  m = mask(q.shape[1], segment_ids=segment_ids, causal=causal, window=window)
  if dropout_rate == 0.0:
    return dot_product(q, k, v, m, scale=scale)
  if dropout_rng is None:
    raise ValueError("dropout_rate > 0 needs dropout_rng")
  shape = (q.shape[0], q.shape[2], q.shape[1], k.shape[1])  # [batch, heads, queries, keys]
  keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, shape)
  return dot_product(q, k, v, m, scale=scale, keep=keep, keep_prob=1.0 - dropout_rate)
