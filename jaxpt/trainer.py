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
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from jaxpt import checkpoint as ckpt_lib
from jaxpt import config as config_lib
from jaxpt import metrics as metrics_lib
from jaxpt import optim, sharding
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
  opt = optax.tree_map_params(tx, lambda _, s: s, abstract_opt, model.param_shardings,
                              transform_non_params=lambda _: sharding.replicated(mesh))
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
  train_step: callable  # (state, batch) -> (state, metrics); donates state
  eval_step: callable  # (params, batch) -> sums


def build_program(cfg: Config, mesh) -> Program:
  model, init_params = build_model(cfg.model, mesh, cfg.seed)
  schedule = optim.learning_rate_schedule(cfg.optim, cfg.train.num_steps)
  tx = optim.make_optimizer(cfg.optim, cfg.train.num_steps)
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


def pretrain(cfg: Config, workdir: str, *, progress: bool = True) -> dict:
  """Trains to `cfg.train.num_steps`, resuming from the latest checkpoint in `workdir`.

  Returns the last logged metrics (train and eval).
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
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                       max_to_keep=cfg.checkpoint.max_to_keep,
                                       async_save=cfg.checkpoint.async_save)
  tokenizer_hash = data.manifest["tokenizer"]["hash"]
  latest = checkpointer.latest_step()
  if latest is not None:
    saved_data, saved_config = checkpointer.restore_metadata(latest)
    if saved_data.get("tokenizer_hash") != tokenizer_hash:
      raise TrainError(
          f"{checkpointer.directory}/{latest}: trained with tokenizer "
          f"{saved_data.get('tokenizer_hash')}, but {data.directory} uses {tokenizer_hash}")
    if saved_config.get("model") != dataclasses.asdict(cfg.model):
      changed = sorted(k for k, v in dataclasses.asdict(cfg.model).items()
                       if saved_config.get("model", {}).get(k) != v)
      raise TrainError(f"{checkpointer.directory}/{latest}: saved with a different model "
                       f"config (model.{', model.'.join(changed)} differ)")

  program = build_program(cfg, mesh)
  with jax.set_mesh(mesh):
    if latest is None:
      state = program.init_state()
    else:
      state, _, _ = checkpointer.restore(latest, program.abstract_state)
  start_step = int(fetch(state.step))
  if latest is not None and is_main:
    _truncate_metrics(workdir, start_step)
  train_step, eval_step, batch_sh = program.train_step, program.eval_step, program.batch_sharding

  spec = data.masking_spec(cfg.data)
  rows = sharding.local_batch_rows(batch_sh, cfg.train.batch_size)
  train_batches = loader.batches(
      data.reader("train"), spec, batch_size=cfg.train.batch_size, seed=cfg.seed,
      start_step=start_step, read_threads=cfg.data.read_threads,
      prefetch=cfg.data.prefetch_batches, rows=rows)
  eval_set = _eval_batches(cfg, data, spec, batch_sh)

  n_params = bert.count_params(program.model.abstract_params)
  tokens_per_step = cfg.train.batch_size * data.seq_length
  if is_main:
    print(f"jaxpt pretrain: {n_params / 1e6:.2f}M parameters, {jax.device_count()} "
          f"{jax.devices()[0].platform} device(s), mesh {dict(mesh.shape)}, "
          f"{data.num_examples('train')} train examples of {data.seq_length} tokens, "
          + (f"resuming at step {start_step}" if start_step else "starting at step 0"),
          flush=True)

  writer = metrics_lib.MetricWriter(workdir, enabled=is_main)
  bar = tqdm(total=cfg.train.num_steps, initial=start_step, disable=not (progress and is_main),
             unit="step", dynamic_ncols=True)
  meter = metrics_lib.Throughput()
  pending: list[dict] = []
  last: dict = {}
  step = start_step
  with jax.set_mesh(mesh):
    batches = device_prefetch(train_batches, batch_sh)
    while step < cfg.train.num_steps:
      state, step_metrics = train_step(state, next(batches))
      step += 1
      pending.append(step_metrics)
      meter.add(tokens_per_step)
      bar.update(1)
      is_last = step == cfg.train.num_steps
      row = {}
      if step % cfg.train.log_every_steps == 0 or is_last:
        fetched = fetch(pending)  # the only host sync of a logging interval
        pending = []
        row = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
        row["perf/tokens_per_sec"] = meter.rate()
        if not math.isfinite(row["train/loss"]):
          raise TrainError(f"step {step}: train/loss is {row['train/loss']}; stopping "
                           "without saving a non-finite state")
        bar.set_postfix(loss=f"{row['train/loss']:.3f}",
                        tok_s=f"{row['perf/tokens_per_sec']:.0f}", refresh=False)
      if eval_set and ((cfg.train.eval_every_steps
                        and step % cfg.train.eval_every_steps == 0) or is_last):
        row.update(evaluate(eval_step, state.params, eval_set))
        meter.rate()  # evaluation time is not training throughput
      if row:
        writer.write(step, row)
        last.update(row)
        last["step"] = step
      if step % cfg.checkpoint.every_steps == 0 or is_last:
        unlogged = fetch([m["train/loss"] for m in pending])
        if not np.isfinite(unlogged).all():
          raise TrainError(f"step {step}: train/loss is not finite; stopping without saving "
                           "a non-finite state")
        checkpointer.save(step, state, config=config_lib.to_dict(cfg),
                          data={"next_step": step, "seed": cfg.seed,
                                "tokenizer_hash": tokenizer_hash},
                          force=is_last)
  bar.close()
  checkpointer.close()
  writer.close()
  if not last:  # nothing to do: the run had already reached num_steps
    logged = metrics_lib.read_metrics(workdir)
    last = {k: v for r in logged for k, v in r.items()}
    if is_main:
      print(f"jaxpt pretrain: {workdir} already finished {start_step} of "
            f"{cfg.train.num_steps} steps; raise --config.train.num_steps to train further")
  if is_main and last:
    summary = ", ".join(f"{k}={last[k]:.4f}" for k in
                        ("train/mlm_loss", "eval/mlm_loss", "eval/mlm_accuracy") if k in last)
    print(f"jaxpt pretrain: step {step}: {summary}\n"
          f"  metrics:     {os.path.join(workdir, 'metrics.jsonl')}\n"
          f"  tensorboard: {os.path.join(workdir, 'tensorboard')}\n"
          f"  checkpoints: {checkpointer.directory} (steps {checkpointer.all_steps()})",
          flush=True)
  return last


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
