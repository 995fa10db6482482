"""The one training loop: sharded state, the jitted step, batches, logs, evaluation, early
stopping, checkpoints, preemption and resume, for every task.

A task (`jaxpt.tasks.pretraining`, `jaxpt.tasks.classification`) supplies what differs: the
model, its objective, the batches of a step, the evaluation and the metric that picks the best
checkpoint. Everything here has one meaning for all of them:

- `train.log_every_steps`: the only host sync of an interval (besides the bound below);
- `train.eval_every_steps` (0: only at the end), early stopping on the task's best metric with
  `early_stopping_patience` and `early_stopping_min_delta`, the best checkpoint in WORKDIR/best;
- `train.microbatches`, `train.nonfinite` (abort | skip), `checkpoint.every_steps`;
- the host runs at most `train.max_steps_in_flight` steps ahead of the devices, so SIGTERM (and
  a first Ctrl-C) checkpoints within that many steps of the signal; the progress bar counts
  finished steps;
- resume: the latest readable checkpoint is restored (an unreadable one is set aside, saying
  why), a best checkpoint past it is dropped, and the config is compared with the saved one.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import signal
import time
from typing import Any, Callable, Iterator, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from tqdm import tqdm

from jaxpt import config as config_lib
from jaxpt import optim, sharding
from jaxpt.config import Config
from jaxpt.data import loader
from jaxpt.data.store import StoreError
from jaxpt.errors import UserError
from jaxpt.models import params as params_lib
from jaxpt.train import checkpoint as ckpt_lib
from jaxpt.train import metrics as metrics_lib
from jaxpt.train.step import Objective, TrainState, make_train_step


class TrainError(UserError, RuntimeError):
  """A problem that stops a run before or during training; the message names the file, field
  or step."""


class Task(Protocol):
  """What a task gives the loop (attributes set before `run`)."""

  cfg: Config
  command: str  # "pretrain" | "finetune": names the run in messages
  objective: Objective
  num_steps: int  # of the run (its learning-rate schedule)
  # This call of `run` ends after this step (num_steps, or the end of a phase: `phase` counts
  # them from 0; `new_data`: the phase reads other data than the one before, from its start).
  stop_step: int
  phase: int
  new_data: bool
  eval_every_steps: int  # 0: only at the end
  best_metric: str  # a key of `evaluate`'s result, e.g. "eval/loss"
  higher_is_better: bool
  description: str  # the data, for the line that starts a run
  flops_per_token: float  # training matmul FLOPs per token, for MFU

  def create_model(self, rngs: nnx.Rngs) -> nnx.Module: ...

  def initial_params(self) -> dict | None:
    """Host parameters to start from (all of them, or some top-level entries); None: random."""

  def train_batches(self, start_step: int, first_example: int,
                    rows: tuple[int, int]) -> Iterator[dict]:
    """Host batches from `start_step` on; batch `start_step` begins at example `first_example`
    of the epoch stream; only rows [rows) of each global batch."""

  def prepare_eval(self, program: "Program") -> None: ...

  def evaluate(self, params) -> dict: ...

  def data_identity(self) -> dict:
    """What the checkpoint stores about the data, and `check_resume` compares."""

  # ((first step, global batch size), ...): ((0, train.batch_size),) unless the batch warms up
  batch_phases: tuple

  def data_metrics(self, first_row: int, stop_row: int) -> dict:
    """Host-side figures about rows [first_row, stop_row) of the example stream (a mixture's
    `data/fraction/NAME`), logged with the train metrics."""

  def check_resume(self, saved: dict, where: str) -> None: ...


# ---------------------------------------------------------------------------------------------
# Shapes, shardings and the compiled program.


@dataclasses.dataclass
class Model:
  """The static and abstract halves of a model: what jit and checkpoints need."""

  graphdef: nnx.GraphDef
  abstract_params: dict  # pure dict of ShapeDtypeStructs
  param_shardings: dict  # same structure, NamedShardings


def build_model(create: Callable[[nnx.Rngs], nnx.Module], mesh, seed: int = 0):
  """Shapes first: the abstract model and shardings, and a function creating its parameters.

  The returned `init()` is meant to run under `jax.jit(out_shardings=...)`, so each device
  materialises only its own shards; no device ever holds the whole model.
  """
  def split():
    with nnx.use_eager_sharding(False):
      return nnx.split(create(nnx.Rngs(params=seed)))

  with nnx.use_eager_sharding(False):
    graphdef, abstract_state = nnx.eval_shape(split)
  shardings = sharding.param_shardings(abstract_state, mesh).to_pure_dict()
  model = Model(graphdef, abstract_state.to_pure_dict(), shardings)
  return model, lambda: nnx.state(split()[1], nnx.Param).to_pure_dict()


def state_shardings(model: Model, tx: optax.GradientTransformation, mesh,
                    ema: bool = False) -> TrainState:
  """TrainState of NamedShardings: optimizer moments sharded like their parameters."""
  abstract_opt = jax.eval_shape(tx.init, model.abstract_params)
  rep = sharding.replicated(mesh)
  # Leaves shaped like their parameter (Adam's moments) share its sharding; others (counts,
  # Adafactor's factored row/column statistics) are small and replicated.
  opt = optax.tree_map_params(
      tx, lambda leaf, s, p: s if leaf.shape == p.shape else rep, abstract_opt,
      model.param_shardings, model.abstract_params, transform_non_params=lambda _: rep)
  return TrainState(step=sharding.replicated(mesh), params=model.param_shardings,
                    opt_state=opt, ema=model.param_shardings if ema else None)


@dataclasses.dataclass
class Program:
  """What one task compiles to on one mesh: shardings and the jitted init and train step."""

  mesh: jax.sharding.Mesh
  model: Model
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  state_shardings: TrainState
  batch_sharding: jax.sharding.NamedSharding
  abstract_state: TrainState  # ShapeDtypeStructs carrying the target shardings
  init_state: Callable  # (given params or None) -> TrainState at step 0, created sharded
  train_step: Callable  # (state, batch) -> (state, metrics); donates state


def _merge(base: dict, given: dict) -> dict:
  """`base` with the entries `given` has replaced, recursively (the rest stays `base`'s)."""
  out = dict(base)
  for k, v in given.items():
    out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
  return out


def _subtree(tree, like):
  """The part of `tree` with `like`'s structure (`like`: a subtree of nested dict keys)."""
  if not isinstance(like, dict):
    return tree
  return {k: _subtree(tree[k], v) for k, v in like.items()}


def build_program(task: Task, mesh, schedule_segments=()) -> Program:
  cfg = task.cfg
  model, random_params = build_model(task.create_model, mesh, cfg.seed)
  first_num_steps = schedule_segments[0][1] if schedule_segments else task.num_steps
  schedule = resumed_schedule(optim.learning_rate_schedule(cfg.optim, first_num_steps),
                              schedule_segments)
  tx = optim.make_optimizer(cfg.optim, schedule, skip_nonfinite=cfg.train.nonfinite == "skip",
                            prunable=params_lib.prunable)
  ema_decay = cfg.optim.ema_decay
  state_sh = state_shardings(model, tx, mesh, ema=ema_decay > 0)
  batch_sh = sharding.batch_sharding(mesh)
  rep = sharding.replicated(mesh)

  def fresh(params):
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      ema=params if ema_decay > 0 else None)

  abstract = jax.eval_shape(lambda: fresh(random_params()))
  compiled_init = {}

  def init_state(given: dict | None = None) -> TrainState:
    if given is None:
      if None not in compiled_init:
        compiled_init[None] = jax.jit(lambda: fresh(random_params()), out_shardings=state_sh)
      return compiled_init[None]()
    given_sh = _subtree(model.param_shardings, given)
    placed = sharding.place(given, given_sh)
    init = jax.jit(lambda g: fresh(_merge(random_params(), g)), in_shardings=(given_sh,),
                   out_shardings=state_sh)
    return init(placed)

  return Program(
      mesh=mesh, model=model, tx=tx, schedule=schedule, state_shardings=state_sh,
      batch_sharding=batch_sh, abstract_state=ckpt_lib.abstract_like(abstract, state_sh),
      init_state=init_state,
      train_step=jax.jit(make_train_step(model.graphdef, tx, schedule, cfg.seed, task.objective,
                                         cfg.train.microbatches, ema_decay),
                         in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, rep),
                         donate_argnums=0))


def resumed_schedule(base: optax.Schedule, segments) -> optax.Schedule:
  """`base` with its remaining steps stretched at each resume that changed `num_steps`.

  `base` is the schedule of the run's first `num_steps`, N0. `segments` lists
  [resume_step, old_num_steps, new_num_steps] in order; from resume_step r on, step t runs at
  the base time origin + (t - r) * (N0 - origin) / (new_num_steps - r), where origin is the
  base time reached at r. The learning rate is continuous at each resume and reaches the end
  value at the new last step.
  """
  if not segments:
    return base
  n0 = float(segments[0][1])
  pieces = []  # (resume step, base time there, base time per step after it)
  origin, previous = None, None
  for resume, _, new in segments:
    if previous is None:
      origin = float(resume)
    else:
      p_resume, p_origin, p_scale = previous
      origin = p_origin + (resume - p_resume) * p_scale
    previous = (float(resume), origin, (n0 - origin) / max(new - resume, 1))
    pieces.append(previous)

  def schedule(step):
    t = jnp.asarray(step, jnp.float32)
    mapped = t
    for resume, origin, scale in pieces:
      mapped = jnp.where(t >= resume, origin + (t - resume) * scale, mapped)
    return base(mapped)

  return schedule


# ---------------------------------------------------------------------------------------------
# Host-side helpers.


def fetch(tree):
  """Host copies of replicated arrays; works when they span other processes' devices too."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def to_device(batch: dict, batch_sharding) -> dict:
  return {k: jax.make_array_from_process_local_data(batch_sharding, v)
          for k, v in batch.items()}


def device_prefetch(batches, batch_sharding, size: int = 2):
  """Keeps `size` batches in flight to the devices while the current step runs."""
  queue = collections.deque()
  for batch in batches:
    queue.append(to_device(batch, batch_sharding))
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


class Stop:
  """SIGTERM (a preemption notice) and a first Ctrl-C: checkpoint soon, then stop.

  Several processes must stop at the same step: JAX's preemption sync point agrees on one
  (it exists only under `jax.distributed`, and installs its own SIGTERM handler). A single
  process listens for SIGTERM and SIGINT itself; a second SIGINT raises KeyboardInterrupt.
  """

  def __init__(self):
    self.reason = None
    self._multi = jax.process_count() > 1
    self._previous = {}
    if not self._multi:
      self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._handle)
      self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._handle)

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self.reason == "interrupted":
      raise KeyboardInterrupt
    self.reason = "preempted" if signum == signal.SIGTERM else "interrupted"

  def reached(self, step: int) -> str | None:
    if self._multi:
      return "preempted" if multihost_utils.reached_preemption_sync_point(step) else None
    return self.reason

  def close(self) -> None:
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)


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


# ---------------------------------------------------------------------------------------------
# Resume: which fields may change, and reading the newest readable checkpoint.

# Changing these between a checkpoint and its resume is safe; each is listed when it changes.
SAFE_TO_CHANGE = (
    "train.num_steps", "train.log_every_steps", "train.eval_every_steps", "train.eval_batches",
    "train.early_stopping_patience", "train.early_stopping_min_delta", "train.nonfinite",
    "train.max_nonfinite_in_a_row", "train.peak_flops_per_device", "train.init_from",
    "train.microbatches", "train.max_steps_in_flight", "train.allow_config_change",
    "checkpoint.every_steps", "checkpoint.max_to_keep", "checkpoint.async_save",
    # The learning-rate schedule: asked for by the user, so applied as given (only a changed
    # num_steps is made continuous, by `resumed_schedule`).
    "optim.learning_rate", "optim.warmup_steps", "optim.schedule", "optim.power",
    "optim.decay_fraction", "optim.decay_steps", "optim.decay_shape", "train.branch_from",
    "optim.end_learning_rate_fraction", "optim.grad_clip_norm", "model.dtype", "model.remat",
    "model.kernels",
    "data.dir", "data.prefetch_batches", "data.read_threads", "mesh.data", "mesh.fsdp",
    "mesh.tensor", "finetune.epochs", "finetune.eval_every_epochs", "finetune.too_long",
    "finetune.min_steps", "finetune.evaluations", "finetune.warmup_fraction",
    "finetune.length_buckets",
)


def _flat_config(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat_config(v, f"{prefix}{k}."))
    else:
      out[prefix + k] = v
  return out


def config_changes(saved: dict, current: dict, allowed: tuple[str, ...]):
  """(refused, listed): fields whose value changed, as 'field: saved -> current'."""
  old, new = _flat_config(saved), _flat_config(current)
  refused, listed = [], []
  for name in sorted(set(old) & set(new)):
    if old[name] == new[name]:
      continue
    change = f"{name}: {old[name]!r} -> {new[name]!r}"
    (listed if name in SAFE_TO_CHANGE or name in allowed else refused).append(change)
  return refused, listed


def _allowed_changes(cfg: Config) -> tuple[str, ...]:
  return tuple(s.strip() for s in cfg.train.allow_config_change.split(",") if s.strip())


@dataclasses.dataclass
class Resumed:
  state: TrainState | None
  data: dict
  config: dict


class _Unreadable(Exception):
  """A checkpoint file that could not be read; the message is the reason, in one line."""


def _readable(read):
  """read(), any failure of it re-raised as _Unreadable. Only the reads go through this: a
  check that fails after a good read (a config that does not fit) is not "unreadable"."""
  try:
    return read()
  except Exception as e:  # noqa: BLE001 (any reason a file cannot be read)
    raise _Unreadable(ckpt_lib.describe_error(e)) from None


def _json_items(items: tuple) -> tuple:
  data, saved = items
  if not isinstance(data, dict) or not isinstance(saved, dict):
    raise ValueError("the data or config item is not a JSON object")
  return data, saved


def _restore_state(checkpointer, step: int, program) -> TrainState:
  with jax.set_mesh(program.mesh):
    state, _, _ = checkpointer.restore(step, program.abstract_state)
  return state


def _read_latest(task: Task, mesh, checkpointer, workdir: str, say) -> tuple:
  """(program, Resumed, schedule segments) from the newest readable checkpoint, or
  (program, None, []) for none.

  An unreadable step is set aside (moved to WORKDIR/unreadable/) once an older one has been
  read; with no readable step nothing is touched and the run stops.
  """
  cfg = task.cfg
  unreadable = []
  for step in sorted(checkpointer.all_steps(), reverse=True):
    where = f"{checkpointer.directory}/{step}"
    try:
      data, saved = _readable(lambda: _json_items(checkpointer.restore_metadata(step)))
      segments = schedule_segments(data.get("schedule_segments", []),
                                   int(data.get("num_steps", 0)), step, task.num_steps)
      program = build_program(task, mesh, segments)
      # the state's own metadata file (shapes) may be the damaged one
      problems = _readable(lambda: checkpointer.mismatches(step, program.abstract_state))
      if problems:
        changed = [f"{section}.{k}" for section in ("model", "optim")
                   for k, v in dataclasses.asdict(getattr(cfg, section)).items()
                   if saved.get(section, {}).get(k) != v]
        raise TrainError(f"{where} does not fit this run"
                         + (f" ({', '.join(changed)} changed)" if changed else "")
                         + f": {'; '.join(problems)}")
      _check_config(task, saved, data, where)
      task.check_resume(data, where)
      state = _readable(lambda: _restore_state(checkpointer, step, program))
    except _Unreadable as e:
      unreadable.append((step, str(e)))
      say(f"{where} is unreadable: {e}")
      continue
    if unreadable:
      _sync("jaxpt_set_aside")
      if jax.process_index() == 0:
        for bad, _ in unreadable:
          moved = ckpt_lib.set_aside(checkpointer.directory, bad, workdir)
          say(f"{checkpointer.directory}/{bad} moved to {moved}")
      _sync("jaxpt_set_aside_done")
      checkpointer.reload()
      say(f"resuming from {where}, the newest readable checkpoint")
    return program, Resumed(state, data, saved), segments
  if unreadable:
    raise TrainError(f"{checkpointer.directory}: no readable checkpoint ("
                     + "; ".join(f"step {s}: {r}" for s, r in unreadable)
                     + "); nothing was changed. Move them away to start from scratch")
  if cfg.train.branch_from:
    return _read_branch(task, mesh, say)
  return build_program(task, mesh), None, []


def branch_source(spec: str) -> tuple[str, int | None]:
  """`train.branch_from`'s (checkpoint directory, step or None for the latest)."""
  run, sep, step = spec.rpartition(":")
  if not sep or not step.isdigit():
    run, step = spec, ""
  return os.path.join(run, "checkpoints"), (int(step) if step else None)


def _read_branch(task: Task, mesh, say) -> tuple:
  """(program, Resumed, []) from `train.branch_from`'s checkpoint, its schedule history and
  best-checkpoint record dropped: this run's schedule is its own config's."""
  spec = task.cfg.train.branch_from
  directory, step = branch_source(spec)
  if not os.path.isdir(directory):
    raise TrainError(f"config.train.branch_from={spec}: {directory} does not exist")
  source = ckpt_lib.Checkpointer(directory, max_to_keep=1, async_save=False)
  try:
    steps = source.all_steps()
    step = max(steps) if step is None and steps else step
    if step is None or step not in steps:
      raise TrainError(f"config.train.branch_from={spec}: no checkpoint at step "
                       f"{step} in {directory} (steps: {sorted(steps)})")
    where = f"{directory}/{step}"
    try:
      data, saved = _readable(lambda: _json_items(source.restore_metadata(step)))
      schedule = saved.get("optim", {}).get("schedule")
      if schedule != "wsd":
        raise TrainError(f"config.train.branch_from={spec}: {where} was trained with "
                         f"optim.schedule={schedule!r}; a decay branches off the stable "
                         "phase of a wsd run")
      program = build_program(task, mesh)
      problems = _readable(lambda: source.mismatches(step, program.abstract_state))
      if problems:
        raise TrainError(f"{where} does not fit this run: {'; '.join(problems)}")
      _check_config(task, saved, data, where)
      task.check_resume(data, where)
      state = _readable(lambda: _restore_state(source, step, program))
    except _Unreadable as e:
      raise TrainError(f"config.train.branch_from={spec}: {where} is unreadable: {e}") from None
  finally:
    source.close()
  if step >= task.num_steps:
    raise TrainError(f"config.train.branch_from={spec}: step {step} is not before "
                     f"train.num_steps={task.num_steps}")
  say(f"branched from {where}; this run's schedule from step {step} on")
  data = {k: v for k, v in data.items()
          if k not in ("schedule_segments", "best", "evals_since_best")}
  data["num_steps"] = task.num_steps
  return program, Resumed(state, data, saved), []


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def schedule_segments(saved: list, previous: int, step: int, num_steps: int) -> list:
  """The schedule history of a run resumed at `step`, whose checkpoint had `saved` segments
  and was to end at `previous` steps, now to end at `num_steps` (see `resumed_schedule`)."""
  segments = [list(s) for s in saved]
  # A run stopped before its end continues its decay, stretched or shrunk to the new end; a
  # finished run (its decay done) that is extended takes the new num_steps' schedule.
  if previous and previous != num_steps and step < min(previous, num_steps):
    if not segments:
      segments.append([0, previous, previous])
    segments.append([step, previous, num_steps])
  return segments


def _check_config(task: Task, saved: dict, data: dict, where: str) -> None:
  cfg = task.cfg
  if "seed" in data and data["seed"] != cfg.seed and "seed" not in _allowed_changes(cfg):
    raise TrainError(f"{where}: seed: checkpoint {data['seed']}, config {cfg.seed}; the data "
                     "order, masking and dropout would change (--config.train."
                     "allow_config_change=seed to accept)")
  refused, listed = config_changes(saved, config_lib.to_dict(cfg), _allowed_changes(cfg))
  if refused:
    raise TrainError(
        f"{where}: the config changed in fields that change the data stream or the model: "
        + "; ".join(refused) + ". Use the saved values, a new --workdir, or "
        "--config.train.allow_config_change=" + ",".join(c.split(":")[0] for c in refused))
  if listed and jax.process_index() == 0:
    print(f"jaxpt {task.command}: config changed since {where}: " + "; ".join(listed),
          flush=True)


# ---------------------------------------------------------------------------------------------
# The loop.


def run(task: Task, workdir: str, *, progress: bool = True) -> dict:
  """Trains `task` to `task.num_steps`, resuming from the newest readable checkpoint in
  `workdir`. Returns the last logged metrics, plus `step`, `best_step` and `stopped` when the
  run ended early ("preempted", "interrupted" or "early_stopping")."""
  cfg = task.cfg
  is_main = jax.process_index() == 0
  mesh = sharding.make_mesh(cfg.mesh)
  sharding.check_fits(cfg, mesh)

  def say(message: str) -> None:
    if is_main:
      print(f"jaxpt {task.command}: {message}", flush=True)

  lock = ckpt_lib.WorkdirLock(workdir)
  failure = ""
  if is_main:
    try:
      os.makedirs(workdir, exist_ok=True)
      note = lock.acquire()
      if note:
        say(note)
    except ckpt_lib.LockError as e:
      failure = str(e)
    except OSError as e:  # a read-only or missing parent, no permission
      failure = f"{e.filename or workdir}: {e.strerror or e}; a run needs a writable workdir"
  if jax.process_count() > 1:
    held = multihost_utils.broadcast_one_to_all(np.int32(0 if failure else 1))
    if not int(held):
      failure = failure or f"{workdir} is in use by another run"
  if failure:
    raise TrainError(failure)
  try:
    return _run_locked(task, workdir, mesh, say, progress)
  finally:
    lock.release()


def _run_locked(task: Task, workdir: str, mesh, say, progress: bool) -> dict:
  ck = task.cfg.checkpoint
  is_main = jax.process_index() == 0
  ckpt_dir, best_dir = os.path.join(workdir, "checkpoints"), os.path.join(workdir, "best")
  if is_main:
    for directory in (ckpt_dir, best_dir):
      for path in ckpt_lib.remove_partial_saves(directory):
        say(f"removed {path}, a save that never finished")
  _sync("jaxpt_cleaned")
  checkpointer = ckpt_lib.Checkpointer(ckpt_dir, max_to_keep=ck.max_to_keep,
                                       async_save=ck.async_save)
  best_checkpointer = ckpt_lib.Checkpointer(best_dir, max_to_keep=1, async_save=ck.async_save)
  managers = (checkpointer, best_checkpointer)
  try:
    with ckpt_lib.orbax_silenced():  # save failures are reported as SaveError
      result = _train(task, workdir, mesh, say, progress, checkpointer, best_checkpointer)
      for manager in managers:
        manager.close()  # waits for the last save to commit
    return result
  except ckpt_lib.SaveError as e:
    # Orbax's abandoned write tasks repeat the same failure as the process ends (asyncio's
    # logger, other threads' tracebacks): the one line below has said it.
    ckpt_lib.quiet_abandoned_writers()
    raise TrainError(f"{e}; stopped (last complete checkpoint: {_latest(checkpointer)})") from None
  finally:
    for manager in managers:  # after an error: release, without hiding it
      try:
        manager.close()
      except ckpt_lib.SaveError:
        pass
    if is_main:  # a failed save leaves its temporary directory
      for directory in (ckpt_dir, best_dir):
        ckpt_lib.remove_partial_saves(directory)


def _train(task, workdir, mesh, say, progress, checkpointer, best_checkpointer) -> dict:
  cfg = task.cfg
  t, ck = cfg.train, cfg.checkpoint
  is_main = jax.process_index() == 0
  init_params = task.initial_params() if checkpointer.latest_step() is None else None

  program, resumed, segments = _read_latest(task, mesh, checkpointer, workdir, say)
  saved = resumed.data if resumed else {}
  with jax.set_mesh(mesh):
    state = resumed.state if resumed else program.init_state(init_params)
  start_step = int(fetch(state.step))
  if is_main and resumed:
    _truncate_metrics(workdir, start_step)
  ahead = [s for s in best_checkpointer.all_steps() if s > start_step]
  if ahead:
    _sync("jaxpt_best_ahead")
    if is_main:
      for s in ahead:
        best_checkpointer.delete(s)
    say(f"dropped {best_checkpointer.directory}/{', '.join(map(str, ahead))}: past the "
        f"restored step {start_step} (a run stopped between its two saves)")
    _sync("jaxpt_best_ahead_done")
    best_checkpointer.reload()

  say(f"{count_params(program.model.abstract_params) / 1e6:.2f}M parameters, "
      f"{jax.device_count()} {jax.devices()[0].platform} device(s), mesh {dict(mesh.shape)}, "
      f"{task.description}, {task.num_steps} steps, "
      + (f"resuming at step {start_step}" if start_step else "starting at step 0"))
  task.prepare_eval(program)
  batch_sh = program.batch_sharding
  rows = sharding.local_batch_rows(batch_sh, t.batch_size)
  if jax.process_count() > 1:
    print(f"jaxpt {task.command}: process {jax.process_index()} of {jax.process_count()} "
          f"reads rows [{rows[0]}, {rows[1]}) of each global batch of {t.batch_size}",
          flush=True)
  phases = task.batch_phases
  first_example = int(saved.get("next_example", loader.stream_rows(phases, 0, start_step)))
  entering = bool(resumed) and int(saved.get("phase", 0)) != task.phase
  if entering:  # the first step of a phase: its data from the start; its own best
    say(f"phase {task.phase} from step {start_step}"
        + (": new data, read from its first example" if task.new_data else ""))
    if task.new_data:
      first_example = 0
    saved = {k: v for k, v in saved.items() if k not in ("best", "evals_since_best")}
  host_batches = _checked(task.train_batches(start_step, first_example, rows), start_step)

  peak = metrics_lib.peak_flops(jax.devices()[0].device_kind, t.peak_flops_per_device)
  peak = peak * jax.device_count() if peak else None
  sign = 1.0 if task.higher_is_better else -1.0
  best_value = saved.get("best", saved.get("best_eval_loss"))
  best_value = -sign * math.inf if best_value is None else float(best_value)
  since_best = int(saved.get("evals_since_best", 0))
  best_step = best_checkpointer.latest_step()

  def data_row(step):  # where batch `step` begins in the example stream
    return first_example + loader.stream_rows(phases, start_step, step)

  def data_item(step):
    return {"next_step": step, "seed": cfg.seed, "num_steps": task.num_steps,
            "next_example": data_row(step),
            "schedule_segments": segments, "best": best_value,
            "evals_since_best": since_best, "best_metric": task.best_metric,
            "phase": task.phase, **task.data_identity()}

  config_dict = config_lib.to_dict(cfg)
  writer = metrics_lib.MetricWriter(workdir, enabled=is_main)
  bar = tqdm(total=task.num_steps, initial=start_step, disable=not (progress and is_main),
             unit="step", dynamic_ncols=True)
  meter = metrics_lib.Throughput()
  stop = Stop()
  pending: list[dict] = []  # metrics since the last log, on the devices
  in_flight: collections.deque = collections.deque()
  wrote_a_row = False  # the first row of this run records where it began
  last: dict = {}
  stopped = None
  step = logged_step = start_step
  try:
    with jax.set_mesh(mesh):
      batches = device_prefetch(host_batches, batch_sh)
      while step < task.stop_step and stopped is None:
        batch = next(batches)
        state, step_metrics = program.train_step(state, batch)
        step += 1
        pending.append(step_metrics)
        in_flight.append(step_metrics["train/loss"])
        while len(in_flight) > t.max_steps_in_flight:
          in_flight.popleft().block_until_ready()
          bar.update(1)
        meter.add(batch["input_ids"].size)  # a static shape: fine-tuning's vary by bucket
        is_last = step == task.stop_step
        stopped = stop.reached(step)
        checkpoint_now = step % ck.every_steps == 0 or is_last or stopped is not None
        row = {}
        if step % t.log_every_steps == 0 or is_last or checkpoint_now:
          # The host sync of a logging interval; checkpoints also wait for it, so a
          # non-finite state is never saved.
          fetched = fetch(pending)
          bar.update(len(in_flight))
          in_flight.clear()
          first = step - len(pending) + 1
          pending = []
          _check_finite(t, fetched, first, step, checkpointer)
          if step % t.log_every_steps == 0 or is_last or stopped:
            row = _mean_row(fetched)
            row.update(task.data_metrics(data_row(logged_step), data_row(step)))
            if len(phases) > 1:  # a warming-up batch: the size of this row's last step
              row["train/batch_size"] = loader.size_at(phases, step - 1)
            logged_step = step
            rate = meter.rate()
            row["perf/tokens_per_sec"] = rate
            row["perf/real_tokens_per_sec"] = rate * row["train/real_token_fraction"]
            if peak:
              row["perf/mfu"] = rate * task.flops_per_token / peak
            bar.set_postfix(loss=f"{row['train/loss']:.3f}", tok_s=f"{rate:.0f}",
                            refresh=False)
        if not stopped and ((task.eval_every_steps and step % task.eval_every_steps == 0)
                            or is_last):
          evaluated = task.evaluate(state.eval_params)
          row.update(evaluated)
          meter.rate()  # evaluation time is not training throughput
          value = evaluated.get(task.best_metric)
          if value is not None:
            if sign * (value - best_value) > t.early_stopping_min_delta:
              best_value, since_best, best_step = value, 0, step
              best_checkpointer.save(step, state, data=data_item(step), config=config_dict,
                                     force=True)
            else:
              since_best += 1
              if t.early_stopping_patience and since_best >= t.early_stopping_patience:
                stopped = "early_stopping"
                checkpoint_now = True
        if row:
          if not wrote_a_row:  # where this run began: 0, or the step it resumed from
            row["run/start_step"], wrote_a_row = start_step, True
          writer.write(step, row)
          last.update(row)
          last["step"] = step
        if checkpoint_now:
          checkpointer.save(step, state, config=config_dict, data=data_item(step), force=True)
  except StoreError as e:
    raise TrainError(f"step {step + 1}: {e}; stopped without saving (last checkpoint: "
                     f"{_latest(checkpointer)})") from None
  except OSError as e:
    raise TrainError(f"{e.filename or workdir}: {e.strerror or e}; stopped (last checkpoint: "
                     f"{_latest(checkpointer)})") from None
  except KeyboardInterrupt:
    checkpointer.wait()
    raise KeyboardInterrupt(f"a re-run resumes from {_latest(checkpointer)}") from None
  finally:
    stop.close()
    bar.close()
    writer.close()
  last["step"] = step
  last["best_step"] = best_step
  last["best"] = best_value
  if stopped:
    last["stopped"] = stopped
  if stopped in ("preempted", "interrupted"):
    signal_name = "SIGTERM" if stopped == "preempted" else "Ctrl-C"
    say(f"{signal_name}: checkpointed step {step} in {checkpointer.directory}; re-run to resume")
  if step == start_step and not stopped and task.stop_step == task.num_steps:
    logged = metrics_lib.read_metrics(workdir)
    last = {**{k: v for r in logged for k, v in r.items()}, **last}
    say(f"{workdir} already finished {start_step} of {task.num_steps} steps; raise "
        "--config.train.num_steps to train further")
  return last


def _latest(checkpointer) -> str:
  step = checkpointer.latest_step()
  return "none" if step is None else f"{checkpointer.directory}/{step}"


def _check_finite(t, fetched, first: int, step: int, checkpointer) -> None:
  if t.nonfinite == "abort":
    bad = _first_nonfinite([m["train/loss"] for m in fetched], first)
    if bad is None:
      bad = _first_nonfinite([m["train/grad_norm"] for m in fetched], first)
    if bad is not None:
      raise TrainError(f"step {bad}: the loss or gradient is not finite; stopped without "
                       f"saving it (last checkpoint: step {checkpointer.latest_step()}). "
                       "--config.train.nonfinite=skip skips such updates instead")
  elif fetched[-1]["train/nonfinite_in_a_row"] >= t.max_nonfinite_in_a_row:
    raise TrainError(f"step {step}: {int(fetched[-1]['train/nonfinite_in_a_row'])} "
                     "non-finite updates in a row were skipped; stopping")


def _checked(batches: Iterator[dict], start_step: int) -> Iterator[dict]:
  """Host batches, refused when they hold no real token (missing or zeroed data)."""
  for step, batch in enumerate(batches, start_step + 1):
    if not np.any(batch["attention_mask"]):
      raise StoreError(f"the batch of step {step} holds no real token (missing or zeroed "
                       "data)")
    yield batch


# ---------------------------------------------------------------------------------------------
# Compiling without data: what a config costs on a mesh.


def dry_run(task: Task, batch_shapes: dict) -> dict:
  """Compiles the sharded train step for the configured mesh, without data or parameters.

  Reports parameters and per-device memory of the compiled executable, so a user learns
  whether a model fits a chip before renting it. Works on fake CPU devices
  (XLA_FLAGS=--xla_force_host_platform_device_count=N).
  """
  cfg = task.cfg
  mesh = sharding.make_mesh(cfg.mesh)
  sharding.check_fits(cfg, mesh)
  program = build_program(task, mesh)
  batch = {k: jax.ShapeDtypeStruct(shape, dtype, sharding=program.batch_sharding)
           for k, (shape, dtype) in batch_shapes.items()}
  start = time.perf_counter()
  with jax.set_mesh(mesh):
    compiled = program.train_step.lower(program.abstract_state, batch).compile()
  seconds = time.perf_counter() - start
  mem = compiled.memory_analysis()
  report = {
      "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
      "mesh": dict(mesh.shape),
      "parameters": count_params(program.model.abstract_params),
      "batch_size": cfg.train.batch_size,
      "microbatches": cfg.train.microbatches,
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


def count_params(tree: Any) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
