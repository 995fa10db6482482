"""Fine-tuning: sequence and token classification on labelled tasks, on the one loop.

The loop (`jaxpt.train.loop`) gives it what pretraining has: the mesh, one jitted donated step
with micro-batches and NaN handling, logs, evaluation and early stopping on the validation
metric, checkpoints, preemption and exact resume. Batches are pure functions of (seed, step):
the examples form a stream of epochs, each a permutation of (seed, epoch); augmentation comes
from (seed, step, example); each process builds only its rows.

Workdir: checkpoints/, best/, task.json (labels, kind, source, tokenizer), tokenizer/,
metrics.jsonl, tensorboard/, eval.json (the best checkpoint on the test split).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpt import config as config_lib
from jaxpt import evaluation, hf, pretrained, sharding
from jaxpt.config import Config, ConfigError
from jaxpt.data import augment as augment_lib
from jaxpt.data import labelled
from jaxpt.data import tokenizer as tok_lib
from jaxpt.models import heads
from jaxpt.train import checkpoint as ckpt_lib
from jaxpt.train import loop
from jaxpt.train.loop import TrainError, fetch
from jaxpt.train.step import cross_entropy

TASK_JSON = pretrained.TASK_JSON
IGNORE = -1  # label of a position that is not scored (padding, non-first sub-words)


# ---------------------------------------------------------------------------------------------
# Encoding examples.


@dataclasses.dataclass
class Encoded:
  input_ids: np.ndarray  # int32 [n, length]
  token_type_ids: np.ndarray
  attention_mask: np.ndarray
  labels: np.ndarray  # int32 [n] (sequence) or [n, length] with IGNORE (token)
  truncated: int  # examples cut to fit


def encode(examples: list[dict], tokenizer, task: labelled.Task, max_length: int, *,
           too_long: str = "truncate", where: str = "") -> Encoded:
  ids = tok_lib.special_ids(tokenizer)
  label_ids = task.label_ids()
  n = len(examples)
  out = Encoded(np.full((n, max_length), ids["pad"], np.int32),
                np.zeros((n, max_length), np.int32), np.zeros((n, max_length), np.int32),
                (np.full((n,), IGNORE, np.int32) if task.kind == "sequence"
                 else np.full((n, max_length), IGNORE, np.int32)), 0)
  tokenizer.no_truncation()
  tokenizer.no_padding()
  if task.kind == "sequence":
    texts = [(e["text"], e["text_pair"]) if e.get("text_pair") else e["text"] for e in examples]
    encodings = tokenizer.encode_batch(texts)
  else:
    words = tok_lib.words_as_in_text(tokenizer, [e["tokens"] for e in examples])
    encodings = tokenizer.encode_batch(words, is_pretokenized=True)
  for i, (example, enc) in enumerate(zip(examples, encodings)):
    tokens, types = enc.ids, enc.type_ids
    if len(tokens) > max_length:
      if too_long == "error":
        raise labelled.TaskError(f"{where} example {i}: {len(tokens)} tokens, more than "
                              f"finetune.max_length={max_length} (finetune.too_long=error)")
      out.truncated += 1
      # Keep the start and the final [SEP]; a pair loses the end of its text_pair first.
      tokens = tokens[:max_length - 1] + tokens[-1:]
      types = types[:max_length - 1] + types[-1:]
    length = len(tokens)
    out.input_ids[i, :length] = tokens
    out.token_type_ids[i, :length] = types
    out.attention_mask[i, :length] = 1
    if task.kind == "sequence":
      out.labels[i] = label_ids[example["label"]]
    else:  # the label of a word goes to its first sub-word; the others are not scored
      previous = None
      for position, word in enumerate(enc.word_ids[:length]):
        if word is not None and word != previous and position < max_length - 1:
          out.labels[i, position] = label_ids[example["tags"][word]]
        previous = word
  return out


# ---------------------------------------------------------------------------------------------
# The objective.


class ClassificationObjective:
  """Cross-entropy per scored label (a sequence's, or each first sub-word's), optionally
  weighted by class; accuracy over the scored labels."""

  def __init__(self, class_weights: np.ndarray):
    self.class_weights = jnp.asarray(class_weights)

  def logits(self, model, batch, *, deterministic: bool, rngs=None):
    return model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                 deterministic=deterministic, rngs=rngs, right_padded=True)  # padded at the end

  def _weights(self, labels):
    valid = (labels != IGNORE).astype(jnp.float32)
    safe = jnp.where(labels == IGNORE, 0, labels)
    return valid, safe, valid * self.class_weights[safe]

  def sums(self, model, batch, *, deterministic: bool, rngs=None) -> dict:
    logits = self.logits(model, batch, deterministic=deterministic, rngs=rngs)
    valid, safe, weights = self._weights(batch["labels"])
    losses, correct = cross_entropy(logits, safe)
    return {"loss": jnp.sum(losses * weights), "weight": jnp.sum(weights),
            "correct": jnp.sum(correct * valid), "count": jnp.sum(valid)}

  def normalizers(self, batch) -> dict:
    return {"weight": jnp.maximum(jnp.sum(self._weights(batch["labels"])[2]), 1e-6)}

  def loss(self, sums: dict, norms: dict):
    return sums["loss"] / norms["weight"]

  def means(self, sums: dict, prefix: str) -> dict:
    return {f"{prefix}/loss": sums["loss"] / jnp.maximum(sums["weight"], 1e-6),
            f"{prefix}/accuracy": sums["correct"] / jnp.maximum(sums["count"], 1.0)}


def bucket_lengths(max_length: int, count: int) -> tuple[int, ...]:
  """`count` padded lengths, ascending: max_length, then halved, each a multiple of 8 (at
  least 8); fewer when halving reaches 8."""
  lengths = {max_length}
  for k in range(1, count):
    lengths.add(min(max_length, max(8, -(-max_length // (2 ** k * 8)) * 8)))
  return tuple(sorted(lengths))


def fit_length(buckets: tuple[int, ...], longest: int) -> int:
  """The smallest bucket holding `longest` tokens."""
  return next((b for b in buckets if b >= longest), buckets[-1])


def group_by_length(order: np.ndarray, lengths: np.ndarray, batch_size: int, group: int,
                    rng: np.random.Generator) -> np.ndarray:
  """`order` (an epoch's permutation) with each run of `group` batches sorted by length and
  cut into batches whose order is then shuffled: still a permutation (every example once an
  epoch), random across runs, but each batch holds texts of similar length and so pads to
  a small bucket."""
  size = group * batch_size
  out = []
  for start in range(0, len(order), size):
    chunk = order[start:start + size]
    chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
    batches = [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    out.extend(batches[i] for i in rng.permutation(len(batches)))
  return np.concatenate(out) if out else order


# Fine-tuning learning rates by encoder width (`optim.learning_rate=0`, the fine-tuning
# preset): the rates BERT's authors swept for BERT-base and -large (Devlin et al. 2019,
# appendix A.3: 5e-5, 3e-5, 2e-5) and Turc et al. 2019 for their compact BERTs (arXiv
# 1908.08962: 1e-4, 5e-5, 3e-5), the narrower the model the larger the rate. Up to hidden
# 128 (BERT-tiny's width) the rate is 1e-3, measured here: jaxpt's BERT-tiny from
# `embedded_tiny`, 256 labels, 300 steps, scored 0.10 / 0.13 / 0.16 test macro-F1 on
# brown_genre at 1e-4 / 3e-4 / 1e-3, and 0.88 / 0.91 on spamassassin at 1e-4 / 1e-3
# (benchmarks/RESULTS.md, the scoreboard).
LEARNING_RATES = ((128, 1e-3), (256, 1e-4), (512, 5e-5), (768, 3e-5), (1 << 30, 2e-5))
# A random encoder has no pretrained features to preserve and learns nothing useful at those
# rates in a few hundred steps; from scratch the rate is this many times the table's, at most
# SCRATCH_MAX.
SCRATCH_FACTOR = 10.0
SCRATCH_MAX = 1e-3


def learning_rate_for(model: config_lib.ModelConfig, scratch: bool) -> float:
  rate = next(r for width, r in LEARNING_RATES if model.hidden_size <= width)
  return min(rate * SCRATCH_FACTOR, SCRATCH_MAX) if scratch else rate


def create_classifier(cfg: config_lib.ModelConfig, num_labels: int, kind: str, seed: int):
  with nnx.use_eager_sharding(False):
    return heads.EncoderForClassification(cfg, num_labels, kind, rngs=nnx.Rngs(params=seed))


# ---------------------------------------------------------------------------------------------
# The task.


@dataclasses.dataclass
class Setup:
  """Everything decided before compiling: task, tokenizer, model config, initial params."""

  cfg: Config
  task: labelled.Task
  tokenizer: object
  # Host arrays: the encoder's and pooler's (encoder.*, pooler.*; the classifier starts
  # fresh), or a whole classifier's (`jaxpt compress` recovering a pruned model); None: random.
  init_params: dict | None
  init_source: str


def _scratch_tokenizer(path: str | None, task: labelled.Task, vocab_size: int):
  """`path`'s tokenizer, or a WordPiece vocabulary trained on the task's train split (its
  texts, pairs and tokens): a baseline that downloads nothing."""
  if path:
    return tok_lib.load(path)
  texts = []
  for row in task.splits["train"]:
    if "tokens" in row:
      texts.append(" ".join(row["tokens"]))
    else:
      texts.extend(t for t in (row.get("text"), row.get("text_pair")) if t)
  return tok_lib.train_wordpiece(texts, max(vocab_size, 100), min_frequency=1)


def _architecture(cfg: Config, loaded: pretrained.Pretrained) -> Config:
  """`cfg` with `loaded`'s architecture; dropout, dtype, remat, scan and pooling stay `cfg`'s."""
  m = cfg.model
  arch = dataclasses.replace(loaded.config, hidden_dropout=m.hidden_dropout,
                             attention_dropout=m.attention_dropout, dtype=m.dtype,
                             remat=m.remat, scan_layers=m.scan_layers,
                             classifier_pooling=m.classifier_pooling)
  return dataclasses.replace(cfg, model=arch)


def setup(cfg: Config, task_spec: str | labelled.Task, init: str,
          tokenizer_path: str | None = None, like: str | None = None) -> Setup:
  """Resolves --task, --init (and --like) and the tokenizer; every check happens here, before
  compiling. `like` (with init="scratch"): the architecture and tokenizer of that pretrained
  source, the weights random: the baseline that differs from it only by pretraining."""
  task = task_spec if isinstance(task_spec, labelled.Task) else labelled.load(task_spec)
  if like and init != "scratch":
    raise TrainError(f"--like={like} shapes a model from scratch; with --init={init} the "
                     "architecture comes from the weights")
  if like:
    if tokenizer_path:
      raise TrainError("--like brings its own tokenizer; drop --tokenizer")
    try:
      loaded = pretrained.load(like)
    except (pretrained.SourceError, hf.HFError) as e:
      raise TrainError(f"--like={like}: {e}") from None
    if loaded.tokenizer is None:
      raise TrainError(f"--like={like}: no tokenizer beside the weights")
    tokenizer, cfg = loaded.tokenizer, _architecture(cfg, loaded)
    params, source = None, f"scratch (the architecture and tokenizer of {loaded.source})"
  elif init == "scratch":
    tokenizer = _scratch_tokenizer(tokenizer_path, task, cfg.finetune.scratch_vocab_size)
    cfg = config_lib.with_model(cfg, vocab_size=tokenizer.get_vocab_size())
    params, source = None, "scratch" + (
        "" if tokenizer_path else f" (a WordPiece vocabulary of {tokenizer.get_vocab_size()} "
        "trained on the task's train split)")
  else:
    try:
      loaded = pretrained.load(init)
    except (pretrained.SourceError, hf.HFError) as e:
      raise TrainError(f"--init={init}: {e}") from None
    tokenizer = loaded.tokenizer
    if tokenizer_path:
      given = tok_lib.load(tokenizer_path)
      if tokenizer is not None and given.get_vocab() != tokenizer.get_vocab():
        raise TrainError(f"--tokenizer={tokenizer_path} differs from the tokenizer of "
                         f"{loaded.source}; the model's embeddings only fit its own")
      tokenizer = tokenizer or given
    if tokenizer is None:
      raise TrainError(f"--init={init}: no tokenizer beside the weights; pass --tokenizer")
    # The architecture comes from the weights; dropout, dtype, remat from the config.
    cfg = _architecture(cfg, loaded)
    arch = cfg.model
    adapted = pretrained.adapt(loaded, arch, allow_missing=("mlm.", "nsp.", "pooler."))
    params = {k: v for k, v in adapted.items() if k in ("encoder", "pooler")}
    if not arch.pooler and "mlm" in adapted:
      # ModernBERT's classifier head (dense, activation, norm) starts as its MLM head's, as
      # transformers' ModernBertFor*Classification does when loaded from a masked LM.
      params["head"] = {"transform": adapted["mlm"]["transform"],
                        "norm": adapted["mlm"]["norm"]}
    source = loaded.source
  if cfg.optim.learning_rate == 0:
    rate = learning_rate_for(cfg.model, scratch=init == "scratch")  # --like too
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, learning_rate=rate))
  if tokenizer.get_vocab_size() > cfg.model.vocab_size:
    raise TrainError(f"the tokenizer has {tokenizer.get_vocab_size()} tokens, more than "
                     f"model.vocab_size={cfg.model.vocab_size}")
  if cfg.finetune.max_length > cfg.model.max_position_embeddings - (
      cfg.model.pad_token_id + 1 if cfg.model.variant == "roberta" else 0):
    raise ConfigError(f"config.finetune.max_length={cfg.finetune.max_length} exceeds the "
                      f"model's positions (max_position_embeddings="
                      f"{cfg.model.max_position_embeddings})")
  return Setup(config_lib.validate(cfg), task, tokenizer, params, source)


def _class_weights(task: labelled.Task, labels: np.ndarray, enabled: bool) -> np.ndarray:
  k = len(task.labels)
  if not enabled:
    return np.ones(k, np.float32)
  counts = np.bincount(labels[labels != IGNORE].ravel(), minlength=k).astype(np.float64)
  return (counts.sum() / (k * np.maximum(counts, 1))).astype(np.float32)


class ClassificationTask:
  """One labelled task, encoded, as the loop's task; after `prepare_eval(program)` (or
  `bind`) it also predicts and reports on any split."""

  command = "finetune"
  higher_is_better = True
  flops_per_token = 0.0

  def __init__(self, s: Setup):
    cfg, self.setup = s.cfg, s
    self.cfg = cfg
    self.is_main = jax.process_index() == 0
    task, f, t = s.task, cfg.finetune, cfg.train
    self.encoded = {split: encode(task.splits[split], s.tokenizer, task, f.max_length,
                                  too_long=f.too_long, where=f"{task.source} ({split})")
                    for split in labelled.SPLITS}
    n_train = len(task.splits["train"])
    if n_train < t.batch_size:
      raise TrainError(f"the train split has {n_train} examples, fewer than "
                       f"train.batch_size={t.batch_size}")
    self.steps_per_epoch = n_train // t.batch_size
    self.num_steps = (max(1, round(f.epochs * self.steps_per_epoch), f.min_steps)
                      if f.epochs > 0 else t.num_steps)
    self.eval_every_steps = (max(1, round(f.eval_every_epochs * self.steps_per_epoch))
                             if f.eval_every_epochs > 0 else t.eval_every_steps)
    if f.evaluations:
      self.eval_every_steps = max(1, self.num_steps // f.evaluations)
    if f.warmup_fraction > 0:
      self.cfg = cfg = dataclasses.replace(cfg, optim=dataclasses.replace(
          cfg.optim, warmup_steps=round(f.warmup_fraction * self.num_steps)))
    self.best_metric = "eval/" + f.metric
    self.buckets = bucket_lengths(f.max_length, f.length_buckets)
    self.lengths = {split: enc.attention_mask.sum(1) for split, enc in self.encoded.items()}
    self.description = (f"{task.name} ({task.kind}, {len(task.labels)} labels; "
                        + ", ".join(f"{k} {len(v)}" for k, v in task.splits.items())
                        + f") from {s.init_source}, {self.steps_per_epoch} steps an epoch")
    self.augment = augment_lib.Augment(f.augment_delete, f.augment_swap, f.augment_synonym)
    self.synonyms = augment_lib.wordnet_synonyms() if f.augment_synonym > 0 else None
    self.class_weights = _class_weights(task, self.encoded["train"].labels, f.class_weights)
    self.objective = ClassificationObjective(self.class_weights)
    self.program = None

  def create_model(self, rngs: nnx.Rngs) -> nnx.Module:
    return heads.EncoderForClassification(self.cfg.model, len(self.setup.task.labels),
                                          self.setup.task.kind, rngs=rngs)

  def initial_params(self) -> dict | None:
    return self.setup.init_params

  def data_identity(self) -> dict:
    return {"labels": self.setup.task.labels, "metric": self.cfg.finetune.metric}

  def data_metrics(self, first_row: int, stop_row: int) -> dict:
    return {}

  @property
  def batch_phases(self) -> tuple:
    return ((0, self.cfg.train.batch_size),)

  phase, new_data = 0, False  # fine-tuning runs in one phase

  @property
  def stop_step(self) -> int:
    return self.num_steps

  def check_resume(self, saved: dict, where: str) -> None:
    if "labels" in saved and saved["labels"] != self.setup.task.labels:
      raise TrainError(f"{where}: trained on other labels ({saved['labels'][:5]}...)")

  # Batches.

  def _order(self, epoch: int) -> np.ndarray:
    cache = self.__dict__.setdefault("_orders", {})
    if epoch not in cache:
      if len(cache) > 2:
        cache.clear()
      rng = np.random.default_rng([self.cfg.seed, epoch])
      order = rng.permutation(len(self.setup.task.splits["train"]))
      group = self.cfg.finetune.group_by_length
      if group > 1:
        order = group_by_length(order, self.lengths["train"], self.cfg.train.batch_size,
                                group, rng)
      cache[epoch] = order
    return cache[epoch]

  def train_rows(self, step: int, start_step: int, first_example: int) -> np.ndarray:
    """Example indices of global batch `step`: the next batch_size of the epoch stream."""
    n, b = len(self.setup.task.splits["train"]), self.cfg.train.batch_size
    first = first_example + (step - start_step) * b
    stream = np.arange(first, first + b)
    out = np.empty(b, np.int64)
    for epoch in np.unique(stream // n):
      where = stream // n == epoch
      out[where] = self._order(int(epoch))[stream[where] % n]
    return out

  def train_batches(self, start_step: int, first_example: int, rows):
    """This process's rows of each global batch from `start_step` on, on the host."""
    cfg, task = self.cfg, self.setup.task
    augment = self.augment.active and task.kind == "sequence"  # words of text only
    lo, hi = rows
    for step in itertools.count(start_step):
      index = self.train_rows(step, start_step, first_example)
      # Every process picks the same length: from the whole global batch.
      length = (cfg.finetune.max_length if augment  # augmented texts change length
                else fit_length(self.buckets, int(self.lengths["train"][index].max())))
      index = index[lo:hi]
      enc = self.encoded["train"]
      if augment:  # re-encode this batch's texts, each augmented by (seed, step, example)
        examples = []
        for row in index:
          example = task.splits["train"][row]
          rng = np.random.default_rng([cfg.seed, step, int(row)])
          examples.append(dict(example, text=augment_lib.augment_text(
              example["text"], self.augment, rng, self.synonyms)))
        enc = encode(examples, self.setup.tokenizer, task, cfg.finetune.max_length)
        index = slice(None)
      yield _rows(enc, index, length)

  # Prediction and evaluation.

  def bind(self, program: loop.Program) -> "ClassificationTask":
    """Compiles prediction for `program`'s model and mesh."""
    self.program = program
    self.mesh = program.mesh
    self.param_sh = program.model.param_shardings
    self.abstract_params = program.model.abstract_params
    self.abstract_state = program.abstract_state
    self.batch_sh = program.batch_sharding
    self.rows = sharding.local_batch_rows(self.batch_sh, self.cfg.train.batch_size)
    graphdef = self.graphdef = program.model.graphdef
    self.predict_step = jax.jit(self.make_predict_step(graphdef),
                                in_shardings=(self.param_sh, self.batch_sh),
                                out_shardings=sharding.replicated(self.mesh))
    objective = self.objective

    def grad_step(params, batch):
      """Gradient of the summed evaluation loss (no dropout): for importance scores."""
      return jax.grad(lambda p: objective.sums(nnx.merge(graphdef, p), batch,
                                               deterministic=True)["loss"])(params)

    self.grad_step = jax.jit(grad_step, in_shardings=(self.param_sh, self.batch_sh),
                             out_shardings=self.param_sh)

    def probability_step(params, batch):
      logits = objective.logits(nnx.merge(graphdef, params), batch, deterministic=True)
      return jax.nn.softmax(logits.astype(jnp.float32), -1)

    self.probability_step = jax.jit(probability_step, in_shardings=(self.param_sh,
                                                                    self.batch_sh),
                                    out_shardings=sharding.replicated(self.mesh))
    return self

  prepare_eval = bind

  def make_predict_step(self, graphdef):
    """`predict_step(params, batch) -> (predicted labels, loss sum, weight sum)`."""
    objective = self.objective

    def predict_step(params, batch):
      model = nnx.merge(graphdef, params)
      logits = objective.logits(model, batch, deterministic=True)
      sums = objective.sums(model, batch, deterministic=True)
      return jnp.argmax(logits, -1).astype(jnp.int32), sums["loss"], sums["weight"]

    return predict_step

  def eval_order(self, split: str) -> np.ndarray:
    """The order `eval_batches` visits `split` in: shortest first when batches are bucketed
    (so that each batch pads to little), else as stored."""
    if len(self.buckets) == 1:
      return np.arange(len(self.lengths[split]))
    return np.argsort(self.lengths[split], kind="stable")

  def eval_batches(self, split: str):
    """(global batch, real rows in it) over `split` in `eval_order`; the last batch is padded
    with rows whose labels are IGNORE (not scored)."""
    enc, b = self.encoded[split], self.cfg.train.batch_size
    order = self.eval_order(split)
    n = len(order)
    lo, hi = self.rows
    for start in range(0, n, b):
      index = order[np.minimum(np.arange(start, start + b), n - 1)]
      real = np.arange(start, start + b) < n
      length = fit_length(self.buckets, int(self.lengths[split][index].max()))
      batch = _rows(enc, index[lo:hi], length)
      batch["labels"][~real[lo:hi]] = IGNORE
      yield loop.to_device(batch, self.batch_sh), min(b, n - start)

  def _gather(self, split: str, outputs: list[np.ndarray], fill) -> np.ndarray:
    """Per-batch outputs (in `eval_order`, of bucketed lengths) as one array in the split's
    order, token outputs padded to max_length with `fill`."""
    if self.setup.task.kind == "token":
      width = self.cfg.finetune.max_length
      outputs = [np.pad(o, [(0, 0), (0, width - o.shape[1])] + [(0, 0)] * (o.ndim - 2),
                        constant_values=fill) for o in outputs]
    ordered = np.concatenate(outputs)
    out = np.empty_like(ordered)
    out[self.eval_order(split)] = ordered
    return out

  def predict(self, params, split: str, predict_step=None) -> tuple[np.ndarray, float]:
    """(predictions shaped like the split's labels, mean loss); `predict_step` replaces the
    compiled one (a quantized model's)."""
    predict_step = predict_step or self.predict_step
    predictions, loss, weight = [], 0.0, 0.0
    for batch, real in self.eval_batches(split):
      pred, l, w = fetch(predict_step(params, batch))
      predictions.append(pred[:real])
      loss, weight = loss + float(l), weight + float(w)
    return self._gather(split, predictions, 0), loss / max(weight, 1e-9)

  def probabilities(self, params, split: str) -> np.ndarray:
    """Class probabilities, [n, labels] (sequence) or [n, max_length, labels] (token; 0 where
    nothing is scored): what `jaxpt ensemble` averages."""
    with jax.set_mesh(self.mesh):
      out = [fetch(self.probability_step(params, batch))[:real]
             for batch, real in self.eval_batches(split)]
    return self._gather(split, out, 0.0)

  def report_predictions(self, predictions: np.ndarray, split: str) -> dict:
    """Metrics of `predictions` (shaped like the split's labels) on `split`."""
    task, labels = self.setup.task, self.encoded[split].labels
    if task.kind == "sequence":
      return evaluation.classification_report(labels, predictions, task.labels)
    scored = labels != IGNORE
    out = evaluation.classification_report(labels[scored], predictions[scored], task.labels)
    if evaluation.is_bio(task.labels):
      names = np.asarray(task.labels)
      true = [list(names[l[m]]) for l, m in zip(labels, scored)]
      pred = [list(names[p[m]]) for p, m in zip(predictions, scored)]
      out.update(evaluation.entity_report(true, pred))
    return out

  def report(self, params, split: str, predict_step=None) -> dict:
    with jax.set_mesh(self.mesh):
      predictions, loss = self.predict(params, split, predict_step)
    out = self.report_predictions(predictions, split)
    out["loss"] = loss
    out["split"] = split
    return out

  def evaluate(self, params) -> dict:
    val = self.report(params, "validation")
    metric = self.cfg.finetune.metric
    out = {f"eval/{k}": val[k] for k in ("loss", "accuracy", "f1_macro", "mcc")}
    out["eval/" + metric] = val[metric]
    return out


def _rows(enc: Encoded, index, length: int) -> dict:
  """Rows `index` of `enc`, cut to their first `length` positions (the rest is padding)."""
  labels = enc.labels[index]
  return {"input_ids": enc.input_ids[index, :length],
          "token_type_ids": enc.token_type_ids[index, :length],
          "attention_mask": enc.attention_mask[index, :length],
          "labels": labels if labels.ndim == 1 else labels[:, :length]}


def bound_task(s: Setup) -> ClassificationTask:
  """A task compiled for prediction on its config's mesh (no training)."""
  task = ClassificationTask(s)
  mesh = sharding.make_mesh(s.cfg.mesh)
  sharding.check_fits(s.cfg, mesh)
  return task.bind(loop.build_program(task, mesh))


# ---------------------------------------------------------------------------------------------
# The run.


def write_json(path: str, value: dict) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2)
    f.write("\n")
  os.replace(tmp, path)


def finetune(s: Setup, workdir: str, *, progress: bool = True) -> dict:
  """Trains (resuming from WORKDIR/checkpoints), keeps the best validation checkpoint, then
  evaluates it on the test split and writes WORKDIR/eval.json; returns that report."""
  cfg, task = s.cfg, s.task
  runner = ClassificationTask(s)
  os.makedirs(workdir, exist_ok=True)
  info = {"task": task.name, "source": task.source, "kind": task.kind, "labels": task.labels,
          "init": s.init_source, "truncated": {k: v.truncated for k, v in
                                               runner.encoded.items()}}
  task_json = os.path.join(workdir, TASK_JSON)
  if os.path.exists(task_json):
    saved = json.load(open(task_json))
    if saved["labels"] != task.labels or saved["kind"] != task.kind:
      raise TrainError(f"{workdir} holds a run on another task ({saved['task']}: "
                       f"{len(saved['labels'])} labels); use a new workdir")
  truncated = sum(v.truncated for v in runner.encoded.values())
  if runner.is_main:
    write_json(task_json, info)
    tok_dir = os.path.join(workdir, "tokenizer")
    if not os.path.exists(os.path.join(tok_dir, "tokenizer.json")):
      os.makedirs(tok_dir, exist_ok=True)
      tok_lib.save(s.tokenizer, tok_dir)
    if truncated:
      print(f"jaxpt finetune: {truncated} examples truncated to {cfg.finetune.max_length} "
            "tokens", flush=True)
  last = loop.run(runner, workdir, progress=progress)
  if last.get("stopped") in ("preempted", "interrupted"):
    return {"stopped": last["stopped"], "step": last["step"]}
  # Whether the run ended while the validation metric was still rising: the best checkpoint
  # is the last evaluated one and early stopping did not end it.
  stopped = last.get("stopped", "finished")
  still_improving = stopped != "early_stopping" and last.get("best_step") == last["step"]
  report = evaluate_workdir(workdir, runner=runner,
                            run={"last_step": int(last["step"]), "stopped": stopped,
                                 "still_improving": bool(still_improving)})
  if runner.is_main:
    metric = cfg.finetune.metric
    print(evaluation.format_table(report, f"jaxpt finetune: best checkpoint (step "
                                          f"{report['step']}, validation {metric} "
                                          f"{last['best']:.4f}) on the test split"))
    if stopped == "early_stopping":
      print(f"  stopped early at step {last['step']}: no validation improvement in "
            f"{cfg.train.early_stopping_patience} evaluations", flush=True)
    elif report["still_improving"]:
      print(f"  the best validation {metric} came at the last step ({last['step']}): the run may "
            "be under-trained (raise finetune.epochs or finetune.min_steps)", flush=True)
  return report


def read_task_info(workdir: str) -> dict:
  task_json = os.path.join(workdir, TASK_JSON)
  if not os.path.exists(task_json):
    raise TrainError(f"{workdir}: no {TASK_JSON}; not a `jaxpt finetune` workdir")
  return json.load(open(task_json))


def runner_for(workdir: str, info: dict, cfg: Config,
               task_spec: str | None = None) -> ClassificationTask:
  """A bound task for the one a workdir was trained on (its directory or recipe), or for
  `task_spec` when its labels are the same."""
  tokenizer = tok_lib.load(os.path.join(workdir, "tokenizer", "tokenizer.json"))
  if task_spec is None:
    task_spec = info["source"] if os.path.isdir(info["source"]) else info["task"]
  task = labelled.load(task_spec)
  if task.labels != info["labels"]:
    raise TrainError(f"--task: labels {task.labels[:5]}... differ from the ones trained "
                     f"({info['labels'][:5]}...)")
  return bound_task(Setup(cfg, task, tokenizer, None, info["init"]))


def load_best(workdir: str, *, task_spec: str | None = None,
              runner: ClassificationTask | None = None):
  """(bound task, TrainState, task info, step) of a fine-tuning workdir's best checkpoint."""
  info = read_task_info(workdir)
  best = ckpt_lib.Checkpointer(os.path.join(workdir, "best"), max_to_keep=1, async_save=False)
  try:
    step = best.latest_step()
    if step is None:
      raise TrainError(f"{workdir}/best: no checkpoint (the run never evaluated)")
    if runner is None or runner.program is None:
      _, saved = best.restore_metadata(step)
      runner = runner_for(workdir, info, config_from_dict(saved), task_spec)
    with jax.set_mesh(runner.mesh):
      state, _, _ = best.restore(step, runner.abstract_state)
  finally:
    best.close()
  return runner, state, info, step


def evaluate_workdir(workdir: str, *, split: str = "test",
                     runner: ClassificationTask | None = None, task_spec: str | None = None,
                     out: str | None = None, run: dict | None = None) -> dict:
  """The best checkpoint of a fine-tuning workdir on `split`: report, printed and written.
  `run`: fields about the run that trained it, written with the report."""
  runner, state, info, step = load_best(workdir, task_spec=task_spec, runner=runner)
  report = runner.report(state.eval_params, split)
  report.update(step=step, task=info["task"], init=info["init"], **(run or {}))
  if runner.is_main:
    write_report(workdir, split, report, out)
  return report


def write_report(workdir: str, split: str, report: dict, out: str | None = None) -> None:
  write_json(out or os.path.join(workdir, "eval.json" if split == "test"
                                  else f"eval_{split}.json"), report)


def config_from_dict(d: dict) -> Config:
  def build(cls, values):
    kwargs = {}
    for field in dataclasses.fields(cls):
      if field.name in values:
        v = values[field.name]
        kwargs[field.name] = build(field.type, v) if dataclasses.is_dataclass(field.type) else v
    return cls(**kwargs)
  return config_lib.validate(build(Config, d))
