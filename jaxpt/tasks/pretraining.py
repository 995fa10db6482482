"""Pretraining: masked LM (with BERT's next-sentence prediction), or causal LM for a decoder
(`model.attention_kind="causal"`), on `jaxpt prepare` output.

A batch is a dict of arrays, the leading axis the (global) batch:
  input_ids, token_type_ids, attention_mask: int32 [batch, length]
  masked_positions, masked_ids: int32 [batch, predictions]; masked_weights: float32 (0 = padding)
  nsp_labels: int32 [batch] (0 = B follows A, 1 = B is random, HuggingFace's convention)
  packed rows add segment_ids [batch, length] (1..K, 0 = padding) and cls_positions [batch, K]
  (-1 = empty slot); nsp_labels is then [batch, K]
A causal-LM batch is input_ids and attention_mask (and segment_ids when packed): every next
token within the same packed sequence is a target.

Everything a user could get wrong (config, data directory, tokenizer, mesh, checkpoint) is
checked before the first compile.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil

import jax
import jax.numpy as jnp
from flax import nnx

from jaxpt import config as config_lib
from jaxpt import hf, pretrained, sharding
from jaxpt.config import Config, ConfigError
from jaxpt.data import loader, store
from jaxpt.models import heads, transformer
from jaxpt.train import loop
from jaxpt.train import metrics as metrics_lib
from jaxpt.train.loop import TrainError
from jaxpt.train.step import masked_cross_entropy, make_eval_step

log = logging.getLogger("jaxpt")
Batch = dict


def nsp_weights(batch: Batch):
  """1 per next-sentence prediction: one per row, or (packed rows) one per filled slot."""
  if "cls_positions" in batch:
    return (batch["cls_positions"] >= 0).astype(jnp.float32)
  return jnp.ones(batch["nsp_labels"].shape, jnp.float32)


def pretraining_sums(model, batch: Batch, *, deterministic: bool, rngs=None) -> dict:
  """Sums over the batch, so that means can be formed over any number of batches or devices."""
  mlm_logits, nsp_logits = model(
      batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
      batch["masked_positions"], deterministic=deterministic, rngs=rngs,
      segment_ids=batch.get("segment_ids"), cls_positions=batch.get("cls_positions"),
      right_padded=True)  # the loader pads at the end of each row
  weights = batch["masked_weights"]
  mlm_loss, mlm_correct = masked_cross_entropy(mlm_logits, batch["masked_ids"], weights)
  sums = {"mlm_loss": mlm_loss, "mlm_correct": mlm_correct, "mlm_count": jnp.sum(weights),
          "real_tokens": jnp.sum(batch["attention_mask"] > 0).astype(jnp.float32)}
  if nsp_logits is not None:  # RoBERTa has no next-sentence task
    nsp_w = nsp_weights(batch)
    nsp_loss, nsp_correct = masked_cross_entropy(nsp_logits, batch["nsp_labels"], nsp_w)
    sums.update(nsp_loss=nsp_loss, nsp_correct=nsp_correct, nsp_count=jnp.sum(nsp_w))
  return sums


def means(sums: dict, prefix: str) -> dict:
  """Turns `pretraining_sums` (possibly added over batches) into named means."""
  mlm_count = jnp.maximum(sums["mlm_count"], 1.0)
  mlm_loss = sums["mlm_loss"] / mlm_count
  out = {f"{prefix}/loss": mlm_loss, f"{prefix}/mlm_loss": mlm_loss,
         f"{prefix}/mlm_accuracy": sums["mlm_correct"] / mlm_count}
  if "real_tokens" in sums:  # the masking rate in use: targets per real token
    out[f"{prefix}/masked_fraction"] = sums["mlm_count"] / jnp.maximum(sums["real_tokens"], 1.0)
  if "nsp_loss" in sums:
    nsp_loss = sums["nsp_loss"] / sums["nsp_count"]
    out.update({f"{prefix}/loss": mlm_loss + nsp_loss, f"{prefix}/nsp_loss": nsp_loss,
                f"{prefix}/nsp_accuracy": sums["nsp_correct"] / sums["nsp_count"]})
  return out


def causal_weights(batch: Batch):
  """`[batch, length - 1]`: 1 where token t + 1 is a real token of the same packed sequence
  as token t (the loss never crosses a document boundary or reaches padding)."""
  weights = batch["attention_mask"][:, 1:] > 0
  if "segment_ids" in batch:
    seg = batch["segment_ids"]
    weights = weights & (seg[:, 1:] == seg[:, :-1])
  return weights.astype(jnp.float32)


def causal_sums(model, batch: Batch, *, deterministic: bool, rngs=None) -> dict:
  logits = model(batch["input_ids"], batch["attention_mask"], deterministic=deterministic,
                 rngs=rngs, segment_ids=batch.get("segment_ids"), right_padded=True)
  weights = causal_weights(batch)
  loss, correct = masked_cross_entropy(logits[:, :-1], batch["input_ids"][:, 1:], weights)
  return {"clm_loss": loss, "clm_correct": correct, "clm_count": jnp.sum(weights)}


def causal_means(sums: dict, prefix: str) -> dict:
  count = jnp.maximum(sums["clm_count"], 1.0)
  loss = sums["clm_loss"] / count
  return {f"{prefix}/loss": loss, f"{prefix}/clm_loss": loss,
          f"{prefix}/clm_accuracy": sums["clm_correct"] / count}


class CausalObjective:
  """Next-token loss per target token (a decoder's pretraining)."""

  sums = staticmethod(causal_sums)
  means = staticmethod(causal_means)

  def normalizers(self, batch: Batch) -> dict:
    return {"clm": jnp.maximum(jnp.sum(causal_weights(batch)), 1.0)}

  def loss(self, sums: dict, norms: dict):
    return sums["clm_loss"] / norms["clm"]


class PretrainingObjective:
  """Masked-LM loss per target token, plus the next-sentence loss per prediction (BERT)."""

  sums = staticmethod(pretraining_sums)
  means = staticmethod(means)

  def normalizers(self, batch: Batch) -> dict:
    return {"mlm": jnp.maximum(jnp.sum(batch["masked_weights"]), 1.0),
            "nsp": jnp.maximum(jnp.sum(nsp_weights(batch)), 1.0)}

  def loss(self, sums: dict, norms: dict):
    loss = sums["mlm_loss"] / norms["mlm"]
    if "nsp_loss" in sums:  # BERT; RoBERTa trains on masked LM alone
      loss = loss + sums["nsp_loss"] / norms["nsp"]
    return loss


def follow_data(cfg: Config, explicit: set[str]) -> tuple[Config, list[str]]:
  """A preset fitted to its prepared data: `model.vocab_size` and `model.pad_token_id` from
  the data's tokenizer, and `model.max_position_embeddings` raised to the data's length,
  unless the command line set them (`explicit`: "model.vocab_size", ...). Returns the config
  and one note per change, plus a warning when the warm-up does not end within the run."""
  notes = []
  if cfg.optim.warmup_steps >= cfg.train.num_steps:
    notes.append(f"warning: optim.warmup_steps={cfg.optim.warmup_steps} is not shorter than "
                 f"train.num_steps={cfg.train.num_steps}: the learning rate warms up for the "
                 "whole run and never reaches its peak")
  if not cfg.data.dir and not cfg.data.sources:
    return cfg, notes
  try:
    data = loader.open_data(cfg.data)
  except Exception:  # a missing or damaged directory: PretrainingTask names what is wrong
    return cfg, notes
  m, changes = cfg.model, {}
  wanted = {"vocab_size": data.vocab_size,
            "pad_token_id": int(data.manifest["tokenizer"]["special_ids"]["pad"])}
  if data.seq_length > m.max_position_embeddings:
    wanted["max_position_embeddings"] = data.seq_length
  for name, value in wanted.items():
    if f"model.{name}" not in explicit and getattr(m, name) != value:
      changes[name] = value
      notes.append(f"model.{name}={value} from {data.directory} (the preset has "
                   f"{getattr(m, name)}; set --config.model.{name} to choose)")
  if changes:
    cfg = config_lib.with_model(cfg, **changes)
  return cfg, notes


def check_data(cfg: Config, data: loader.PreparedData) -> None:
  m = cfg.model
  if data.vocab_size > m.vocab_size:
    raise ConfigError(
        f"config.model.vocab_size={m.vocab_size} is smaller than the tokenizer of "
        f"{data.directory} ({data.vocab_size} tokens); set --config.model.vocab_size="
        f"{data.vocab_size}")
  if data.seq_length > m.max_position_embeddings:
    raise ConfigError(
        f"config.model.max_position_embeddings={m.max_position_embeddings} is shorter than "
        f"the examples in {data.directory} (seq_length {data.seq_length})")
  if m.attention == "splash" and data.seq_length % 128:
    raise ConfigError(
        f"config.model.attention='splash' needs a length in multiples of 128 (its tile); "
        f"{data.directory} holds {data.seq_length}-token rows: use 'xla' or 'auto'")
  if data.num_examples("train") < 1:
    raise TrainError(f"{data.directory}: the train split is empty")
  if m.attention_kind == "causal" and data.manifest.get("examples") != "full_sentences":
    raise ConfigError(
        f"{data.directory} holds sentence-pair examples; a causal LM (model.attention_kind="
        "'causal') trains on running text: prepare with --examples=full_sentences")
  if m.variant == "bert" and data.manifest.get("examples") == "full_sentences":
    raise ConfigError(
        f"{data.directory} holds FULL-SENTENCES examples (no sentence pairs), which have no "
        "next-sentence labels; pretrain them with --config.model.variant=roberta, or prepare "
        "with --examples=pairs")
  pad = int(data.manifest["tokenizer"]["special_ids"]["pad"])
  if m.variant == "roberta" and pad != m.pad_token_id:
    raise ConfigError(
        f"config.model.pad_token_id={m.pad_token_id} differs from the padding id of "
        f"{data.directory}'s tokenizer ({pad}); RoBERTa's positions count from it: set "
        f"--config.model.pad_token_id={pad}")


class PretrainingTask:
  """Masked-LM pretraining of a `heads.EncoderForPreTraining` on one prepared directory."""

  command = "pretrain"
  best_metric = "eval/loss"
  higher_is_better = False

  def __init__(self, cfg: Config, workdir: str | None = None, *, data=None,
               phase: config_lib.Phase | None = None):
    config_lib.validate(cfg)
    if cfg.optim.learning_rate <= 0:
      raise ConfigError(f"config.optim.learning_rate={cfg.optim.learning_rate}: pretraining "
                        "needs a positive peak (0, chosen by model size, is for fine-tuning)")
    self.mixture = None
    if data is None:
      if not cfg.data.dir and not cfg.data.sources:
        raise ConfigError("config.data.dir is empty: point it at a `jaxpt prepare` output "
                          "(or config.data.sources at several)")
      self.mixture = loader.open_mixture(cfg.data)
      data = self.mixture.sources[0] if self.mixture else loader.PreparedData.open(cfg.data.dir)
    for source in self.mixture.sources if self.mixture else (data,):
      if not isinstance(source, _NoData):
        check_data(cfg, source)
    self.cfg, self.data, self.workdir = cfg, data, workdir
    self.causal = cfg.model.attention_kind == "causal"
    self.objective = CausalObjective() if self.causal else PretrainingObjective()
    self.loss_name = "clm" if self.causal else "mlm"
    self.num_steps = cfg.train.num_steps
    self.phase = phase.index if phase else 0
    self.stop_step = phase.stop_step if phase else self.num_steps
    self.phase_start = phase.first_step if phase else 0
    self.new_data = bool(phase and phase.new_data)
    self.eval_every_steps = cfg.train.eval_every_steps
    self.spec = None if self.causal else data.masking_spec(cfg.data)
    if self.spec is not None and cfg.data.max_predictions_per_seq > 0:
      asked = config_lib.max_predictions(
          dataclasses.replace(cfg.data, max_predictions_per_seq=0), data.seq_length)
      if asked > self.spec.max_predictions:
        log.warning("data.max_predictions_per_seq=%d caps the targets at %.1f%% of a "
                    "%d-token row; the masking rate asks for up to %d (0: as many as it asks)",
                    self.spec.max_predictions, 100 * self.spec.max_predictions / data.seq_length,
                    data.seq_length, asked)
    self.flops_per_token = metrics_lib.flops_per_token(
        cfg.model, data.seq_length,
        data.seq_length if self.causal else self.spec.max_predictions)
    self.tokenizer_hash = data.manifest["tokenizer"]["hash"]
    kernel = transformer.describe_kernels(cfg.model, data.seq_length, packed=data.packed)
    sources = self.mixture.sources if self.mixture else (data,)
    self.description = (f"{sum(d.num_examples('train') for d in sources)} train examples of "
                        f"{data.seq_length} tokens"
                        + (" from " + ", ".join(f"{n} ({w:.0%})" for n, w in zip(
                            self.mixture.names, self.mixture.weights)) if self.mixture else "")
                        + f", attention {kernel}"
                        + (" (auto)" if cfg.model.attention == "auto" else ""))
    self._row_sources = self.mixture.row_sources(cfg.seed) if self.mixture else None
    t = cfg.train
    self.batch_phases = loader.batch_phases(t.batch_size, t.batch_warmup_start,
                                            t.batch_warmup_tokens, data.seq_length)
    if len(self.batch_phases) > 1:
      self.description += ", batch " + ", ".join(
          f"{size} from step {first}" for first, size in self.batch_phases)
    self._batch_sh = None
    self._eval_set: list = []
    self._eval_step = None

  def create_model(self, rngs: nnx.Rngs) -> nnx.Module:
    return heads.model_class(self.cfg.model)(self.cfg.model, rngs=rngs)

  def initial_params(self) -> dict | None:
    """Host parameters to start from (`train.init_from`, or an import-hf workdir), checked
    against the config and the data's tokenizer before anything compiles; None: random."""
    cfg, workdir, data = self.cfg, self.workdir, self.data
    source = cfg.train.init_from
    if not source and workdir and os.path.exists(os.path.join(workdir, pretrained.MODEL_JSON)):
      source = workdir  # `jaxpt import-hf --workdir` then `jaxpt pretrain --workdir`
    if not source:
      return None
    try:
      loaded = pretrained.load(source)
      params = pretrained.adapt(loaded, cfg.model)
    except (pretrained.SourceError, hf.HFError) as e:
      raise TrainError(f"config.train.init_from: {e}") from None
    data_tok = data.tokenizer()
    if loaded.tokenizer is not None and loaded.tokenizer.get_vocab() != data_tok.get_vocab():
      raise TrainError(f"{loaded.source}: its tokenizer's vocabulary differs from the one of "
                       f"{data.directory}; prepare the data with --tokenizer from it")
    if jax.process_index() == 0:
      print(f"jaxpt pretrain: parameters from {loaded.source}"
            + (f" (freshly initialised: {', '.join(loaded.missing)})" if loaded.missing else ""),
            flush=True)
    return params

  def train_batches(self, start_step: int, first_example: int, rows):
    c = self.cfg
    readers = ([d.reader("train") for d in self.mixture.sources] if self.mixture
               else self.data.reader("train"))
    rows_of = None
    if len(self.batch_phases) > 1:  # this process's rows of each size
      rows_of = lambda size: sharding.local_batch_rows(self._batch_sh, size)  # noqa: E731
    return loader.batches(readers, self.spec, batch_size=c.train.batch_size,
                          seed=c.seed, start_step=start_step, first_example=first_example,
                          read_threads=c.data.read_threads, prefetch=c.data.prefetch_batches,
                          rows=rows, row_sources=self._row_sources, phases=self.batch_phases,
                          rows_of=rows_of)

  def data_metrics(self, first_row: int, stop_row: int) -> dict:
    """`data/fraction/NAME`: the share of each source among stream rows [first, stop); the
    phase of a run in phases."""
    out = {"train/phase": self.phase} if self.cfg.train.phases.strip() else {}
    if self.mixture:
      counts = self._row_sources.counts(first_row, stop_row)
      out.update({f"data/fraction/{n}": float(c) / max(stop_row - first_row, 1)
                  for n, c in zip(self.mixture.names, counts)})
    return out

  def prepare_eval(self, program: loop.Program) -> None:
    """The held-out batches, fixed for the whole run (same order and masks at every eval).

    An eval batch is a training micro-batch: the size known to fit in memory.
    """
    cfg, data = self.cfg, self.data
    batch_sh = self._batch_sh = program.batch_sharding
    self._eval_step = jax.jit(make_eval_step(program.model.graphdef, self.objective),
                              in_shardings=(program.state_shardings.params, batch_sh),
                              out_shardings=sharding.replicated(program.mesh))
    self._eval_set = []
    named = (zip(self.mixture.names, self.mixture.sources) if self.mixture
             else [(None, data)])
    size = cfg.train.batch_size // cfg.train.microbatches
    for name, source in named:
      n = source.num_examples("validation")
      if n == 0:
        log.warning("%s has no validation split; evaluation is skipped", source.directory)
        continue
      count = min(cfg.train.eval_batches, max(1, n // size))
      it = loader.batches(source.reader("validation"), self.spec, batch_size=size,
                          seed=cfg.seed + 1, shuffle=False, read_threads=1, prefetch=1,
                          rows=sharding.local_batch_rows(batch_sh, size))
      with jax.set_mesh(program.mesh):
        self._eval_set += [(name, loop.to_device(next(it), batch_sh)) for _ in range(count)]

  def evaluate(self, params) -> dict:
    """Held-out means: over every batch, and (a mixture) over each source's own."""
    if not self._eval_set:
      return {}
    totals: dict = {}  # "" the pool, else a source's name
    for name, batch in self._eval_set:
      sums = self._eval_step(params, batch)
      for key in {"", name or ""}:
        totals[key] = sums if key not in totals else jax.tree.map(jnp.add, totals[key], sums)
    totals = loop.fetch(totals)
    out = {k: float(v) for k, v in self.objective.means(totals.pop(""), "eval").items()}
    out["eval/perplexity"] = float(math.exp(min(out[f"eval/{self.loss_name}_loss"], 50.0)))
    for name, sums in totals.items():
      out.update({k: float(v) for k, v in self.objective.means(sums, f"eval/{name}").items()})
    return out

  def data_identity(self) -> dict:
    return {"tokenizer_hash": self.tokenizer_hash}

  def check_resume(self, saved: dict, where: str) -> None:
    step, phase = int(saved.get("next_step", 0)), int(saved.get("phase", 0))
    if self.phase and not (phase == self.phase or (phase == self.phase - 1
                                                    and step == self.phase_start)):
      raise TrainError(f"{where}: a checkpoint of phase {phase} at step {step}, but phase "
                       f"{self.phase} runs from step {self.phase_start} (are the newer "
                       "checkpoints unreadable?)")
    if saved.get("tokenizer_hash") is None:
      raise TrainError(f"{where}: not a pretraining checkpoint (a fine-tuning workdir?); "
                       "pretrain into a workdir of its own")
    if saved.get("tokenizer_hash") != self.tokenizer_hash:
      raise TrainError(f"{where}: trained with tokenizer {saved.get('tokenizer_hash')}, "
                       f"but {self.data.directory} uses {self.tokenizer_hash}")

  def batch_shapes(self, length: int, packed_slots: int = 0) -> dict:
    """Shapes and dtypes of one global batch (for compiling without data)."""
    b = self.cfg.train.batch_size
    if self.causal:
      shapes = {"input_ids": (b, length), "attention_mask": (b, length)}
      if packed_slots:
        shapes["segment_ids"] = (b, length)
      return {k: (v, jnp.int32) for k, v in shapes.items()}
    preds = config_lib.max_predictions(self.cfg.data, length)
    shapes = {"input_ids": (b, length), "token_type_ids": (b, length),
              "attention_mask": (b, length), "masked_positions": (b, preds),
              "masked_ids": (b, preds), "masked_weights": (b, preds), "nsp_labels": (b,)}
    if packed_slots:
      shapes.update(segment_ids=(b, length), cls_positions=(b, packed_slots),
                    nsp_labels=(b, packed_slots))
    return {k: (v, jnp.float32 if k == "masked_weights" else jnp.int32)
            for k, v in shapes.items()}


def build_program(cfg: Config, mesh) -> loop.Program:
  """The compiled pretraining program of `cfg` on `mesh`, data or not (tests, benchmarks):
  what `pretrain` runs."""
  data = (loader.open_data(cfg.data) if cfg.data.dir or cfg.data.sources
          else _NoData(cfg.model.max_position_embeddings))
  return loop.build_program(PretrainingTask(cfg, data=data), mesh)


def pretrain(cfg: Config, workdir: str, *, progress: bool = True) -> dict:
  """Trains to `cfg.train.num_steps`, resuming from the newest readable checkpoint in
  `workdir`, phase after phase (`train.phases`). Returns the last logged metrics (train and
  eval), plus `stopped` when the run ended early ("preempted", "interrupted" or
  "early_stopping")."""
  phases = config_lib.run_phases(cfg)
  tasks = [PretrainingTask(p.cfg, workdir, phase=p if len(phases) > 1 else None)
           for p in phases]  # every phase checked before anything compiles
  if len(tasks) > 1:
    check_phases(tasks)
    for task in tasks:
      task.description += (f", phase {task.phase} of {len(tasks)} (steps "
                           f"{task.phase_start + 1}-{task.stop_step})")
  is_main = jax.process_index() == 0
  if is_main:
    os.makedirs(workdir, exist_ok=True)
    _copy_tokenizer(tasks[0].data, workdir)
  done = _saved_step(workdir)
  last: dict = {}
  for task in tasks:
    if done is not None and done >= task.stop_step and task is not tasks[-1]:
      continue  # a finished phase
    last = loop.run(task, workdir, progress=progress)
    if last.get("stopped"):
      break
  if is_main:
    summary = ", ".join(f"{k}={last[k]:.4f}" for k in
                        ("train/mlm_loss", "eval/mlm_loss", "eval/mlm_accuracy",
                         "train/clm_loss", "eval/clm_loss", "eval/perplexity") if k in last)
    why = {"early_stopping": f" (early stopping: no better eval/loss in "
                             f"{cfg.train.early_stopping_patience} evaluations)"}.get(
                                 last.get("stopped"), "")
    print(f"jaxpt pretrain: step {last['step']}{why}: {summary}\n"
          f"  metrics:     {os.path.join(workdir, 'metrics.jsonl')}\n"
          f"  tensorboard: {os.path.join(workdir, 'tensorboard')}\n"
          f"  checkpoints: {os.path.join(workdir, 'checkpoints')}; best eval/loss: "
          f"{os.path.join(workdir, 'best')} (step {last.get('best_step')})", flush=True)
  return last


def check_phases(tasks: list["PretrainingTask"]) -> None:
  """What every phase must share with the first: the parameters' shapes, the tokenizer."""
  from jaxpt.models import params as params_lib
  first = tasks[0]
  shapes = params_lib.shapes(hf.abstract_params(first.cfg.model))
  for task in tasks[1:]:
    where = f"config.train.phases: phase {task.phase} (from step {task.phase_start})"
    theirs = params_lib.shapes(hf.abstract_params(task.cfg.model))
    changed = sorted(n for n in set(shapes) | set(theirs) if shapes.get(n) != theirs.get(n))
    if changed:
      raise ConfigError(f"{where} changes the shape of {len(changed)} parameter(s), e.g. "
                        f"{changed[0]}: {shapes.get(changed[0])} -> {theirs.get(changed[0])}; "
                        "a phase continues the same parameters")
    if task.tokenizer_hash != first.tokenizer_hash:
      raise ConfigError(f"{where}: {task.data.directory} has another tokenizer than "
                        f"{first.data.directory}; phases share one")


def _saved_step(workdir: str) -> int | None:
  """The newest step under WORKDIR/checkpoints (Orbax names finished steps by number)."""
  directory = os.path.join(workdir, "checkpoints")
  steps = [int(n) for n in os.listdir(directory) if n.isdigit()] if os.path.isdir(
      directory) else []
  return max(steps) if steps else None


def _copy_tokenizer(data: loader.PreparedData, workdir: str) -> None:
  """WORKDIR/tokenizer/: a workdir is self-contained for fill-mask, export and fine-tuning."""
  out = os.path.join(workdir, "tokenizer")
  if os.path.exists(os.path.join(out, "tokenizer.json")):
    return
  tmp = out + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  for name in ("tokenizer.json", "vocab.txt"):
    content = store.read_bytes(data.directory, name)  # local, or gs://
    if content is not None:
      with open(os.path.join(tmp, name), "wb") as f:
        f.write(content)
  shutil.rmtree(out, ignore_errors=True)
  os.replace(tmp, out)


def dry_run(cfg: Config) -> dict:
  """Compiles the sharded train step for the configured mesh, without data or parameters.

  Sequence length: the prepared data's when `data.dir` is set, else
  `model.max_position_embeddings` (the most memory the model can need). Reports parameters,
  FLOPs per token and per-device memory of the compiled executable.
  """
  config_lib.validate(cfg)
  slots = 0
  if cfg.data.dir or cfg.data.sources:
    data = loader.open_data(cfg.data)
    check_data(cfg, data)
    length = data.seq_length
    if data.packed:
      slots = int(data.manifest["options"]["max_sequences_per_row"])
  else:
    length = cfg.model.max_position_embeddings
    data = _NoData(length)
  task = PretrainingTask(cfg, data=data)
  report = loop.dry_run(task, task.batch_shapes(length, slots))
  report["seq_length"] = length
  report["flops_per_token"] = task.flops_per_token
  return report


class _NoData:
  """Stands in for prepared data when only shapes matter (`--dry_run` without data.dir)."""

  def __init__(self, length: int):
    self.seq_length, self.vocab_size, self.directory = length, 0, "(none)"
    self.manifest = {"tokenizer": {"hash": None, "special_ids": {"pad": 0, "mask": 0}},
                     "examples": "pairs"}
    self.packed = False

  def num_examples(self, split: str) -> int:
    return 1

  def masking_spec(self, cfg):
    return loader.masking.MaskingSpec(
        vocab_size=1, mask_id=0, special_ids=(0,), mask_prob=cfg.mask_prob,
        mask_token_prob=cfg.mask_token_prob, random_token_prob=cfg.random_token_prob,
        max_predictions=config_lib.max_predictions(cfg, self.seq_length),
        continues_word=None)


def format_dry_run(report: dict) -> str:
  lines = [f"jaxpt pretrain --dry_run: compiled the train step in {report['compile_seconds']} s",
           f"  devices:          {report['devices']}, mesh {report['mesh']}",
           f"  parameters:       {report['parameters']:,} ({report['parameters'] / 1e6:.1f}M)",
           f"  batch:            {report['batch_size']} x {report['seq_length']} tokens in "
           f"{report['microbatches']} micro-batch(es)",
           f"  FLOPs per token:  {report['flops_per_token'] / 1e6:.1f} MFLOP (training, matmuls)"]
  for key, value in report.get("per_device_bytes", {}).items():
    lines.append(f"  per device, {key + ':':<19} {value / 2**20:10.1f} MiB")
  return "\n".join(lines)
