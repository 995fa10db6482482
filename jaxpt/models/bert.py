"""BERT encoder with its pretraining heads (masked LM, next sentence) in Flax NNX.

Post-LN Transformer as in Devlin et al. (2019) and HuggingFace's `BertForPreTraining`. Every
parameter carries logical axis names (`vocab`, `embed`, `heads`, `head_dim`, `mlp`, ...); the one
mapping from those names to mesh axes lives in `jaxpt/sharding.py`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxpt import sharding
from jaxpt.config import ModelConfig
from jaxpt.models import ops

ACTIVATION = ("batch", "length", "act_embed")  # hidden states: split by batch only


def _dense_init(cfg: ModelConfig, axes: tuple[str | None, ...]):
  return nnx.with_partitioning(
      jax.nn.initializers.truncated_normal(cfg.initializer_range), axes)


def _zeros(axes: tuple[str | None, ...]):
  return nnx.with_partitioning(jax.nn.initializers.zeros, axes)


def _layer_norm(cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return ops.LayerNorm(
      cfg.hidden_size, custom=ops.custom_kernels(cfg.kernels), epsilon=cfg.layer_norm_eps,
      dtype=_dtype(cfg),
      scale_init=nnx.with_partitioning(jax.nn.initializers.ones, ("norm",)),
      bias_init=_zeros(("norm",)), rngs=rngs)


def _gelu(x, custom: bool):
  return ops.gelu(x) if custom else jax.nn.gelu(x, approximate=False)


def _dtype(cfg: ModelConfig):
  return jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32


class Embeddings(nnx.Module):
  """Word + position + token-type embeddings, then LayerNorm and dropout."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    init = jax.nn.initializers.truncated_normal(cfg.initializer_range)
    self.word = nnx.Embed(cfg.vocab_size, cfg.hidden_size, dtype=_dtype(cfg),
                          embedding_init=nnx.with_partitioning(init, ("vocab", "embed")),
                          rngs=rngs)
    self.position = nnx.Embed(cfg.max_position_embeddings, cfg.hidden_size, dtype=_dtype(cfg),
                              embedding_init=nnx.with_partitioning(init, (None, "embed")),
                              rngs=rngs)
    self.token_type = nnx.Embed(cfg.type_vocab_size, cfg.hidden_size, dtype=_dtype(cfg),
                                embedding_init=nnx.with_partitioning(init, (None, "embed")),
                                rngs=rngs)
    self.norm = _layer_norm(cfg, rngs)
    self.dropout = ops.Dropout(cfg.hidden_dropout, custom=ops.custom_kernels(cfg.kernels))

    self.variant, self.pad_token_id = cfg.variant, cfg.pad_token_id

  def __call__(self, input_ids, token_type_ids, *, deterministic: bool, rngs,
               segment_ids=None):
    x = _lookup(self.word, input_ids)  # [batch, length, embed]
    x = x + _lookup(self.position, self.position_ids(input_ids, segment_ids))
    x = x + _lookup(self.token_type, token_type_ids)
    return self.dropout(self.norm(x), deterministic=deterministic, rngs=rngs)


  def position_ids(self, input_ids, segment_ids=None):
    """BERT: 0..length-1. RoBERTa: pad_id + 1, pad_id + 2, ... over non-padding tokens and
    pad_id at padding (fairseq's convention, kept by HuggingFace). In packed rows
    (`segment_ids`), each packed sequence counts from its own start."""
    index = jnp.arange(input_ids.shape[1])[None]
    real = (input_ids != self.pad_token_id).astype(jnp.int32)
    if segment_ids is not None:
      starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool),
                                segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
      index = index - jax.lax.cummax(jnp.where(starts, index, 0), axis=1)
      return (index + 1) * real + self.pad_token_id if self.variant == "roberta" else index
    if self.variant == "roberta":
      return jnp.cumsum(real, axis=1) * real + self.pad_token_id
    return index  # [1, length]: broadcast over the batch


def _lookup(embed: nnx.Embed, ids):
  """Rows of a (possibly sharded) table: gathered whole first, as FSDP gathers any weight.

  A gather from a table split along `embed` would produce activations split along `embed`,
  which XLA can only turn into batch-split ones by replicating them.
  """
  table = sharding.constrain(embed.embedding[...], (None, None))
  return jnp.take(table, ids, axis=0).astype(embed.dtype or table.dtype)


class SelfAttention(nnx.Module):
  """Multi-head self-attention; `jax.nn.dot_product_attention` unless attention dropout is on."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    h, n, d = cfg.hidden_size, cfg.num_heads, cfg.head_dim
    qkv = dict(kernel_init=_dense_init(cfg, ("embed", "heads", "head_dim")),
               bias_init=_zeros(("heads", "head_dim")), dtype=_dtype(cfg), rngs=rngs)
    self.query = nnx.LinearGeneral(h, (n, d), **qkv)
    self.key = nnx.LinearGeneral(h, (n, d), **qkv)
    self.value = nnx.LinearGeneral(h, (n, d), **qkv)
    self.out = nnx.LinearGeneral((n, d), h, axis=(-2, -1),
                                 kernel_init=_dense_init(cfg, ("heads", "head_dim", "embed")),
                                 bias_init=_zeros(("embed",)), dtype=_dtype(cfg), rngs=rngs)
    self.custom = ops.custom_kernels(cfg.kernels)
    self.attention_dropout = ops.Dropout(cfg.attention_dropout, custom=self.custom)
    self.scale = d ** -0.5

  def __call__(self, x, attention_mask, *, deterministic: bool, rngs):
    """`attention_mask`: [batch, length] over keys, or [batch, queries, keys] (packed rows)."""
    q = self.query(x)  # [batch, length, heads, head_dim]
    k = self.key(x)
    v = self.value(x)
    if attention_mask.ndim == 2:
      mask = attention_mask[:, None, None, :].astype(bool)  # [batch, 1, 1, keys]
    else:
      mask = attention_mask[:, None].astype(bool)  # [batch, 1, queries, keys]
    if deterministic or self.attention_dropout.rate == 0.0:
      y = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=self.scale)
    else:
      # Dropout on the attention probabilities (BERT) needs them materialised.
      b, length, n, _ = q.shape
      keep, keep_prob = self.attention_dropout.keep_mask((b, n, length, k.shape[1]), rngs)
      keep_prob = jnp.asarray(keep_prob, jnp.float32)
      attention = ops.attention if self.custom else ops.attention_plain
      y = attention(q, k, v, mask, keep, keep_prob, self.scale)  # [batch, length, heads, head_dim]
    return self.out(y)  # [batch, length, embed]


class Mlp(nnx.Module):
  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.up = nnx.Linear(cfg.hidden_size, cfg.intermediate_size, dtype=_dtype(cfg),
                         kernel_init=_dense_init(cfg, ("embed", "mlp")),
                         bias_init=_zeros(("mlp",)), rngs=rngs)
    self.down = nnx.Linear(cfg.intermediate_size, cfg.hidden_size, dtype=_dtype(cfg),
                           kernel_init=_dense_init(cfg, ("mlp", "embed")),
                           bias_init=_zeros(("embed",)), rngs=rngs)
    self.custom = ops.custom_kernels(cfg.kernels)

  def __call__(self, x):
    return self.down(_gelu(self.up(x), self.custom))  # BERT's exact (erf) GELU


class EncoderLayer(nnx.Module):
  """Post-LN block: x = LN(x + Drop(Attn(x))); x = LN(x + Drop(Mlp(x)))."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.attention = SelfAttention(cfg, rngs=rngs)
    self.attention_norm = _layer_norm(cfg, rngs)
    self.mlp = Mlp(cfg, rngs=rngs)
    self.mlp_norm = _layer_norm(cfg, rngs)
    self.dropout = ops.Dropout(cfg.hidden_dropout, custom=ops.custom_kernels(cfg.kernels))

  def __call__(self, x, attention_mask, *, deterministic: bool, rngs):
    y = self.attention(x, attention_mask, deterministic=deterministic, rngs=rngs)
    x = self.attention_norm(x + self.dropout(y, deterministic=deterministic, rngs=rngs))
    y = self.mlp(x)
    return self.mlp_norm(x + self.dropout(y, deterministic=deterministic, rngs=rngs))


class Bert(nnx.Module):
  """The encoder and pooler (HuggingFace's `BertModel`)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.embeddings = Embeddings(cfg, rngs=rngs)
    if cfg.scan_layers:
      # One EncoderLayer whose parameters have a leading `layers` axis.
      @nnx.split_rngs(splits=cfg.num_layers)
      @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
      def stacked(rngs):
        return EncoderLayer(cfg, rngs=rngs)
      self.layers = stacked(rngs)
    else:
      self.layers = nnx.List([EncoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
    self.pooler = nnx.Linear(cfg.hidden_size, cfg.hidden_size, dtype=_dtype(cfg),
                             kernel_init=_dense_init(cfg, ("embed", None)),
                             bias_init=_zeros((None,)), rngs=rngs)

  def encode(self, input_ids, token_type_ids=None, attention_mask=None, *,
             deterministic: bool = True, rngs: nnx.Rngs | None = None, segment_ids=None):
    """Last hidden states `[batch, length, embed]`.

    `segment_ids` (packed rows: 1..K per packed sequence, 0 at padding) keeps the sequences
    of a row apart: a token attends only within its own sequence, and positions restart.
    """
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    x = self.embeddings(input_ids, token_type_ids, deterministic=deterministic, rngs=rngs,
                        segment_ids=segment_ids)
    if segment_ids is not None:  # [batch, queries, keys]; padding queries see every real key
      same = segment_ids[:, :, None] == segment_ids[:, None, :]
      attention_mask = (attention_mask[:, None, :] > 0) & (same | (segment_ids[:, :, None] == 0))
    x = sharding.constrain(x, ACTIVATION)

    def apply(layer, x, attention_mask, rngs):
      return layer(x, attention_mask, deterministic=deterministic, rngs=rngs)

    if self.config.remat != "none":  # keep only the layer inputs (and matmuls) for backward
      policy = (jax.checkpoint_policies.dots_with_no_batch_dims_saveable
                if self.config.remat == "save_dots" else None)
      apply = nnx.remat(apply, policy=policy)
    if not self.config.scan_layers:
      for layer in self.layers:
        x = sharding.constrain(apply(layer, x, attention_mask, rngs), ACTIVATION)
      return x
    if rngs is None:  # deterministic: nothing to split per layer
      @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
      def body(x, layer):
        return sharding.constrain(apply(layer, x, attention_mask, None), ACTIVATION)
      return body(x, self.layers)

    @nnx.split_rngs(splits=self.config.num_layers)
    @nnx.scan(in_axes=(nnx.Carry, 0, 0), out_axes=nnx.Carry)
    def body_with_rngs(x, layer, rngs):
      return sharding.constrain(apply(layer, x, attention_mask, rngs), ACTIVATION)
    return body_with_rngs(x, self.layers, rngs)

  def pool(self, hidden):
    """tanh(dense(hidden of [CLS])) `[batch, embed]`, the input of NSP and classifiers."""
    return jnp.tanh(self.pooler(hidden[:, 0]))


class MlmHead(nnx.Module):
  """Transform (dense, GELU, LayerNorm), then logits tied to the word embeddings, plus a bias."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.transform = nnx.Linear(cfg.hidden_size, cfg.hidden_size, dtype=_dtype(cfg),
                                kernel_init=_dense_init(cfg, ("embed", None)),
                                bias_init=_zeros((None,)), rngs=rngs)
    self.norm = _layer_norm(cfg, rngs)
    self.bias = nnx.Param(jnp.zeros((cfg.vocab_size,), jnp.float32), out_sharding=("vocab",))
    self.custom = ops.custom_kernels(cfg.kernels)

  def __call__(self, x, word_embeddings: nnx.Embed):
    x = self.norm(_gelu(self.transform(x), self.custom))
    logits = word_embeddings.attend(x).astype(jnp.float32)  # [..., vocab]
    if self.custom:
      return add_vocab_bias(logits, self.bias[...])
    return logits + self.bias[...]


@jax.custom_vjp
def add_vocab_bias(logits, bias):
  """`logits + bias`, whose bias gradient is a matrix-vector product, not a column sum.

  The value and gradients are those of `+`. The reason is speed on CPU: XLA hands the
  column sum of a [predictions, vocab] gradient to its YNNPACK reduction, which runs at about
  a twentieth of the rate of the same sum written as `ones @ g` (70 ms against 1.5 ms for
  640 x 30522 on 2 cores; 5% of a BERT-mini step).
  """
  return logits + bias


def _add_vocab_bias_fwd(logits, bias):
  return logits + bias, None


def _add_vocab_bias_bwd(_, g):
  ones = jnp.ones(g.shape[:-1], g.dtype)
  return g, jnp.tensordot(ones, g, axes=g.ndim - 1)


add_vocab_bias.defvjp(_add_vocab_bias_fwd, _add_vocab_bias_bwd)


class BertForPreTraining(nnx.Module):
  """BERT with masked-LM and next-sentence heads (RoBERTa: masked LM only, `nsp` is None).

  The MLM logits are computed only at the `masked_positions` ([batch, predictions]); a full
  [batch, length, vocab] projection is work the loss does not need.
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.bert = Bert(cfg, rngs=rngs)
    self.mlm = MlmHead(cfg, rngs=rngs)
    self.nsp = nnx.data(None)
    if cfg.variant == "bert":
      self.nsp = nnx.Linear(cfg.hidden_size, 2, dtype=_dtype(cfg),
                            kernel_init=_dense_init(cfg, ("embed", None)),
                            bias_init=_zeros((None,)), rngs=rngs)

  def __call__(self, input_ids, token_type_ids, attention_mask, masked_positions, *,
               deterministic: bool = True, rngs: nnx.Rngs | None = None, segment_ids=None,
               cls_positions=None):
    """(mlm_logits [batch, predictions, vocab], nsp_logits [batch, 2] or None), float32.

    Packed rows (`segment_ids`, `cls_positions` [batch, K]): NSP logits [batch, K, 2], one
    prediction at each packed sequence's [CLS] (slots with position -1 are empty)."""
    hidden = self.bert.encode(input_ids, token_type_ids, attention_mask,
                              deterministic=deterministic, rngs=rngs, segment_ids=segment_ids)
    picked = jnp.take_along_axis(hidden, masked_positions[..., None], axis=1)  # [b, p, embed]
    mlm_logits = self.mlm(picked, self.bert.embeddings.word)
    if self.nsp is None:
      return mlm_logits, None
    if cls_positions is None:
      pooled = self.bert.pool(hidden)  # [batch, embed]
    else:
      cls = jnp.take_along_axis(hidden, jnp.maximum(cls_positions, 0)[..., None], axis=1)
      pooled = jnp.tanh(self.bert.pooler(cls))  # [batch, K, embed]
    return mlm_logits, self.nsp(pooled).astype(jnp.float32)

  # The public API: deterministic (no dropout), padding given by `attention_mask` (1 = real
  # token), segments A/B by `token_type_ids` (default all A).

  def encode(self, input_ids, attention_mask=None, token_type_ids=None):
    """Last hidden states `[batch, length, embed]` (HuggingFace's `last_hidden_state`)."""
    return self.bert.encode(input_ids, token_type_ids, attention_mask)

  def mlm_logits(self, input_ids, attention_mask=None, token_type_ids=None):
    """Masked-LM logits at every position `[batch, length, vocab]`, float32."""
    hidden = self.bert.encode(input_ids, token_type_ids, attention_mask)
    return self.mlm(hidden, self.bert.embeddings.word)


PRUNABLE = ("query", "key", "value", "out", "up", "down")  # the encoder layers' dense layers


def prunable(path) -> bool:
  """Whether a parameter path (of keys or jax tree path entries) names a kernel of an encoder
  layer's dense layer: what magnitude pruning and int8 quantization act on."""
  keys = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
  return ("layers" in keys and len(keys) >= 2 and keys[-1] == "kernel"
          and keys[-2] in PRUNABLE)


def count_params(tree) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(tree))


class BertForClassification(nnx.Module):
  """BERT with a classifier: on the pooled [CLS] state (`kind="sequence"`, HuggingFace's
  BertForSequenceClassification) or on every token (`kind="token"`). The encoder's parameters
  sit under `bert`, as in BertForPreTraining, so pretrained weights drop in."""

  def __init__(self, cfg: ModelConfig, num_labels: int, kind: str = "sequence", *,
               rngs: nnx.Rngs):
    self.kind = kind
    self.bert = Bert(cfg, rngs=rngs)
    self.dropout = ops.Dropout(cfg.hidden_dropout, custom=ops.custom_kernels(cfg.kernels))
    self.classifier = nnx.Linear(cfg.hidden_size, num_labels, dtype=_dtype(cfg),
                                 kernel_init=_dense_init(cfg, ("embed", None)),
                                 bias_init=_zeros((None,)), rngs=rngs)

  def __call__(self, input_ids, token_type_ids, attention_mask, *,
               deterministic: bool = True, rngs: nnx.Rngs | None = None):
    """Logits, float32: [batch, labels] (sequence) or [batch, length, labels] (token)."""
    hidden = self.bert.encode(input_ids, token_type_ids, attention_mask,
                              deterministic=deterministic, rngs=rngs)
    x = self.bert.pool(hidden) if self.kind == "sequence" else hidden
    x = self.dropout(x, deterministic=deterministic, rngs=rngs)
    return self.classifier(x).astype(jnp.float32)
