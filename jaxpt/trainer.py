"""The pretraining loop: build sharded state, jit the step, feed batches, log, evaluate, save.

Everything a user could get wrong (config, data directory, tokenizer, mesh, checkpoint) is
checked before the first compile. Inside the loop the host never waits for the device except
at log, eval and checkpoint steps.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from tqdm import tqdm

from jaxpt import checkpoint as ckpt_lib
from jaxpt import config as config_lib
from jaxpt import metrics as metrics_lib
from jaxpt import hf, optim, pretrained, sharding
from jaxpt.config import Config, ConfigError
from jaxpt.data import loader, store
from jaxpt.models import bert
from jaxpt.train_step import TrainState, make_eval_step, make_train_step, means

log = logging.getLogger("jaxpt")


class TrainError(RuntimeError):
  """A problem found before training starts; the message names the file or field."""


@dataclasses.dataclass
class Model:
  """The static and abstract halves of a model: what jit and checkpoints need."""

  graphdef: nnx.GraphDef
  abstract_params: dict  # pure dict of ShapeDtypeStructs
  param_shardings: dict  # same structure, NamedShardings


def build_model(cfg: config_lib.ModelConfig, mesh, seed: int = 0) -> tuple[Model, callable]:
  """Shapes first: the abstract model and shardings, and a function creating its parameters.

  The returned `init()` is meant to run under `jax.jit(out_shardings=...)`, so each device
  materialises only its own shards; no device ever holds the whole model.
  """
  def create():
    with nnx.use_eager_sharding(False):
      return nnx.split(bert.BertForPreTraining(cfg, rngs=nnx.Rngs(params=seed)))

  with nnx.use_eager_sharding(False):
    graphdef, abstract_state = nnx.eval_shape(
        lambda: nnx.split(bert.BertForPreTraining(cfg, rngs=nnx.Rngs(params=seed))))
  shardings = sharding.param_shardings(abstract_state, mesh).to_pure_dict()

  def init():
    return create()[1].to_pure_dict()

  return Model(graphdef, abstract_state.to_pure_dict(), shardings), init


def state_shardings(model: Model, tx: optax.GradientTransformation, mesh):
  """TrainState of NamedShardings: optimizer moments sharded like their parameters."""
  abstract_opt = jax.eval_shape(tx.init, model.abstract_params)
  rep = sharding.replicated(mesh)
  # Leaves shaped like their parameter (Adam's moments) share its sharding; others (counts,
  # Adafactor's factored row/column statistics) are small and replicated.
  opt = optax.tree_map_params(
      tx, lambda leaf, s, p: s if leaf.shape == p.shape else rep, abstract_opt,
      model.param_shardings, model.abstract_params, transform_non_params=lambda _: rep)
  return TrainState(step=sharding.replicated(mesh), params=model.param_shardings,
                    opt_state=opt)


@dataclasses.dataclass
class Program:
  """What one config compiles to on one mesh: shardings and the jitted init, train, eval."""

  mesh: jax.sharding.Mesh
  model: Model
  tx: optax.GradientTransformation
  state_shardings: TrainState
  batch_sharding: jax.sharding.NamedSharding
  abstract_state: TrainState  # ShapeDtypeStructs carrying the target shardings
  init_state: callable  # () -> TrainState, created sharded
  state_from_params: callable  # params -> TrainState at step 0 with a fresh optimizer state
  train_step: callable  # (state, batch) -> (state, metrics); donates state
  eval_step: callable  # (params, batch) -> sums


def build_program(cfg: Config, mesh) -> Program:
  model, init_params = build_model(cfg.model, mesh, cfg.seed)
  schedule = optim.learning_rate_schedule(cfg.optim, cfg.train.num_steps)
  tx = optim.make_optimizer(cfg.optim, cfg.train.num_steps,
                            skip_nonfinite=cfg.train.nonfinite == "skip")
  state_sh = state_shardings(model, tx, mesh)
  batch_sh = sharding.batch_sharding(mesh)
  rep = sharding.replicated(mesh)

  def init_state():
    params = init_params()
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  return Program(
      mesh=mesh, model=model, tx=tx, state_shardings=state_sh, batch_sharding=batch_sh,
      abstract_state=ckpt_lib.abstract_like(jax.eval_shape(init_state), state_sh),
      init_state=jax.jit(init_state, out_shardings=state_sh),
      state_from_params=jax.jit(
          lambda params: TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                    opt_state=tx.init(params)),
          in_shardings=(state_sh.params,), out_shardings=state_sh),
      train_step=jax.jit(make_train_step(model.graphdef, tx, schedule, cfg.seed,
                                         cfg.train.microbatches),
                         in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, rep),
                         donate_argnums=0),
      eval_step=jax.jit(make_eval_step(model.graphdef),
                        in_shardings=(state_sh.params, batch_sh), out_shardings=rep))


def _check_data(cfg: Config, data: loader.PreparedData) -> None:
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
  if data.num_examples("train") < 1:
    raise TrainError(f"{data.directory}: the train split is empty")
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


def fetch(tree):
  """Host copies of replicated arrays; works when they span other processes' devices too."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def _to_device(batch: dict, batch_sharding) -> dict:
  return {k: jax.make_array_from_process_local_data(batch_sharding, v)
          for k, v in batch.items()}


def device_prefetch(batches, batch_sharding, size: int = 2):
  """Keeps `size` batches in flight to the devices while the current step runs."""
  queue = collections.deque()
  for batch in batches:
    queue.append(_to_device(batch, batch_sharding))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def _truncate_metrics(workdir: str, last_step: int) -> None:
  """Drops rows logged after `last_step` (from a run that died before its next checkpoint)."""
  path = os.path.join(workdir, "metrics.jsonl")
  rows = metrics_lib.read_metrics(workdir)
  kept = [r for r in rows if r["step"] <= last_step]
  if len(kept) != len(rows):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)
    os.replace(tmp, path)


class Preemption:
  """SIGTERM (a preemption notice): finish the current step, checkpoint it, exit 0.

  Several processes must stop at the same step: JAX's preemption sync point agrees on one
  (it exists only under `jax.distributed`, and installs its own SIGTERM handler). A single
  process listens for SIGTERM itself.
  """

  def __init__(self):
    self._requested = False
    self._multi = jax.process_count() > 1
    self._previous = None
    if not self._multi:
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self._requested = True

  def reached(self, step: int) -> bool:
    if self._multi:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._requested

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _mean_row(fetched: list[dict]) -> dict:
  """Means over a logging window; non-finite values (skipped updates) are left out."""
  row = {}
  for key in fetched[0]:
    values = np.asarray([m[key] for m in fetched], np.float64)
    finite = values[np.isfinite(values)]
    row[key] = float(finite.mean()) if finite.size else float("nan")
  return row


def _first_nonfinite(losses, first_step: int) -> int | None:
  bad = np.flatnonzero(~np.isfinite(np.asarray(losses, np.float64)))
  return int(first_step + bad[0]) if bad.size else None


def pretrain(cfg: Config, workdir: str, *, progress: bool = True) -> dict:
  """Trains to `cfg.train.num_steps`, resuming from the latest checkpoint in `workdir`.

  Returns the last logged metrics (train and eval), plus `stopped` when the run ended early
  ("preempted" or "early_stopping").
  """
  config_lib.validate(cfg)
  if not cfg.data.dir:
    raise ConfigError("config.data.dir is empty: point it at a `jaxpt prepare` output")
  data = loader.PreparedData.open(cfg.data.dir)
  mesh = sharding.make_mesh(cfg.mesh)
  _check_data(cfg, data)
  sharding.check_fits(cfg, mesh)
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  ckpt, t = cfg.checkpoint, cfg.train
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                       max_to_keep=ckpt.max_to_keep,
                                       async_save=ckpt.async_save)
  best_checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "best"), max_to_keep=1,
                                            async_save=ckpt.async_save)
  tokenizer_hash = data.manifest["tokenizer"]["hash"]
  if is_main:
    _copy_tokenizer(data, workdir)
  latest = checkpointer.latest_step()
  init_params = None
  if latest is None:
    init_params = _initial_params(cfg, workdir, data)
  program = build_program(cfg, mesh)
  saved_data: dict = {}
  if latest is not None:
    saved_data, saved_config = checkpointer.restore_metadata(latest)
    where = f"{checkpointer.directory}/{latest}"
    if saved_data.get("tokenizer_hash") != tokenizer_hash:
      raise TrainError(f"{where}: trained with tokenizer {saved_data.get('tokenizer_hash')}, "
                       f"but {data.directory} uses {tokenizer_hash}")
    problems = checkpointer.mismatches(latest, program.abstract_state)
    if problems:
      changed = [f"{section}.{k}" for section in ("model", "optim")
                 for k, v in dataclasses.asdict(getattr(cfg, section)).items()
                 if saved_config.get(section, {}).get(k) != v]
      raise TrainError(f"{where} does not fit this run ({', '.join(changed)} changed): "
                       f"{'; '.join(problems)}")

  with jax.set_mesh(mesh):
    if latest is None and init_params is not None:
      state = program.state_from_params(pretrained.place(init_params,
                                                         program.model.param_shardings))
    elif latest is None:
      state = program.init_state()
    else:
      state, _, _ = checkpointer.restore(latest, program.abstract_state)
  start_step = int(fetch(state.step))
  if latest is not None and is_main:
    _truncate_metrics(workdir, start_step)
  train_step, eval_step, batch_sh = program.train_step, program.eval_step, program.batch_sharding

  spec = data.masking_spec(cfg.data)
  rows = sharding.local_batch_rows(batch_sh, t.batch_size)
  if jax.process_count() > 1:
    print(f"jaxpt pretrain: process {jax.process_index()} of {jax.process_count()} reads rows "
          f"[{rows[0]}, {rows[1]}) of each global batch of {t.batch_size}", flush=True)
  train_batches = loader.batches(
      data.reader("train"), spec, batch_size=t.batch_size, seed=cfg.seed,
      start_step=start_step, read_threads=cfg.data.read_threads,
      prefetch=cfg.data.prefetch_batches, rows=rows)
  eval_set = _eval_batches(cfg, data, spec, batch_sh)

  n_params = bert.count_params(program.model.abstract_params)
  tokens_per_step = t.batch_size * data.seq_length
  flops_per_step = tokens_per_step * metrics_lib.flops_per_token(
      cfg.model, data.seq_length, spec.max_predictions)
  peak = metrics_lib.peak_flops(jax.devices()[0].device_kind, t.peak_flops_per_device)
  peak = peak * jax.device_count() if peak else None
  if is_main:
    print(f"jaxpt pretrain: {n_params / 1e6:.2f}M parameters, {jax.device_count()} "
          f"{jax.devices()[0].platform} device(s), mesh {dict(mesh.shape)}, "
          f"{data.num_examples('train')} train examples of {data.seq_length} tokens, "
          + (f"resuming at step {start_step}" if start_step else "starting at step 0"),
          flush=True)

  # Early stopping: the best eval/loss so far, and evaluations since it (kept in checkpoints).
  best_loss = saved_data.get("best_eval_loss", math.inf)
  since_best = saved_data.get("evals_since_best", 0)

  def data_item(step):
    return {"next_step": step, "seed": cfg.seed, "tokenizer_hash": tokenizer_hash,
            "best_eval_loss": best_loss, "evals_since_best": since_best}

  writer = metrics_lib.MetricWriter(workdir, enabled=is_main)
  bar = tqdm(total=t.num_steps, initial=start_step, disable=not (progress and is_main),
             unit="step", dynamic_ncols=True)
  meter = metrics_lib.Throughput()
  preemption = Preemption()
  pending: list[dict] = []
  last: dict = {}
  stopped = None
  step = start_step
  try:
    with jax.set_mesh(mesh):
      batches = device_prefetch(train_batches, batch_sh)
      while step < t.num_steps and stopped is None:
        state, step_metrics = train_step(state, next(batches))
        step += 1
        pending.append(step_metrics)
        meter.add(tokens_per_step)
        bar.update(1)
        is_last = step == t.num_steps
        if preemption.reached(step):
          stopped = "preempted"
        checkpoint_now = step % ckpt.every_steps == 0 or is_last or stopped
        row = {}
        if step % t.log_every_steps == 0 or is_last or checkpoint_now:
          # The only host sync of a logging interval; checkpoints also wait for it, so a
          # non-finite state is never saved.
          fetched = fetch(pending)
          first = step - len(pending) + 1
          pending = []
          if t.nonfinite == "abort":
            bad = _first_nonfinite([m["train/loss"] for m in fetched], first)
            if bad is None:
              bad = _first_nonfinite([m["train/grad_norm"] for m in fetched], first)
            if bad is not None:
              raise TrainError(f"step {bad}: the loss or gradient is not finite; stopped "
                               f"without saving it (last checkpoint: step "
                               f"{checkpointer.latest_step()}). --config.train.nonfinite=skip "
                               "skips such updates instead")
          elif fetched[-1]["train/nonfinite_in_a_row"] >= t.max_nonfinite_in_a_row:
            raise TrainError(f"step {step}: {int(fetched[-1]['train/nonfinite_in_a_row'])} "
                             "non-finite updates in a row were skipped; stopping")
          if step % t.log_every_steps == 0 or is_last or stopped:
            row = _mean_row(fetched)
            rate = meter.rate()
            row["perf/tokens_per_sec"] = rate
            row["perf/real_tokens_per_sec"] = rate * row["train/real_token_fraction"]
            if peak:
              row["perf/mfu"] = rate / tokens_per_step * flops_per_step / peak
            bar.set_postfix(loss=f"{row['train/loss']:.3f}", tok_s=f"{rate:.0f}",
                            refresh=False)
        if eval_set and not stopped and (
            (t.eval_every_steps and step % t.eval_every_steps == 0) or is_last):
          row.update(evaluate(eval_step, state.params, eval_set))
          meter.rate()  # evaluation time is not training throughput
          if row["eval/loss"] < best_loss - t.early_stopping_min_delta:
            best_loss, since_best = row["eval/loss"], 0
            best_checkpointer.save(step, state, data=data_item(step),
                                   config=config_lib.to_dict(cfg), force=True)
          else:
            since_best += 1
            if t.early_stopping_patience and since_best >= t.early_stopping_patience:
              stopped = "early_stopping"
              checkpoint_now = True
        if row:
          writer.write(step, row)
          last.update(row)
          last["step"] = step
        if checkpoint_now:
          checkpointer.save(step, state, config=config_lib.to_dict(cfg), data=data_item(step),
                            force=True)
  finally:
    preemption.close()
    bar.close()
    checkpointer.close()  # waits for the last save to commit
    best_checkpointer.close()
    writer.close()
  if stopped:
    last["stopped"] = stopped
  if not last:  # nothing to do: the run had already reached num_steps
    logged = metrics_lib.read_metrics(workdir)
    last = {k: v for r in logged for k, v in r.items()}
    if is_main:
      print(f"jaxpt pretrain: {workdir} already finished {start_step} of "
            f"{t.num_steps} steps; raise --config.train.num_steps to train further")
  if is_main and last:
    summary = ", ".join(f"{k}={last[k]:.4f}" for k in
                        ("train/mlm_loss", "eval/mlm_loss", "eval/mlm_accuracy") if k in last)
    why = {"preempted": " (SIGTERM: checkpointed, re-run to resume)",
           "early_stopping": f" (early stopping: no better eval/loss in "
                             f"{t.early_stopping_patience} evaluations)"}.get(stopped, "")
    print(f"jaxpt pretrain: step {step}{why}: {summary}\n"
          f"  metrics:     {os.path.join(workdir, 'metrics.jsonl')}\n"
          f"  tensorboard: {os.path.join(workdir, 'tensorboard')}\n"
          f"  checkpoints: {checkpointer.directory} (steps {checkpointer.all_steps()}); "
          f"best eval/loss: {best_checkpointer.directory} (step "
          f"{best_checkpointer.latest_step()})", flush=True)
  return last


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


def _initial_params(cfg: Config, workdir: str, data: loader.PreparedData) -> dict | None:
  """Host parameters to start from (`train.init_from`, or an import-hf workdir), checked
  against the config and the data's tokenizer before anything compiles; None: random init."""
  source = cfg.train.init_from
  if not source and os.path.exists(os.path.join(workdir, pretrained.MODEL_JSON)):
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


def _eval_batches(cfg: Config, data: loader.PreparedData, spec, batch_sh) -> list:
  """The held-out batches, fixed for the whole run (same order and masks at every eval).

  An eval batch is a training micro-batch: the size known to fit in memory.
  """
  n = data.num_examples("validation")
  if n == 0:
    log.warning("%s has no validation split; evaluation is skipped", data.directory)
    return []
  size = cfg.train.batch_size // cfg.train.microbatches
  count = min(cfg.train.eval_batches, max(1, n // size))
  it = loader.batches(data.reader("validation"), spec, batch_size=size, seed=cfg.seed + 1,
                      shuffle=False, read_threads=1, prefetch=1,
                      rows=sharding.local_batch_rows(batch_sh, size))
  return [_to_device(next(it), batch_sh) for _ in range(count)]


def evaluate(eval_step, params, eval_set: list) -> dict:
  total = None
  for batch in eval_set:
    sums = eval_step(params, batch)
    total = sums if total is None else jax.tree.map(jnp.add, total, sums)
  out = {k: float(v) for k, v in means(fetch(total), "eval").items()}
  out["eval/perplexity"] = float(math.exp(min(out["eval/mlm_loss"], 50.0)))
  return out


def dry_run(cfg: Config) -> dict:
  """Compiles the sharded train step for the configured mesh, without data or parameters.

  Sequence length: the prepared data's when `data.dir` is set, else
  `model.max_position_embeddings` (the most memory the model can need). Reports parameters,
  FLOPs per token and per-device memory of the compiled executable, so a user learns whether
  a model fits a chip before renting it. Works on fake CPU devices
  (XLA_FLAGS=--xla_force_host_platform_device_count=N).
  """
  config_lib.validate(cfg)
  if cfg.data.dir:
    data = loader.PreparedData.open(cfg.data.dir)
    _check_data(cfg, data)
    length = data.seq_length
  else:
    length = cfg.model.max_position_embeddings
  mesh = sharding.make_mesh(cfg.mesh)
  sharding.check_fits(cfg, mesh)
  program = build_program(cfg, mesh)
  preds = min(cfg.data.max_predictions_per_seq, length)
  b = cfg.train.batch_size
  shapes = {"input_ids": (b, length), "token_type_ids": (b, length),
            "attention_mask": (b, length), "masked_positions": (b, preds),
            "masked_ids": (b, preds), "masked_weights": (b, preds), "nsp_labels": (b,)}
  if cfg.data.dir and data.packed:
    k = int(data.manifest["options"]["max_sequences_per_row"])
    shapes.update(segment_ids=(b, length), cls_positions=(b, k), nsp_labels=(b, k))
  batch = {k: jax.ShapeDtypeStruct(v, jnp.float32 if k == "masked_weights" else jnp.int32,
                                   sharding=program.batch_sharding) for k, v in shapes.items()}
  start = time.perf_counter()
  with jax.set_mesh(mesh):
    compiled = program.train_step.lower(program.abstract_state, batch).compile()
  seconds = time.perf_counter() - start
  mem = compiled.memory_analysis()
  report = {
      "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
      "mesh": dict(mesh.shape),
      "parameters": bert.count_params(program.model.abstract_params),
      "seq_length": length,
      "batch_size": b,
      "microbatches": cfg.train.microbatches,
      "flops_per_token": metrics_lib.flops_per_token(cfg.model, length, preds),
      "compile_seconds": round(seconds, 1),
  }
  if mem is not None:
    report["per_device_bytes"] = {
        "arguments": int(mem.argument_size_in_bytes),
        "outputs": int(mem.output_size_in_bytes),
        "temporaries": int(mem.temp_size_in_bytes),
        "aliased (donated)": int(mem.alias_size_in_bytes),
        "peak estimate": int(mem.argument_size_in_bytes + mem.output_size_in_bytes
                             + mem.temp_size_in_bytes - mem.alias_size_in_bytes),
    }
  return report


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
