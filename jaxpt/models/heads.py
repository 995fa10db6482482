"""Heads on the Transformer stack (masked or causal LM, next sentence, pooler, classifier) and
the models they make: `EncoderForPreTraining`, `EncoderForClassification` and
`DecoderForCausalLM`.

The stack's parameters sit under `encoder` in every model, and the LM head under `mlm` in
both language models, so pretrained weights drop into a classifier unchanged, and a causal
checkpoint into a bidirectional encoder (CLM, then MLM) with every parameter accounted for.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxpt.config import ModelConfig
from jaxpt.models import ops
from jaxpt.models.transformer import Transformer, activation, dense_init, dtype, norm, zeros


class ClassifierHead(nnx.Module):
  """Dense, activation, norm: the MLM head's transform, and ModernBERT's head before a
  classifier (on the pooled state, or on every token)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.transform = nnx.Linear(cfg.hidden_size, cfg.hidden_size, dtype=dtype(cfg),
                                use_bias=cfg.head_bias,
                                kernel_init=dense_init(cfg, ("embed", None)),
                                bias_init=zeros((None,)), rngs=rngs)
    self.norm = norm(cfg, rngs)
    self.activation = activation(cfg)

  def __call__(self, x):
    return self.norm(self.activation(self.transform(x)))


class MlmHead(ClassifierHead):
  """The transform, then logits tied to the word embeddings, plus a bias."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    super().__init__(cfg, rngs=rngs)
    self.bias = nnx.Param(jnp.zeros((cfg.vocab_size,), jnp.float32), out_sharding=("vocab",))
    self.custom = ops.custom_kernels(cfg.kernels)

  def __call__(self, x, word_embeddings: nnx.Embed):
    logits = attend(word_embeddings, super().__call__(x), self.custom)  # [..., vocab]
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


def pooler(cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.Linear:
  """BERT's pooler: tanh(dense(hidden of [CLS])), the input of NSP and classifiers."""
  return nnx.Linear(cfg.hidden_size, cfg.hidden_size, dtype=dtype(cfg),
                    kernel_init=dense_init(cfg, ("embed", None)), bias_init=zeros((None,)),
                    rngs=rngs)


def lm_head(cfg: ModelConfig, rngs: nnx.Rngs):
  """The configured LM head: `MlmHead` (`lm_head="transform"`), or None: the tied decoder
  alone (GPT-2)."""
  return MlmHead(cfg, rngs=rngs) if cfg.lm_head == "transform" else nnx.data(None)


def attend(word_embeddings: nnx.Embed, x, custom: bool):
  """float32 `x @ embedding.T` (`nnx.Embed.attend`'s value; `custom`: `ops.tied_logits`)."""
  if not custom:
    return word_embeddings.attend(x).astype(jnp.float32)
  x, embedding = word_embeddings.promote_dtype((x, word_embeddings.embedding[...]),
                                               dtype=word_embeddings.dtype, inexact=True)
  return ops.tied_logits(x, embedding).astype(jnp.float32)


def vocab_logits(head, hidden, word_embeddings: nnx.Embed, custom: bool):
  """float32 logits over the vocabulary from hidden states, through `head` (or None: the
  tied embeddings alone, `custom` choosing `attend`'s code)."""
  if head is None:
    return attend(word_embeddings, hidden, custom)
  return head(hidden, word_embeddings)


class EncoderForPreTraining(nnx.Module):
  """The stack with a masked-LM head and, for BERT, a pooler and next-sentence head (RoBERTa:
  masked LM only, `nsp` is None).

  The MLM logits are computed only at the `masked_positions` ([batch, predictions]); a full
  [batch, length, vocab] projection is work the loss does not need.
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.encoder = Transformer(cfg, rngs=rngs)
    self.pooler = pooler(cfg, rngs) if cfg.pooler else nnx.data(None)
    self.mlm = lm_head(cfg, rngs)
    self.nsp = nnx.data(None)
    if cfg.variant == "bert":
      self.nsp = nnx.Linear(cfg.hidden_size, 2, dtype=dtype(cfg),
                            kernel_init=dense_init(cfg, ("embed", None)),
                            bias_init=zeros((None,)), rngs=rngs)

  @property
  def custom(self) -> bool:
    """Whether the tied decoder runs `ops.tied_logits` (`model.kernels`)."""
    return ops.custom_kernels(self.encoder.config.kernels)

  def __call__(self, input_ids, token_type_ids, attention_mask, masked_positions, *,
               deterministic: bool = True, rngs: nnx.Rngs | None = None, segment_ids=None,
               cls_positions=None, right_padded: bool = False):
    """(mlm_logits [batch, predictions, vocab], nsp_logits [batch, 2] or None), float32.

    Packed rows (`segment_ids`, `cls_positions` [batch, K]): NSP logits [batch, K, 2], one
    prediction at each packed sequence's [CLS] (slots with position -1 are empty)."""
    hidden = self.encoder(input_ids, token_type_ids, attention_mask,
                          deterministic=deterministic, rngs=rngs, segment_ids=segment_ids,
                          right_padded=right_padded)
    picked = jnp.take_along_axis(hidden, masked_positions[..., None], axis=1)  # [b, p, embed]
    mlm_logits = vocab_logits(self.mlm, picked, self.encoder.embeddings.word, self.custom)
    if self.nsp is None:
      return mlm_logits, None
    if cls_positions is None:
      cls = hidden[:, 0]  # [batch, embed]
    else:
      cls = jnp.take_along_axis(hidden, jnp.maximum(cls_positions, 0)[..., None], axis=1)
    return mlm_logits, self.nsp(jnp.tanh(self.pooler(cls))).astype(jnp.float32)

  # The public API: deterministic (no dropout), padding given by `attention_mask` (1 = real
  # token), segments A/B by `token_type_ids` (default all A).

  def encode(self, input_ids, attention_mask=None, token_type_ids=None):
    """Last hidden states `[batch, length, embed]` (HuggingFace's `last_hidden_state`)."""
    return self.encoder(input_ids, token_type_ids, attention_mask)

  def mlm_logits(self, input_ids, attention_mask=None, token_type_ids=None):
    """Masked-LM logits at every position `[batch, length, vocab]`, float32."""
    hidden = self.encoder(input_ids, token_type_ids, attention_mask)
    return vocab_logits(self.mlm, hidden, self.encoder.embeddings.word, self.custom)


class EncoderForClassification(nnx.Module):
  """The stack with a classifier over the sequence (`kind="sequence"`) or every token
  (`kind="token"`). With `model.pooler` (BERT, RoBERTa): sequences are read at [CLS] through
  the tanh pooler, tokens directly (HuggingFace's Bert/RobertaFor*Classification). Without
  (ModernBERT): [CLS] or the mean over real tokens (`classifier_pooling`), then
  `ClassifierHead`, for tokens too."""

  def __init__(self, cfg: ModelConfig, num_labels: int, kind: str = "sequence", *,
               rngs: nnx.Rngs):
    self.kind, self.pooling = kind, cfg.classifier_pooling
    self.encoder = Transformer(cfg, rngs=rngs)
    self.pooler = pooler(cfg, rngs) if cfg.pooler else nnx.data(None)
    self.head = nnx.data(None) if cfg.pooler else ClassifierHead(cfg, rngs=rngs)
    self.dropout = ops.Dropout(cfg.hidden_dropout, custom=ops.custom_kernels(cfg.kernels))
    self.classifier = nnx.Linear(cfg.hidden_size, num_labels, dtype=dtype(cfg),
                                 kernel_init=dense_init(cfg, ("embed", None)),
                                 bias_init=zeros((None,)), rngs=rngs)

  def __call__(self, input_ids, token_type_ids, attention_mask, *,
               deterministic: bool = True, rngs: nnx.Rngs | None = None,
               right_padded: bool = False):
    """Logits, float32: [batch, labels] (sequence) or [batch, length, labels] (token)."""
    hidden = self.encoder(input_ids, token_type_ids, attention_mask,
                          deterministic=deterministic, rngs=rngs, right_padded=right_padded)
    x = hidden
    if self.kind == "sequence":
      if self.pooling == "mean":
        real = (attention_mask > 0)[..., None].astype(hidden.dtype)  # [batch, length, 1]
        x = jnp.sum(hidden * real, axis=1) / jnp.maximum(jnp.sum(real, axis=1), 1)
      else:
        x = hidden[:, 0]  # [batch, embed]
      if self.pooler is not None:
        x = jnp.tanh(self.pooler(x))
    if self.head is not None:
      x = self.head(x)
    x = self.dropout(x, deterministic=deterministic, rngs=rngs)
    return self.classifier(x).astype(jnp.float32)

  def encode(self, input_ids, attention_mask=None, token_type_ids=None):
    """Last hidden states `[batch, length, embed]`, deterministic."""
    return self.encoder(input_ids, token_type_ids, attention_mask)


class DecoderForCausalLM(nnx.Module):
  """A causal stack (`attention_kind="causal"`) with its LM head: GPT-2 (the decoder tied to
  the word embeddings) or ModernBERT's decoder (the MLM head's transform first)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    if cfg.attention_kind != "causal":
      raise ValueError("DecoderForCausalLM needs model.attention_kind='causal'")
    self.encoder = Transformer(cfg, rngs=rngs)
    self.mlm = lm_head(cfg, rngs)

  @property
  def custom(self) -> bool:
    """Whether the tied decoder runs `ops.tied_logits` (`model.kernels`)."""
    return ops.custom_kernels(self.encoder.config.kernels)

  def __call__(self, input_ids, attention_mask=None, *, deterministic: bool = True,
               rngs: nnx.Rngs | None = None, segment_ids=None, right_padded: bool = False):
    """Next-token logits at every position `[batch, length, vocab]`, float32. Packed rows
    (`segment_ids`): each document sees only its own earlier tokens, positions restart."""
    hidden = self.encoder(input_ids, None, attention_mask, deterministic=deterministic,
                          rngs=rngs, segment_ids=segment_ids, right_padded=right_padded)
    return vocab_logits(self.mlm, hidden, self.encoder.embeddings.word, self.custom)

  # The public API: deterministic; `attention_mask` 1 at real tokens (right padding).

  def encode(self, input_ids, attention_mask=None):
    """Last hidden states `[batch, length, embed]` (after the final norm)."""
    return self.encoder(input_ids, None, attention_mask)

  def lm_logits(self, input_ids, attention_mask=None):
    """Next-token logits `[batch, length, vocab]`, float32: position t predicts token t + 1."""
    return self(input_ids, attention_mask)

  def decode(self, input_ids, positions, cache: dict):
    """(logits `[batch, queries, vocab]`, updated cache): `Transformer.decode` plus the head."""
    hidden, cache = self.encoder.decode(input_ids, positions, cache)
    return vocab_logits(self.mlm, hidden, self.encoder.embeddings.word, self.custom), cache


def model_class(cfg: ModelConfig):
  """The language model of a config: a decoder when causal, else the pretraining encoder."""
  return DecoderForCausalLM if cfg.attention_kind == "causal" else EncoderForPreTraining
