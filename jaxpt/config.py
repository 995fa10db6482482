"""Typed configuration: one dataclass per concern, each default in one place, validated early.

Presets in `configs/` are small `dataclasses.replace` edits of `Config()`. The dataclasses are
mutable only so that ml_collections' `config_flags` can apply `--config.a.b=value` overrides;
after `validate` nothing changes them.
"""

import dataclasses
import os
import pathlib

from jaxpt.errors import UserError

PRESETS = pathlib.Path(__file__).resolve().parent / "configs"


class ConfigError(UserError, ValueError):
  """A configuration value that cannot work; the message names the field."""


def option(default, help: str, choices: tuple[str, ...] | None = None):
  """A field of a command's options dataclass: its default, its help text and its allowed
  values, declared once; `jaxpt.cli` turns each such field into a flag."""
  return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


@dataclasses.dataclass
class ModelConfig:
  """The Transformer: encoder or decoder. Defaults are BERT-base (Devlin et al. 2019)."""

  # The family, which picks the HuggingFace name table and the conventions the block fields
  # do not cover: bert (an NSP head) | roberta (no NSP head; learned positions offset after
  # the padding id) | modernbert (no NSP head) | gpt2. A causal `attention_kind` makes the
  # model a decoder (causal LM) in any family that has one (gpt2, modernbert).
  variant: str = "bert"
  vocab_size: int = 30522  # bert-base-uncased WordPiece vocabulary
  pad_token_id: int = 0  # [PAD] in BERT's vocabulary; RoBERTa's <pad> is 1
  # Decoders: the end-of-text token generation stops at (GPT-2's <|endoftext|> 50256); -1:
  # the [SEP] / </s> of the run's tokenizer.
  eos_token_id: int = -1
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072  # 4 * hidden_size
  max_position_embeddings: int = 512
  type_vocab_size: int = 2  # segment A / segment B
  hidden_dropout: float = 0.1
  attention_dropout: float = 0.1
  layer_norm_eps: float = 1e-12  # BERT's TF value; HuggingFace keeps it
  initializer_range: float = 0.02  # stddev of the truncated normal initialiser
  # Output projections of each block (attention out, MLP down) start at initializer_range /
  # sqrt(2 * num_layers) (GPT-2, ModernBERT); False: initializer_range everywhere (BERT).
  scaled_init: bool = False
  dtype: str = "float32"  # compute dtype: float32 | bfloat16; parameters stay float32
  remat: str = "none"  # recompute in the backward pass: none | full | save_dots (keep matmuls)
  scan_layers: bool = False  # one layer compiled and applied by nnx.scan: faster compiles
  # Layer code: "custom" = jaxpt/models/ops.py (hand-written gradients that keep less for
  # backward, dropout masks from 16-bit draws, the vocab-bias gradient as a matvec), measured
  # to help on CPU only; "plain" = the plain JAX expressions (jax.nn.gelu, nnx.LayerNorm,
  # nnx.Dropout, autodiff), the default until measured on GPU/TPU; "auto" = custom on CPU.
  kernels: str = "auto"  # auto | custom | plain
  # The block, field by field (defaults: BERT). See jaxpt/models/transformer.py.
  norm_position: str = "post"  # post: norm after each residual add (BERT) | pre: before each
  #                              sublayer, plus a final norm after the last layer
  norm: str = "layernorm"  # layernorm | rmsnorm
  norm_bias: bool = True  # LayerNorm with a bias (RMSNorm has none)
  embedding_norm: bool = True  # a norm after the embeddings
  attention_bias: bool = True  # biases on q, k, v and the attention output
  mlp_bias: bool = True  # biases on the MLP's dense layers
  head_bias: bool = True  # bias on the MLM head's transform
  # The (masked or causal) LM head: transform (dense, activation, norm, then the decoder tied
  # to the word embeddings, with a bias: BERT, RoBERTa, ModernBERT) | tied (the tied decoder
  # alone, no bias: GPT-2).
  lm_head: str = "transform"
  mlp: str = "gelu"  # gelu (exact erf, BERT) | gelu_tanh | geglu | swiglu (gated: a `gate` too)
  positions: str = "learned"  # learned: a table of max_position_embeddings | rope (rotary)
  rope_theta: float = 10_000.0  # rotary base of the global layers
  rope_theta_local: float = 10_000.0  # rotary base of the local layers
  attention_kind: str = "bidirectional"  # bidirectional (encoders) | causal (decoders)
  # Local layers attend within a window: bidirectional, the local_window / 2 tokens on each
  # side of the query (ModernBERT: 128 -> 64 + 64, as HuggingFace); causal, local_window tokens
  # in all, ending at the query (HuggingFace's decoder `sliding_window`). 0: all global.
  local_window: int = 0
  global_every: int = 1  # layer i is global when i % global_every == 0 (ModernBERT: 3)
  # The kernel of every layer's attention: xla (scores materialised under a mask; any
  # combination, dropout included) | cudnn (NVIDIA GPUs, bf16: cuDNN's fused kernel for the
  # cases its arguments express exactly: padding, causal, causal windows; no packed rows, no
  # symmetric windows, no dropout) | splash (TPU splash attention, exact for padding, packed
  # rows, causal and windows; lengths in multiples of 128, no dropout; interpreted off TPU) |
  # auto (per layer kind: splash on TPU, cuDNN on a GPU where exact, else xla). Decoding with
  # a cache always runs xla.
  attention: str = "auto"
  pooler: bool = True  # BERT's tanh pooler over [CLS] (NSP and sequence classification)
  # What a sequence classifier reads: the [CLS] state (cls) or the mean over real tokens.
  classifier_pooling: str = "cls"  # cls | mean
  # Pre-LN: whether layer 0 norms its input before attention (ModernBERT: no, the embeddings
  # were just normed).
  first_attention_norm: bool = True

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads


@dataclasses.dataclass
class DataConfig:
  """Where prepared examples live and how they are masked on the host."""

  dir: str = ""  # a directory written by `jaxpt prepare`
  # A mixture instead of one directory: "[NAME=]DIR:WEIGHT,..." (weights are normalised; NAME
  # defaults to DIR's last component), e.g. "web=data/web:0.8,books=data/books:0.2". Each
  # block of 4096 rows of the batch stream holds every source in proportion to its weight, in
  # an order drawn from (seed, block); each source is shuffled and read epoch by epoch on its
  # own. Sources share one tokenizer, length and example kind; evaluation reports each one
  # (`eval/NAME/...`) and their pool, and the mix drawn is logged (`data/fraction/NAME`).
  sources: str = ""
  mask_prob: float = 0.15  # BERT: 15% of tokens are prediction targets
  # The masking rate by phase: "STEP:RATE,STEP:RATE" from those steps on (mmBERT: 30% -> 15% ->
  # 5%, e.g. "0:0.3,8000:0.15,9000:0.05"); empty: mask_prob throughout. Targets stay capped by
  # max_predictions_per_seq.
  mask_prob_schedule: str = ""
  whole_word_masking: bool = False  # choose whole words (all their WordPiece pieces) together
  mask_token_prob: float = 0.8  # of the targets: 80% become [MASK]
  random_token_prob: float = 0.1  # 10% a random token; the remaining 10% stay unchanged
  # Prediction slots per row. 0: as many as the highest masking rate asks of a full row
  # (round(rate * length): 19 at 15% of 128, 38 at 30%, 154 at 30% of 512), so the rate is
  # what gets masked. A positive value caps the targets (BERT's 20 at 128, 80 at 512); targets
  # beyond it are dropped, and a cap below what the rate asks is warned about at the start.
  max_predictions_per_seq: int = 0
  prefetch_batches: int = 4  # batches prepared ahead by host threads
  read_threads: int = 2  # host threads reading and masking batches


@dataclasses.dataclass
class OptimConfig:
  """Optimiser and schedule. Defaults: AdamW, linear warm-up then linear decay (BERT)."""

  # adamw | stable_adamw (AdamW whose update is clipped per tensor by its RMS ratio, as
  # ModernBERT trains) | lamb | adafactor | sgd | rmsprop
  name: str = "adamw"
  # Peak; BERT paper, batch 256. 0 (the fine-tuning preset): chosen by the encoder's size,
  # `classification.learning_rate_for`.
  learning_rate: float = 1e-4
  warmup_steps: int = 10_000  # BERT paper
  # After warm-up: linear | cosine | polynomial | constant | wsd (warmup-stable-decay: the
  # peak, then a decay over the last `decay_fraction` of the steps) | inverse_sqrt (the peak
  # times sqrt(warmup_steps / step)).
  schedule: str = "linear"
  power: float = 1.0  # exponent of the polynomial schedule
  decay_fraction: float = 0.1  # wsd: the share of num_steps the decay takes
  # wsd: the decay's length in steps, when > 0 (instead of decay_fraction); with
  # train.branch_from=RUN:STEP and num_steps = STEP + decay_steps, a run that is only the
  # decay of a stable run, branched from any of its checkpoints.
  decay_steps: int = 0
  decay_shape: str = "linear"  # wsd's decay: linear | 1-sqrt (Hägele et al. 2024)
  end_learning_rate_fraction: float = 0.0  # decay to this fraction of the peak
  b1: float = 0.9
  b2: float = 0.999  # also RMSProp's decay
  eps: float = 1e-6  # BERT's TF AdamWeightDecay
  momentum: float = 0.9  # SGD and RMSProp; 0 disables
  nesterov: bool = False  # SGD
  weight_decay: float = 0.01  # not applied to biases and LayerNorm parameters
  grad_clip_norm: float = 1.0  # global-norm clipping; 0 disables
  # Hold a pruning mask: no update reaches a weight of the encoder's dense kernels that is
  # exactly zero (`jaxpt compress --recover_steps` sets it).
  keep_pruned: bool = False
  # An exponential moving average of the parameters, kept in the train state and checkpointed,
  # when > 0 (e.g. 0.999): evaluation, the best checkpoint, export-hf, finetune's init and
  # every command that loads the workdir use it. Its decay is min(ema_decay, (1 + step) /
  # (10 + step)). 0: none.
  ema_decay: float = 0.0
  # Layer-wise learning-rate decay for fine-tuning (Clark et al. 2020, ELECTRA, section 3.3;
  # they used 0.8 for Base): the rate of encoder layer l of L (0 = the lowest) is
  # layer_decay ** (L - l) times the peak, the embeddings' layer_decay ** (L + 1), the
  # encoder's final norm's layer_decay; everything outside the encoder (pooler, heads, a new
  # classifier) trains at the peak. 1: one rate for all.
  layer_decay: float = 1.0


@dataclasses.dataclass
class MeshConfig:
  """Device mesh sizes; -1 means "all remaining devices". One device runs the same code."""

  data: int = -1
  fsdp: int = 1
  tensor: int = 1


@dataclasses.dataclass
class CheckpointConfig:
  """Orbax checkpoints under WORKDIR/checkpoints."""

  every_steps: int = 1000
  max_to_keep: int = 3
  async_save: bool = True  # write in the background while training continues


@dataclasses.dataclass
class TrainConfig:
  batch_size: int = 256  # global batch, in sequences (BERT paper)
  microbatches: int = 1  # gradient accumulation: the batch runs in this many slices
  # Batch-size warm-up (ModernBERT's): the global batch starts at `batch_warmup_start`
  # sequences and doubles until batch_size, the sizes below it sharing `batch_warmup_tokens`
  # (tokens of the data's length, padding included) equally; each size compiles once, and
  # the example stream is read as before (every example once per epoch). 0: off.
  batch_warmup_start: int = 0
  batch_warmup_tokens: int = 0
  num_steps: int = 1_000_000  # BERT paper
  log_every_steps: int = 100
  eval_every_steps: int = 1000  # 0 evaluates only at the end
  eval_batches: int = 10  # held-out batches per evaluation (capped by the validation split)
  early_stopping_patience: int = 0  # stop after this many evaluations without improvement; 0: off
  early_stopping_min_delta: float = 0.0  # eval/loss must fall by more than this to improve
  nonfinite: str = "abort"  # a NaN/Inf loss: abort (never checkpointed) | skip the update
  max_nonfinite_in_a_row: int = 10  # with nonfinite=skip: abort after this many in a row
  peak_flops_per_device: float = 0.0  # for MFU; 0: from the device-kind table, if known
  # The host dispatches at most this many steps ahead of the devices: enough to keep them
  # busy, few enough that SIGTERM checkpoints within that many steps of the signal.
  max_steps_in_flight: int = 2
  # Comma-separated fields that may change on resume although they change the data stream or
  # the model (e.g. "train.batch_size,seed"); the data position is kept in examples.
  allow_config_change: str = ""
  # A run in phases: "STEP: FIELD=VALUE FIELD=VALUE; STEP: ..." changes those fields from STEP
  # on (on top of the phase before), e.g. ModernBERT's context extension, "9000:
  # data.dir=data/long8k model.rope_theta=160000 train.batch_size=64". Each phase continues
  # the previous one's checkpoint whole (parameters, optimizer state, the one learning-rate
  # schedule over train.num_steps); new data (data.dir or data.sources) starts its own stream.
  # A kill inside a phase resumes inside it. Checked whole before step 1; fields that change
  # a parameter's shape are refused.
  phases: str = ""
  # Weights to start from when the workdir has no checkpoint: a workdir (its latest
  # checkpoint), a `jaxpt import-hf` directory, or a HuggingFace directory (hf:DIR). Only the
  # parameters are taken; the optimizer starts fresh.
  init_from: str = ""
  # RUN:STEP (or RUN for its latest): a new workdir continues checkpoint STEP of RUN whole
  # (parameters, optimizer state, step and data position) under this config's schedule, e.g.
  # one of several decays branched off a stable wsd run. Used only while WORKDIR has no
  # checkpoint of its own; RUN is never written.
  branch_from: str = ""


@dataclasses.dataclass
class FinetuneConfig:
  """`jaxpt finetune`: classification on a labelled task (train.* and optim.* apply too)."""

  max_length: int = 128  # tokens per example, [CLS] and [SEP] included
  too_long: str = "truncate"  # a longer example: truncate (counted and reported) | error
  # The most epochs (when > 0; else train.num_steps): early stopping on the validation metric
  # usually ends a run sooner. A small task trains at least `min_steps` steps.
  epochs: float = 3.0
  min_steps: int = 0
  # Validation this many times a run, evenly spaced (when > 0: early stopping sees a small
  # task as often as a large one); else every `eval_every_epochs` (when > 0; else
  # train.eval_every_steps).
  evaluations: int = 0
  eval_every_epochs: float = 1.0
  warmup_fraction: float = 0.0  # > 0: optim.warmup_steps is this share of the run's steps
  # Batches are padded to the smallest of this many lengths that fits them (max_length halved
  # each time, in multiples of 8): a few compiled shapes, far less padding on short texts.
  # 1: always max_length.
  length_buckets: int = 4
  # Each run of this many training batches of an epoch is sorted by length
  # before it is cut into batches (then shuffled), so that a batch's texts are of similar
  # length; every example is still seen once an epoch. 1: batches as drawn.
  group_by_length: int = 50
  metric: str = "f1_macro"  # validation metric for early stopping and best/
  class_weights: bool = False  # weight the loss by inverse class frequency (imbalance)
  augment_delete: float = 0.0  # per word: drop it with this probability (train only)
  augment_swap: float = 0.0  # per word: swap it with a random neighbour in the text
  augment_synonym: float = 0.0  # per word: replace it by a WordNet synonym when it has one
  # --init=scratch without --tokenizer: a WordPiece vocabulary of (at most) this size is
  # trained on the task's train split (nothing is downloaded).
  scratch_vocab_size: int = 8192


@dataclasses.dataclass
class Config:
  seed: int = 0  # drives initialisation, data order, masking and dropout
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
  mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
  checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
  finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)


def with_model(cfg: "Config", **changes) -> "Config":
  """Returns `cfg` with `changes` applied to its model config (the usual preset edit)."""
  return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **changes))


def _check(ok: bool, field: str, value, why: str) -> None:
  if not ok:
    raise ConfigError(f"config.{field}={value!r}: {why}")


def max_predictions(d: "DataConfig", length: int) -> int:
  """Prediction slots of a `length`-token row: `data.max_predictions_per_seq` (at most the
  length), or with 0 the most targets any rate of the schedule chooses in a full row (masking
  chooses round(rate * candidates) targets, candidates <= length)."""
  if d.max_predictions_per_seq > 0:
    return min(d.max_predictions_per_seq, length)
  rate = max(r for _, r in mask_rate_phases(d))
  return max(1, min(length, int(round(length * rate))))


def mask_rate_phases(d: "DataConfig") -> tuple[tuple[int, float], ...]:
  """`data.mask_prob_schedule` as ((first step, rate), ...), or ((0, mask_prob),)."""
  if not d.mask_prob_schedule.strip():
    return ((0, d.mask_prob),)
  phases = []
  for part in d.mask_prob_schedule.split(","):
    try:
      step, rate = part.split(":")
      phases.append((int(step), float(rate)))
    except ValueError:
      raise ConfigError(f"config.data.mask_prob_schedule={d.mask_prob_schedule!r}: {part!r} "
                        "is not STEP:RATE") from None
  steps = [s for s, _ in phases]
  _check(steps[0] == 0 and steps == sorted(set(steps)), "data.mask_prob_schedule",
         d.mask_prob_schedule, "steps must start at 0 and increase")
  for _, rate in phases:
    _check(0.0 < rate < 1.0, "data.mask_prob_schedule", d.mask_prob_schedule,
           f"rate {rate} must be in (0, 1)")
  return tuple(phases)


def mixture_sources(d: "DataConfig") -> tuple[tuple[str, str, float], ...]:
  """`data.sources` as ((name, directory, weight normalised), ...); () when unset."""
  if not d.sources.strip():
    return ()
  out = []
  for part in d.sources.split(","):
    name, eq, rest = part.strip().partition("=")
    if not eq:
      name, rest = "", part.strip()
    directory, colon, weight = rest.rpartition(":")
    try:
      if not colon or not directory:
        raise ValueError
      value = float(weight)
    except ValueError:
      raise ConfigError(f"config.data.sources={d.sources!r}: {part.strip()!r} is not "
                        "[NAME=]DIR:WEIGHT") from None
    name = name.strip() or directory.rstrip("/").rsplit("/", 1)[-1]
    _check(value >= 0 and value == value and value != float("inf"), "data.sources", d.sources,
           f"the weight of {name} ({weight}) must be a finite number >= 0")
    out.append((name, directory, value))
  names = [n for n, _, _ in out]
  for n in names:
    _check(names.count(n) == 1, "data.sources", d.sources,
           f"two sources are named {n!r}: name them, NAME=DIR:WEIGHT")
    _check(n.replace("_", "").replace("-", "").replace(".", "").isalnum(), "data.sources",
           d.sources, f"source name {n!r}: letters, digits, '-', '_' and '.' only")
  total = sum(w for _, _, w in out)
  _check(total > 0, "data.sources", d.sources, "the weights are all zero")
  _check(not d.dir or d.dir in [x for _, x, _ in out], "data.sources", d.sources,
         f"data.dir={d.dir!r} is not one of the sources: set one or the other")
  return tuple((n, x, w / total) for n, x, w in out)


PHASE_FIXED = ("train.phases", "train.num_steps", "seed", "train.init_from",
               "train.branch_from", "train.allow_config_change")


@dataclasses.dataclass(frozen=True)
class Phase:
  index: int
  first_step: int
  stop_step: int  # the phase ends after this many steps of the run
  fields: tuple[str, ...]  # what this phase sets (over the phase before)
  cfg: "Config"  # the whole config in force during the phase
  new_data: bool  # its data (data.dir or data.sources) differs from the phase before's


def run_phases(cfg: "Config") -> tuple[Phase, ...]:
  """`train.phases` as the configs in force, in order; one phase (cfg) when unset. Every
  phase's config is validated; fields that differ between phases may change on resume."""
  spec = cfg.train.phases.strip()
  where = f"config.train.phases={cfg.train.phases!r}"
  steps, changes = [0], [()]
  for part in filter(None, (p.strip() for p in spec.split(";"))):
    step, colon, assignments = part.partition(":")
    pairs = [a.partition("=") for a in assignments.split()]
    if not colon or not step.strip().isdigit() or not pairs or any(not k or not e
                                                                    for k, e, _ in pairs):
      raise ConfigError(f"{where}: {part!r} is not 'STEP: FIELD=VALUE ...'")
    steps.append(int(step))
    changes.append(tuple((k, v) for k, _, v in pairs))
  for a, b in zip(steps, steps[1:]):
    if b <= a:
      raise ConfigError(f"{where}: phase steps must increase from 1 ({a} then {b})")
  if steps[-1] >= cfg.train.num_steps:
    raise ConfigError(f"{where}: phase step {steps[-1]} is not before train.num_steps="
                      f"{cfg.train.num_steps}")
  touched = sorted({k for c in changes for k, _ in c})
  for key in touched:
    if key in PHASE_FIXED:
      raise ConfigError(f"{where}: {key} is the same for the whole run")
  allow = ",".join(filter(None, [cfg.train.allow_config_change] + touched))
  phases, current = [], cfg
  for i, (first, fields) in enumerate(zip(steps, changes)):
    previous = current
    for key, value in fields:
      try:
        current = replace_field(current, key, value)
      except ConfigError as e:
        raise ConfigError(f"{where}: phase {i} (from step {first}): {e}") from None
    current = dataclasses.replace(current, train=dataclasses.replace(
        current.train, allow_config_change=allow))
    try:
      validate(current)
    except ConfigError as e:
      raise ConfigError(f"{where}: phase {i} (from step {first}): {e}") from None
    stop = steps[i + 1] if i + 1 < len(steps) else cfg.train.num_steps
    new_data = i > 0 and (current.data.dir, current.data.sources) != (previous.data.dir,
                                                                      previous.data.sources)
    phases.append(Phase(i, first, stop, tuple(k for k, _ in fields), current, new_data))
  return tuple(phases)


def local_window(cfg: "ModelConfig") -> tuple[int, int]:
  """(left, right) of a local layer: `local_window / 2` on each side of the query when
  bidirectional (ModernBERT: 128 -> 64 and 64), and `local_window` tokens ending at the query
  when causal (HuggingFace's ModernBertDecoder: its `sliding_window`)."""
  if cfg.attention_kind == "causal":
    return cfg.local_window - 1, 0
  return cfg.local_window // 2, cfg.local_window // 2


def validate_model(m: ModelConfig) -> ModelConfig:
  """Checks a model config alone (HF imports use it too); returns `m`."""
  for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
               "max_position_embeddings", "global_every"):
    _check(getattr(m, name) > 0, f"model.{name}", getattr(m, name), "must be positive")
  _check(m.type_vocab_size >= 0, "model.type_vocab_size", m.type_vocab_size,
         "must be >= 0 (0: no token-type embeddings)")
  _check(m.local_window >= 0, "model.local_window", m.local_window, "must be >= 0")
  for name, allowed in (("norm_position", ("post", "pre")), ("norm", ("layernorm", "rmsnorm")),
                        ("mlp", ("gelu", "gelu_tanh", "geglu", "swiglu")),
                        ("positions", ("learned", "rope")),
                        ("attention_kind", ("bidirectional", "causal")),
                        ("classifier_pooling", ("cls", "mean")),
                        ("lm_head", ("transform", "tied")),
                        ("attention", ("auto", "xla", "cudnn", "splash"))):
    _check(getattr(m, name) in allowed, f"model.{name}", getattr(m, name),
           "must be one of " + ", ".join(allowed))
  if m.positions == "rope":
    _check(m.head_dim % 2 == 0, "model.num_heads", m.num_heads,
           f"rotary positions need an even head_dim (hidden_size / num_heads = {m.head_dim})")
    for name in ("rope_theta", "rope_theta_local"):
      _check(getattr(m, name) > 0, f"model.{name}", getattr(m, name), "must be positive")
  _check(m.variant != "bert" or m.pooler, "model.pooler", m.pooler,
         "BERT's next-sentence head reads the pooler: keep it with model.variant='bert'")
  _check(m.attention not in ("splash", "cudnn") or m.attention_dropout == 0.0,
         "model.attention", m.attention, f"{m.attention} has no attention dropout "
         f"(model.attention_dropout={m.attention_dropout}); set it to 0 or use 'xla'")
  if m.attention == "cudnn":
    from jaxpt.models import attention as attn_lib  # noqa: PLC0415 (jax only when asked)
    why = attn_lib.cudnn_refusal(
        segments="padding", causal=m.attention_kind == "causal", dropout=False,
        window=local_window(m) if m.local_window else None)
    _check(why is None, "model.attention", m.attention,
           f"cuDNN cannot compute {why} exactly, which the local layers need "
           f"(model.local_window={m.local_window}, model.attention_kind="
           f"{m.attention_kind!r}); use 'auto', which runs them with xla")
    _check(m.dtype == "bfloat16", "model.attention", m.attention,
           f"cuDNN's fused attention needs bf16 (model.dtype={m.dtype!r}); use 'auto' or 'xla'")
  _check(m.hidden_size % m.num_heads == 0, "model.num_heads", m.num_heads,
         f"must divide model.hidden_size={m.hidden_size}")
  for name in ("hidden_dropout", "attention_dropout"):
    _check(0.0 <= getattr(m, name) < 1.0, f"model.{name}", getattr(m, name),
           "must be in [0, 1)")
  _check(m.variant in ("bert", "roberta", "modernbert", "gpt2"), "model.variant", m.variant,
         "must be 'bert', 'roberta', 'modernbert' or 'gpt2'")
  _check(m.attention_kind != "causal" or m.variant != "bert", "model.attention_kind",
         m.attention_kind, "BERT's next-sentence head needs a bidirectional encoder; a causal "
         "model is a decoder (model.variant gpt2 or modernbert)")
  _check(0 <= m.pad_token_id < m.vocab_size, "model.pad_token_id", m.pad_token_id,
         f"must be a token id below model.vocab_size={m.vocab_size}")
  _check(-1 <= m.eos_token_id < m.vocab_size, "model.eos_token_id", m.eos_token_id,
         f"must be -1 or a token id below model.vocab_size={m.vocab_size}")
  _check(m.dtype in ("float32", "bfloat16"), "model.dtype", m.dtype,
         "must be 'float32' or 'bfloat16'")
  _check(m.remat in ("none", "full", "save_dots"), "model.remat", m.remat,
         "must be 'none', 'full' or 'save_dots'")
  _check(m.kernels in ("auto", "custom", "plain"), "model.kernels", m.kernels,
         "must be 'auto', 'custom' or 'plain'")
  return m


def validate(cfg: Config) -> Config:
  """Checks values that would otherwise fail deep inside JAX; returns `cfg` for chaining."""
  validate_model(cfg.model)
  d = cfg.data
  _check(0.0 < d.mask_prob < 1.0, "data.mask_prob", d.mask_prob, "must be in (0, 1)")
  mask_rate_phases(d)  # raises naming the field
  mixture_sources(d)
  _check(0.0 <= d.mask_token_prob and 0.0 <= d.random_token_prob
         and d.mask_token_prob + d.random_token_prob <= 1.0, "data.mask_token_prob",
         (d.mask_token_prob, d.random_token_prob),
         "mask_token_prob and random_token_prob must be >= 0 and sum to at most 1")
  _check(d.max_predictions_per_seq >= 0, "data.max_predictions_per_seq",
         d.max_predictions_per_seq, "must be >= 0 (0: as many as the masking rate asks)")
  o = cfg.optim
  _check(o.name in ("adamw", "stable_adamw", "lamb", "adafactor", "sgd", "rmsprop"),
         "optim.name", o.name,
         "must be one of adamw, stable_adamw, lamb, adafactor, sgd, rmsprop")
  _check(o.schedule in ("linear", "cosine", "polynomial", "constant", "wsd", "inverse_sqrt"),
         "optim.schedule", o.schedule,
         "must be one of linear, cosine, polynomial, constant, wsd, inverse_sqrt")
  _check(0.0 < o.decay_fraction <= 1.0, "optim.decay_fraction", o.decay_fraction,
         "must be in (0, 1]")
  _check(o.decay_shape in ("linear", "1-sqrt"), "optim.decay_shape", o.decay_shape,
         "must be 'linear' or '1-sqrt'")
  _check(0.0 <= o.end_learning_rate_fraction <= 1.0, "optim.end_learning_rate_fraction",
         o.end_learning_rate_fraction, "must be in [0, 1]")
  _check(o.learning_rate >= 0, "optim.learning_rate", o.learning_rate,
         "must be positive (or 0 when fine-tuning: chosen by model size)")
  _check(o.warmup_steps >= 0, "optim.warmup_steps", o.warmup_steps, "must be >= 0")
  _check(o.grad_clip_norm >= 0, "optim.grad_clip_norm", o.grad_clip_norm, "must be >= 0")
  _check(0.0 < o.layer_decay <= 1.0, "optim.layer_decay", o.layer_decay, "must be in (0, 1]")
  _check(0.0 <= o.ema_decay < 1.0, "optim.ema_decay", o.ema_decay,
         "must be in [0, 1) (0: no moving average)")
  for name in ("data", "fsdp", "tensor"):
    size = getattr(cfg.mesh, name)
    _check(size == -1 or size > 0, f"mesh.{name}", size, "must be positive or -1")
  c = cfg.checkpoint
  _check(c.every_steps > 0, "checkpoint.every_steps", c.every_steps, "must be positive")
  _check(c.max_to_keep > 0, "checkpoint.max_to_keep", c.max_to_keep, "must be positive")
  t = cfg.train
  _check(not (t.branch_from and t.init_from), "train.branch_from", t.branch_from,
         "continues a run whole; train.init_from starts one from weights: give one")
  _check(o.decay_steps >= 0, "optim.decay_steps", o.decay_steps, "must be >= 0")
  _check(t.batch_size > 0, "train.batch_size", t.batch_size, "must be positive")
  _check(t.microbatches > 0 and t.batch_size % t.microbatches == 0, "train.microbatches",
         t.microbatches, f"must be positive and divide train.batch_size={t.batch_size}")
  _check(t.batch_warmup_start >= 0 and t.batch_warmup_tokens >= 0
         and (t.batch_warmup_start > 0) == (t.batch_warmup_tokens > 0),
         "train.batch_warmup_start", t.batch_warmup_start,
         "and train.batch_warmup_tokens must both be positive (a warm-up) or both 0")
  _check(t.batch_warmup_start < t.batch_size, "train.batch_warmup_start",
         t.batch_warmup_start, f"must be below train.batch_size={t.batch_size}")
  _check(t.batch_warmup_start % t.microbatches == 0, "train.batch_warmup_start",
         t.batch_warmup_start, f"must be divisible by train.microbatches={t.microbatches}")
  _check(t.num_steps > 0, "train.num_steps", t.num_steps, "must be positive")
  _check(t.log_every_steps > 0, "train.log_every_steps", t.log_every_steps, "must be positive")
  _check(t.eval_every_steps >= 0, "train.eval_every_steps", t.eval_every_steps, "must be >= 0")
  _check(t.eval_batches > 0, "train.eval_batches", t.eval_batches, "must be positive")
  _check(t.early_stopping_patience >= 0, "train.early_stopping_patience",
         t.early_stopping_patience, "must be >= 0")
  _check(t.nonfinite in ("abort", "skip"), "train.nonfinite", t.nonfinite,
         "must be 'abort' or 'skip'")
  _check(t.max_steps_in_flight > 0, "train.max_steps_in_flight", t.max_steps_in_flight,
         "must be positive")
  _check(t.max_nonfinite_in_a_row > 0, "train.max_nonfinite_in_a_row",
         t.max_nonfinite_in_a_row, "must be positive")
  f = cfg.finetune
  _check(f.max_length > 2, "finetune.max_length", f.max_length, "must be at least 3")
  _check(f.too_long in ("truncate", "error"), "finetune.too_long", f.too_long,
         "must be 'truncate' or 'error'")
  _check(f.epochs >= 0, "finetune.epochs", f.epochs, "must be >= 0 (0: use train.num_steps)")
  _check(f.eval_every_epochs >= 0, "finetune.eval_every_epochs", f.eval_every_epochs,
         "must be >= 0 (0: use train.eval_every_steps)")
  _check(f.min_steps >= 0, "finetune.min_steps", f.min_steps, "must be >= 0")
  _check(f.evaluations >= 0, "finetune.evaluations", f.evaluations, "must be >= 0")
  _check(0.0 <= f.warmup_fraction < 1.0, "finetune.warmup_fraction", f.warmup_fraction,
         "must be in [0, 1)")
  _check(f.group_by_length >= 1, "finetune.group_by_length", f.group_by_length,
         "must be at least 1 (1: no grouping)")
  _check(f.length_buckets >= 1, "finetune.length_buckets", f.length_buckets,
         "must be at least 1 (1: always pad to max_length)")
  _check(f.metric in ("accuracy", "f1_macro", "precision_macro", "recall_macro", "mcc"),
         "finetune.metric", f.metric,
         "must be one of accuracy, f1_macro, precision_macro, recall_macro, mcc")
  for name in ("augment_delete", "augment_swap", "augment_synonym"):
    _check(0.0 <= getattr(f, name) < 1.0, f"finetune.{name}", getattr(f, name),
           "must be in [0, 1)")
  return cfg


def to_dict(cfg: Config) -> dict:
  return dataclasses.asdict(cfg)


def preset_names() -> list[str]:
  return sorted(p.stem for p in PRESETS.glob("*.py") if not p.stem.startswith("_"))


def resolve_preset(spec: str) -> str:
  """A preset file's path: `spec` itself when it is a file, else the packaged preset it names
  (`bert_base`, `bert_base.py` or `configs/bert_base.py`, from any directory)."""
  if os.path.isfile(spec):
    return spec
  name = os.path.basename(spec).removesuffix(".py")
  if os.path.dirname(spec) in ("", "configs", "jaxpt/configs") and (PRESETS / f"{name}.py").is_file():
    return str(PRESETS / f"{name}.py")
  raise ConfigError(f"--config={spec}: neither a file nor a preset ({', '.join(preset_names())})")


def load(path: str) -> Config:
  """`get_config()` of a preset (a name or a file), as `--config` loads it (scripts, tests)."""
  import importlib.util
  path = resolve_preset(path)
  spec = importlib.util.spec_from_file_location("jaxpt_preset", path)
  if spec is None or not os.path.exists(path):
    raise ConfigError(f"--config={path}: no such file")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def field_names(cls=None, prefix: str = "") -> list[str]:
  """Every dotted field of `Config` ("train.num_steps", ...)."""
  out = []
  for f in dataclasses.fields(cls or Config):
    if isinstance(f.default_factory, type) and dataclasses.is_dataclass(f.default_factory):
      out += field_names(f.default_factory, f"{prefix}{f.name}.")
    else:
      out.append(prefix + f.name)
  return out


def suggestion(key: str) -> str:
  """"; did you mean train.num_steps?" for a misspelt dotted field, or ""."""
  import difflib
  close = difflib.get_close_matches(key, field_names(), n=1)
  return f"; did you mean {close[0]}?" if close else ""


def replace_field(cfg: Config, key: str, text: str) -> Config:
  """`cfg` with the dotted field `key` set from the command-line `text` (parsed to the
  field's type); a ConfigError naming the key or the value otherwise. Not validated."""
  if key not in field_names():
    raise ConfigError(f"config.{key}: no such field{suggestion(key)}")
  section, _, name = key.rpartition(".")
  parent = getattr(cfg, section) if section else cfg
  kind = type(getattr(parent, name))
  try:
    if kind is bool:
      if text.lower() not in ("true", "false", "1", "0"):
        raise ValueError
      value = text.lower() in ("true", "1")
    elif kind is int and float(text) != int(float(text)):
      raise ValueError
    else:
      value = kind(float(text)) if kind is int else kind(text)
  except ValueError:
    wanted = {bool: "true or false", int: "an integer", float: "a number"}.get(kind, "text")
    raise ConfigError(f"config.{key}={text!r}: must be {wanted}") from None
  if not section:
    return dataclasses.replace(cfg, **{name: value})
  return dataclasses.replace(cfg, **{section: dataclasses.replace(parent, **{name: value})})
