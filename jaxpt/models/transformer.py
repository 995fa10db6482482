"""One Transformer stack whose blocks are configuration: BERT, RoBERTa and their successors.

What a family chooses is a `ModelConfig` field: where the norms sit (`norm_position`: post-LN
as BERT, or pre-LN with a final norm), which norm (`norm`, `norm_bias`), biases
(`attention_bias`, `mlp_bias`), positions (`positions`: a learned table or rotary, with
`rope_theta` / `rope_theta_local`), the MLP (`mlp`: GELU, tanh-GELU, GeGLU, SwiGLU) and the
attention each layer gets (`attention_kind` bidirectional or causal; `local_window` with
`global_every`: layer i attends globally when i % global_every == 0, the others within the
window). Heads live in `heads.py`, masks and the attention function in `attention.py`.

Every parameter carries logical axis names (`vocab`, `embed`, `heads`, `head_dim`, `mlp`,
...); the one mapping from those names to mesh axes lives in `jaxpt/sharding.py`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxpt import config as config_lib
from jaxpt import sharding
from jaxpt.config import ModelConfig
from jaxpt.models import attention as attn_lib
from jaxpt.models import ops

ACTIVATION = ("batch", "length", "act_embed")  # hidden states: split by batch only


def dense_init(cfg: ModelConfig, axes: tuple[str | None, ...], *, output: bool = False):
  """Truncated normal (at 2 standard deviations) of `initializer_range`; a block's output
  projection (`output`) at initializer_range / sqrt(2 * num_layers) with `scaled_init`
  (GPT-2, ModernBERT: the residual stream's variance stays put as layers add to it)."""
  std = cfg.initializer_range
  if output and cfg.scaled_init:
    std /= (2 * cfg.num_layers) ** 0.5
  return nnx.with_partitioning(jax.nn.initializers.truncated_normal(std), axes)


def zeros(axes: tuple[str | None, ...]):
  return nnx.with_partitioning(jax.nn.initializers.zeros, axes)


def dtype(cfg: ModelConfig):
  return jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32


def norm(cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.Module:
  """The configured norm over `hidden_size` (`scale`, and `bias` when `norm_bias`)."""
  ones = nnx.with_partitioning(jax.nn.initializers.ones, ("norm",))
  if cfg.norm == "rmsnorm":
    return nnx.RMSNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps, dtype=dtype(cfg),
                       scale_init=ones, rngs=rngs)
  return ops.LayerNorm(
      cfg.hidden_size, custom=ops.custom_kernels(cfg.kernels), epsilon=cfg.layer_norm_eps,
      dtype=dtype(cfg), use_bias=cfg.norm_bias, scale_init=ones, bias_init=zeros(("norm",)),
      rngs=rngs)


def activation(cfg: ModelConfig):
  """The MLP's (and the MLM head's) nonlinearity."""
  custom = ops.custom_kernels(cfg.kernels)
  if cfg.mlp in ("gelu", "geglu"):
    return ops.gelu if custom else (lambda x: jax.nn.gelu(x, approximate=False))
  if cfg.mlp == "gelu_tanh":
    return lambda x: jax.nn.gelu(x, approximate=True)
  return jax.nn.silu  # swiglu


def layer_kinds(cfg: ModelConfig) -> dict:
  """The layer kinds of a model ("global", and "local" with windows): kind -> window."""
  kinds = {"global": None}
  if any(local_layers(cfg)):
    kinds["local"] = local_window(cfg)
  return kinds


def layer_kernels(cfg: ModelConfig, length: int, *, packed: bool, right_padded: bool,
                  backend: str | None = None) -> dict:
  """Per layer kind: the attention implementation it runs at `length` (on `backend`, default
  JAX's). cuDNN takes only the kinds its arguments express exactly
  (`attention.cudnn_refusal`); the others run XLA's, or are refused when
  `model.attention="cudnn"` was asked for by name."""
  kernel = attn_lib.resolve(cfg.attention, length=length, dropout=cfg.attention_dropout > 0,
                            dtype=dtype(cfg), backend=backend)
  if kernel != "cudnn":
    return {kind: kernel for kind in layer_kinds(cfg)}
  segments = "packed" if packed else ("padding" if right_padded else "unknown padding")
  out = {}
  for kind, window in layer_kinds(cfg).items():
    why = attn_lib.cudnn_refusal(segments=segments, causal=cfg.attention_kind == "causal",
                                 window=window, dropout=cfg.attention_dropout > 0)
    if why and cfg.attention == "cudnn":
      raise ValueError(f"model.attention='cudnn' cannot compute {why} exactly in the "
                       f"{kind} layers; use 'auto' or 'xla'")
    out[kind] = "xla" if why else "cudnn"
  return out


def describe_kernels(cfg: ModelConfig, length: int, *, packed: bool) -> str:
  """One line for the log: what each layer kind runs, e.g. "cudnn for global layers, xla
  local(64, 64) by blocks for local layers", "xla by spans of keys" (`global_spans`)."""
  kernels = layer_kernels(cfg, length, packed=packed, right_padded=True)
  full = kernels["global"]
  if full == "xla" and attn_lib.spans_apply(length=length, dropout=cfg.attention_dropout > 0,
                                            custom=ops.custom_kernels(cfg.kernels)):
    full += " by spans of keys"
  if len(kernels) == 1:
    return full
  left, right = local_window(cfg)
  local = kernels["local"]
  local += f" local({left}, {right})" + (" by blocks" if local == "xla"
                                        and cfg.attention_dropout == 0 else "")
  return f"{full} for global layers, {local} for local layers"


local_window = config_lib.local_window  # (left, right) of a local layer (config.py)


def local_layers(cfg: ModelConfig) -> list[bool]:
  """Per layer, whether it attends within the local window."""
  return [cfg.local_window > 0 and i % cfg.global_every != 0 for i in range(cfg.num_layers)]


def position_ids(length: int, segment_ids=None):
  """0..length-1, or per packed sequence from its own start: `[1 or batch, length]`."""
  index = jnp.arange(length)[None]
  if segment_ids is None:
    return index
  starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool),
                            segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
  return index - jax.lax.cummax(jnp.where(starts, index, 0), axis=1)


def rope_tables(positions, head_dim: int, theta: float):
  """(cos, sin) `[batch or 1, length, 1, head_dim]`, float32: rotary embeddings in the
  half-split layout (dimension d pairs with d + head_dim / 2), as HuggingFace's models."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  angles = positions[..., None].astype(jnp.float32) * inv_freq  # [batch, length, head_dim / 2]
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x, cos, sin):
  """x `[batch, length, heads, head_dim]` rotated by position."""
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return (x.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin).astype(x.dtype)


class Embeddings(nnx.Module):
  """Token embeddings, plus learned positions and token types where configured, then the
  norm (`embedding_norm`) and dropout."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    init = jax.nn.initializers.truncated_normal(cfg.initializer_range)
    self.word = nnx.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype(cfg),
                          embedding_init=nnx.with_partitioning(init, ("vocab", "embed")),
                          rngs=rngs)
    self.position = nnx.data(None)
    if cfg.positions == "learned":
      self.position = nnx.Embed(cfg.max_position_embeddings, cfg.hidden_size, dtype=dtype(cfg),
                                embedding_init=nnx.with_partitioning(init, (None, "embed")),
                                rngs=rngs)
    self.token_type = nnx.data(None)
    if cfg.type_vocab_size > 0:
      self.token_type = nnx.Embed(cfg.type_vocab_size, cfg.hidden_size, dtype=dtype(cfg),
                                  embedding_init=nnx.with_partitioning(init, (None, "embed")),
                                  rngs=rngs)
    self.norm = norm(cfg, rngs) if cfg.embedding_norm else nnx.data(None)
    self.dropout = ops.Dropout(cfg.hidden_dropout, custom=ops.custom_kernels(cfg.kernels))
    self.variant, self.pad_token_id = cfg.variant, cfg.pad_token_id

  def __call__(self, input_ids, token_type_ids, *, deterministic: bool, rngs,
               segment_ids=None, positions=None):
    """`positions` `[batch, length]`: rows of the learned table given explicitly (decoding)."""
    x = _lookup(self.word, input_ids)  # [batch, length, embed]
    if self.position is not None:
      if positions is None:
        positions = self.position_ids(input_ids, segment_ids)
      x = x + _lookup(self.position, positions)
    if self.token_type is not None:
      x = x + _lookup(self.token_type, token_type_ids)
    if self.norm is not None:
      x = self.norm(x)
    return self.dropout(x, deterministic=deterministic, rngs=rngs)

  def position_ids(self, input_ids, segment_ids=None):
    """Rows of the learned table. BERT: 0..length-1. RoBERTa: pad_id + 1, pad_id + 2, ...
    over non-padding tokens and pad_id at padding (fairseq's convention, kept by HuggingFace).
    In packed rows (`segment_ids`), each packed sequence counts from its own start."""
    real = (input_ids != self.pad_token_id).astype(jnp.int32)
    if segment_ids is not None:
      index = position_ids(input_ids.shape[1], segment_ids)
      return (index + 1) * real + self.pad_token_id if self.variant == "roberta" else index
    if self.variant == "roberta":
      return jnp.cumsum(real, axis=1) * real + self.pad_token_id
    return position_ids(input_ids.shape[1])  # [1, length]: broadcast over the batch


def _lookup(embed: nnx.Embed, ids):
  """Rows of a (possibly sharded) table: gathered whole first, as FSDP gathers any weight.

  A gather from a table split along `embed` would produce activations split along `embed`,
  which XLA can only turn into batch-split ones by replicating them.
  """
  table = sharding.constrain(embed.embedding[...], (None, None))
  return jnp.take(table, ids, axis=0).astype(embed.dtype or table.dtype)


class SelfAttention(nnx.Module):
  """Multi-head self-attention: q, k, v and out projections (heads kept as their own axis, so
  tensor parallelism splits them), rotary positions when configured."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    h, n, d = cfg.hidden_size, cfg.num_heads, cfg.head_dim
    qkv = dict(kernel_init=dense_init(cfg, ("embed", "heads", "head_dim")),
               bias_init=zeros(("heads", "head_dim")), use_bias=cfg.attention_bias,
               dtype=dtype(cfg), rngs=rngs)
    self.query = nnx.LinearGeneral(h, (n, d), **qkv)
    self.key = nnx.LinearGeneral(h, (n, d), **qkv)
    self.value = nnx.LinearGeneral(h, (n, d), **qkv)
    self.out = nnx.LinearGeneral((n, d), h, axis=(-2, -1),
                                 kernel_init=dense_init(cfg, ("heads", "head_dim", "embed"),
                                                        output=True),
                                 bias_init=zeros(("embed",)), use_bias=cfg.attention_bias,
                                 dtype=dtype(cfg), rngs=rngs)
    self.custom = ops.custom_kernels(cfg.kernels)
    self.attention_dropout = ops.Dropout(cfg.attention_dropout, custom=self.custom)
    self.scale = d ** -0.5

  def __call__(self, x, mask, rope=None, *, deterministic: bool, rngs, cache=None):
    """`mask` `[batch, 1, queries, keys]` (attention.mask); `rope` (cos, sin) or None.

    `cache` (decoding): (keys, values, index), the layer's cached keys and values
    `[batch, slots, heads, head_dim]` and the slot of the first query; this call's keys and
    values are written from `index` on and the queries attend over all slots (`mask` says
    which). Returns (output, (keys, values)) then.
    """
    q = self.query(x)  # [batch, length, heads, head_dim]
    k = self.key(x)
    v = self.value(x)
    if rope is not None:
      q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    if isinstance(mask, attn_lib.LayerMask):  # the kernel builds the mask itself
      return self.out(mask.run(q, k, v, self.scale))
    if cache is not None:
      keys, values, index = cache
      keys = jax.lax.dynamic_update_slice_in_dim(keys, k.astype(keys.dtype), index, axis=1)
      values = jax.lax.dynamic_update_slice_in_dim(values, v.astype(values.dtype), index, axis=1)
      y = attn_lib.dot_product(q, keys.astype(q.dtype), values.astype(q.dtype), mask,
                               scale=self.scale, custom=self.custom)
      return self.out(y), (keys, values)
    if deterministic or self.attention_dropout.rate == 0.0:
      y = attn_lib.dot_product(q, k, v, mask, scale=self.scale, custom=self.custom)
    else:  # dropout on the attention probabilities (BERT)
      b, length, n, _ = q.shape
      keep, keep_prob = self.attention_dropout.keep_mask((b, n, length, k.shape[1]), rngs)
      y = attn_lib.dot_product(q, k, v, mask, scale=self.scale, keep=keep,
                               keep_prob=keep_prob, custom=self.custom)
    return self.out(y)  # [batch, length, embed]


class Mlp(nnx.Module):
  """`down(act(up(x)))`, or gated: `down(act(gate(x)) * up(x))` (GeGLU, SwiGLU)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    linear = dict(dtype=dtype(cfg), use_bias=cfg.mlp_bias, rngs=rngs)
    self.up = nnx.Linear(cfg.hidden_size, cfg.intermediate_size,
                         kernel_init=dense_init(cfg, ("embed", "mlp")),
                         bias_init=zeros(("mlp",)), **linear)
    self.gate = nnx.data(None)
    if cfg.mlp in ("geglu", "swiglu"):
      self.gate = nnx.Linear(cfg.hidden_size, cfg.intermediate_size,
                             kernel_init=dense_init(cfg, ("embed", "mlp")),
                             bias_init=zeros(("mlp",)), **linear)
    self.down = nnx.Linear(cfg.intermediate_size, cfg.hidden_size,
                           kernel_init=dense_init(cfg, ("mlp", "embed"), output=True),
                           bias_init=zeros(("embed",)), **linear)
    self.activation = activation(cfg)

  def __call__(self, x):
    if self.gate is None:
      return self.down(self.activation(self.up(x)))  # [batch, length, embed]
    return self.down(self.activation(self.gate(x)) * self.up(x))


class Layer(nnx.Module):
  """One block. Post-LN (BERT): x = N(x + Drop(Attn(x))); x = N(x + Drop(Mlp(x))).
  Pre-LN: x = x + Drop(Attn(N(x))); x = x + Drop(Mlp(N(x)))."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, first: bool = False):
    self.attention = SelfAttention(cfg, rngs=rngs)
    # ModernBERT's layer 0 has no attention norm: its input is the normed embeddings.
    skip = first and cfg.norm_position == "pre" and not cfg.first_attention_norm
    self.attention_norm = nnx.data(None) if skip else norm(cfg, rngs)
    self.mlp = Mlp(cfg, rngs=rngs)
    self.mlp_norm = norm(cfg, rngs)
    self.dropout = ops.Dropout(cfg.hidden_dropout, custom=ops.custom_kernels(cfg.kernels))
    self.pre_norm = cfg.norm_position == "pre"

  def __call__(self, x, mask, rope=None, skip_attention_norm=None, *, deterministic: bool,
               rngs, cache=None):
    """`skip_attention_norm`: a traced per-layer flag of scanned layers (layer 0 of a model
    without `first_attention_norm`, whose stacked parameters still hold a norm). `cache`: see
    `SelfAttention`; then returns (x, the layer's updated keys and values)."""
    def drop(y):
      return self.dropout(y, deterministic=deterministic, rngs=rngs)

    def attend(h):
      out = self.attention(h, mask, rope, deterministic=deterministic, rngs=rngs, cache=cache)
      return out if cache is not None else (out, None)
    if self.pre_norm:
      h = x if self.attention_norm is None else self.attention_norm(x)
      if skip_attention_norm is not None:
        h = jnp.where(skip_attention_norm, x, h)
      y, kv = attend(h)
      x = x + drop(y)
      x = x + drop(self.mlp(self.mlp_norm(x)))
    else:
      y, kv = attend(x)
      x = self.attention_norm(x + drop(y))
      x = self.mlp_norm(x + drop(self.mlp(x)))
    return x if cache is None else (x, kv)


class Transformer(nnx.Module):
  """Embeddings, the layers (a Python loop, or one layer scanned over stacked parameters),
  and the final norm of a pre-LN stack."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.embeddings = Embeddings(cfg, rngs=rngs)
    if cfg.scan_layers:
      # One Layer whose parameters have a leading `layers` axis.
      @nnx.split_rngs(splits=cfg.num_layers)
      @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
      def stacked(rngs):
        return Layer(cfg, rngs=rngs)
      self.layers = stacked(rngs)
    else:
      self.layers = nnx.List([Layer(cfg, rngs=rngs, first=i == 0)
                              for i in range(cfg.num_layers)])
    self.final_norm = norm(cfg, rngs) if cfg.norm_position == "pre" else nnx.data(None)

  def _kinds(self) -> dict:
    """The layer kinds of this model ("global", and "local" with windows): kind -> window."""
    return layer_kinds(self.config)

  def _ropes(self, positions) -> dict:
    """Per layer kind: the rotary tables of `positions` (None without rotary positions)."""
    cfg = self.config
    thetas = {"global": cfg.rope_theta, "local": cfg.rope_theta_local}
    return {kind: rope_tables(positions, cfg.head_dim, thetas[kind])
            if cfg.positions == "rope" else None for kind in self._kinds()}

  def kernel(self, length: int) -> str:
    """The attention implementation the layers run at this length (`model.attention`)."""
    cfg = self.config
    return attn_lib.resolve(cfg.attention, length=length, dropout=cfg.attention_dropout > 0,
                            dtype=dtype(cfg))

  def kernels(self, length: int, *, packed: bool, right_padded: bool) -> dict:
    """Per layer kind: the implementation it runs (`layer_kernels`)."""
    return layer_kernels(self.config, length, packed=packed, right_padded=right_padded)

  def _masks_and_ropes(self, input_ids, attention_mask, segment_ids, right_padded=False):
    """Per layer kind ("global", "local"): the mask (an array, or a `LayerMask` when the
    kernel builds it: splash, cuDNN, and XLA's local layers by blocks) and the rotary tables."""
    cfg, length = self.config, input_ids.shape[1]
    ropes = self._ropes(position_ids(length, segment_ids))
    kinds = self._kinds()
    kernels = self.kernels(length, packed=segment_ids is not None, right_padded=right_padded)
    blocked = "local" in kinds and cfg.attention_dropout == 0.0  # local layers by blocks
    spans = kernels["global"] == "xla" and attn_lib.spans_apply(
        length=length, dropout=cfg.attention_dropout > 0, custom=ops.custom_kernels(cfg.kernels))
    if blocked or spans or any(k != "xla" for k in kernels.values()):
      segments = (attention_mask > 0 if segment_ids is None
                  else jnp.where(attention_mask > 0, segment_ids, 0))
      global_mask = None if kernels["global"] != "xla" or spans else attn_lib.mask(
          length, key_mask=attention_mask, segment_ids=segment_ids,
          causal=cfg.attention_kind == "causal")
      return {kind: (attn_lib.LayerMask(
          segments.astype(jnp.int32), kind == "local", global_mask,
          cfg.attention_kind == "causal", kinds.get("local"), kernels["global"],
          jax.default_backend() != "tpu", kernels.get("local", "xla"),
          segment_ids is None, ops.custom_kernels(cfg.kernels)), ropes[kind])
          for kind in kinds}
    out = {}
    for kind, window in self._kinds().items():
      m = attn_lib.mask(length, key_mask=attention_mask, segment_ids=segment_ids,
                        causal=cfg.attention_kind == "causal", window=window)
      out[kind] = (m, ropes[kind])
    return out

  def __call__(self, input_ids, token_type_ids=None, attention_mask=None, *,
               deterministic: bool = True, rngs: nnx.Rngs | None = None, segment_ids=None,
               right_padded: bool = False):
    """Last hidden states `[batch, length, embed]`.

    `segment_ids` (packed rows: 1..K per packed sequence, 0 at padding) keeps the sequences
    of a row apart: a token attends only within its own sequence, and positions restart.
    `right_padded`: the caller guarantees `attention_mask` is 1s then 0s in every row (jaxpt's
    loaders pad so), which lets cuDNN take the padding as lengths; any mask is exact without.
    """
    cfg = self.config
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    if attention_mask is None:
      attention_mask, right_padded = jnp.ones_like(input_ids), True  # no padding at all
    x = self.embeddings(input_ids, token_type_ids, deterministic=deterministic, rngs=rngs,
                        segment_ids=segment_ids)
    x = sharding.constrain(x, ACTIVATION)
    kinds = self._masks_and_ropes(input_ids, attention_mask, segment_ids, right_padded)
    local = local_layers(cfg)

    def apply(layer, x, mask, rope, rngs, skip=None):
      return layer(x, mask, rope, skip, deterministic=deterministic, rngs=rngs)

    if cfg.remat != "none":  # keep only the layer inputs (and matmuls) for backward
      policy = (jax.checkpoint_policies.dots_with_no_batch_dims_saveable
                if cfg.remat == "save_dots" else None)
      apply = nnx.remat(apply, policy=policy)
    if not cfg.scan_layers:
      for layer, is_local in zip(self.layers, local):
        mask, rope = kinds["local" if is_local else "global"]
        x = sharding.constrain(apply(layer, x, mask, rope, rngs), ACTIVATION)
      return self._final(x)

    def pick(is_local):  # a traced per-layer flag chooses between the two kinds
      if "local" not in kinds:
        return kinds["global"]
      (mask, rope), (global_mask, global_rope) = kinds["local"], kinds["global"]
      rope = jax.tree.map(lambda a, b: jnp.where(is_local, a, b), rope, global_rope)
      if isinstance(mask, attn_lib.LayerMask):
        return dataclasses.replace(mask, is_local=is_local), rope
      return jnp.where(is_local, mask, global_mask), rope

    flags = self._layer_flags()
    if rngs is None:  # deterministic: nothing to split per layer
      @nnx.scan(in_axes=(nnx.Carry, 0, 0), out_axes=nnx.Carry)
      def body(x, layer, flags):
        return sharding.constrain(apply(layer, x, *pick(flags[0]), None, flags[1]),
                                  ACTIVATION)
      return self._final(body(x, self.layers, flags))

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.scan(in_axes=(nnx.Carry, 0, 0, 0), out_axes=nnx.Carry)
    def body_with_rngs(x, layer, flags, rngs):
      return sharding.constrain(apply(layer, x, *pick(flags[0]), rngs, flags[1]), ACTIVATION)
    return self._final(body_with_rngs(x, self.layers, flags, rngs))

  def _final(self, x):
    return x if self.final_norm is None else self.final_norm(x)

  def _layer_flags(self):
    """What a scanned layer is told, per layer: (is it local, does it skip its attention norm
    (ModernBERT's layer 0) or None)."""
    cfg = self.config
    skip_first = cfg.norm_position == "pre" and not cfg.first_attention_norm
    return (jnp.asarray(local_layers(cfg)),
            jnp.arange(cfg.num_layers) == 0 if skip_first else None)

  def decode(self, input_ids, positions, cache: dict):
    """One decoding call of a causal stack over a key/value cache, deterministic.

    `input_ids` `[batch, queries]` fill the cache slots `cache["index"]` on (a prompt at
    once, then one token at a time); `positions` `[batch, queries]` are their positions (left
    padding shifts them); `cache` holds `keys` / `values` `[layers, batch, slots, heads,
    head_dim]` (a tuple of per-layer arrays for unscanned layers), `key_mask` `[batch, slots]`
    (True at real tokens, this call's included) and
    `index`. Returns (last hidden states `[batch, queries, embed]`, the updated cache).
    A query sees the real keys of slots up to its own, within the window on local layers.
    """
    cfg = self.config
    index, key_mask = cache["index"], cache["key_mask"]
    queries, slots = input_ids.shape[1], key_mask.shape[1]
    x = self.embeddings(input_ids, jnp.zeros_like(input_ids), deterministic=True, rngs=None,
                        positions=positions)
    q = index + jnp.arange(queries)[:, None]  # query slots
    j = jnp.arange(slots)[None, :]
    ropes = self._ropes(positions)
    kinds = {}
    for kind, window in self._kinds().items():
      allowed = (j <= q) & ((j >= q - window[0]) if window is not None else True)
      # [batch, 1, queries, slots]; a query always sees itself (a left-padding query, whose
      # output nobody reads, would otherwise see nothing)
      m = (allowed[None] & key_mask[:, None, :]) | (j == q)[None]
      kinds[kind] = (m[:, None], ropes[kind])
    local = local_layers(cfg)

    def layer_call(layer, x, keys, values, kind, skip=None):
      return layer(x, *kind, skip, deterministic=True, rngs=None, cache=(keys, values, index))

    if not cfg.scan_layers:  # one cache array per layer: updated in place, never restacked
      out_k, out_v = [], []
      for i, (layer, is_local) in enumerate(zip(self.layers, local)):
        x, (k, v) = layer_call(layer, x, cache["keys"][i], cache["values"][i],
                               kinds["local" if is_local else "global"])
        out_k.append(k)
        out_v.append(v)
      keys, values = tuple(out_k), tuple(out_v)
    else:
      def pick(is_local):
        if "local" not in kinds:
          return kinds["global"]
        return jax.tree.map(lambda a, b: jnp.where(is_local, a, b), kinds["local"],
                            kinds["global"])
      flags = self._layer_flags()

      @nnx.scan(in_axes=(nnx.Carry, 0, 0, 0, 0), out_axes=(nnx.Carry, 0))
      def body(x, layer, flags, keys, values):
        x, kv = layer_call(layer, x, keys, values, pick(flags[0]), flags[1])
        return x, kv
      x, (keys, values) = body(x, self.layers, flags, cache["keys"], cache["values"])
    cache = dict(cache, keys=keys, values=values, index=index + queries)
    return self._final(x), cache

  def empty_cache(self, batch: int, slots: int) -> dict:
    """A key/value cache for `decode`: `slots` positions per row, nothing filled. Keys and
    values are `[layers, batch, slots, heads, head_dim]` for scanned layers, else a tuple of
    one `[batch, slots, heads, head_dim]` array per layer."""
    cfg = self.config
    shape = (batch, slots, cfg.num_heads, cfg.head_dim)
    if cfg.scan_layers:
      keys = jnp.zeros((cfg.num_layers, *shape), dtype(cfg))
      values = jnp.zeros((cfg.num_layers, *shape), dtype(cfg))
    else:
      keys = tuple(jnp.zeros(shape, dtype(cfg)) for _ in range(cfg.num_layers))
      values = tuple(jnp.zeros(shape, dtype(cfg)) for _ in range(cfg.num_layers))
    return {"keys": keys, "values": values, "key_mask": jnp.zeros((batch, slots), bool),
            "index": jnp.zeros((), jnp.int32)}
