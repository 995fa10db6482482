"""Orbax checkpoints of the train state and loop state; the workdir lock; repair on resume.

Each checkpoint step directory holds three items: `state` (parameters, optimizer state, step;
restored straight into the target shardings), `data` (the loop's state: next step, seed, best
metric, schedule history, and the task's data identity) and `config` (the run's config, for
humans and for the resume check). Orbax writes into a temporary directory and renames it when
complete, so an interrupted save is never restored.

One writer per workdir: `WorkdirLock` holds an exclusive `flock` on WORKDIR/.lock for the life
of a run. The kernel drops it when the holder dies, so a stale lock is taken over. flock works
on local disks; on NFS it depends on the server, and object stores (gs://) have no locks.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import logging
import os
import shutil
import socket
import sys
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxpt.errors import UserError
from jaxpt.models import params as params_lib


# Orbax's replica-parallel save splits each replicated array across its replicas, compiling a
# slice per shape and device: worth it for large arrays, pure compile time for biases and
# LayerNorm scales (100+ compiles, ~20 s, for a tiny model on 8 devices). Below 4 MiB per
# slice, one replica writes the whole shard.
@contextlib.contextmanager
def quiet_absl():
  """Orbax logs benign warnings through absl (a handler override; a composite's metadata)."""
  logger = logging.getLogger("absl")
  previous = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(previous)


def _not_orbax(record: logging.LogRecord) -> bool:
  return record.levelno < logging.ERROR or "orbax" not in record.pathname


@contextlib.contextmanager
def orbax_silenced():
  """Drops Orbax's ERROR records (absl's logger): a failed background save logs pages of
  tracebacks, which `SaveError` says in a line. Its information (the preemption sync point)
  and everyone else's records stay."""
  logger = logging.getLogger("absl")
  logger.addFilter(_not_orbax)
  default = sys.unraisablehook

  def unraisable(u):  # tensorstore's callbacks into the loop of a save that failed
    if not (isinstance(u.exc_value, RuntimeError) and str(u.exc_value) == _CLOSED_LOOP):
      default(u)

  sys.unraisablehook = unraisable
  try:
    yield
  finally:
    logger.removeFilter(_not_orbax)
    sys.unraisablehook = default


_CLOSED_LOOP = "Event loop is closed"


def quiet_abandoned_writers() -> None:
  """After a failed save, on the way out: Orbax's abandoned writers repeat the same failure
  (asyncio's logger, other threads' tracebacks, "Exception ignored" at exit) around the one
  line that reports it. Silences those for the rest of the process; the main thread's own
  exceptions still reach sys.excepthook."""
  logging.getLogger("asyncio").setLevel(logging.CRITICAL)
  threading.excepthook = lambda args: None
  sys.unraisablehook = lambda unraisable: None


with quiet_absl():
  ocp.type_handlers.register_type_handler(
      jax.Array, ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=4 << 20),
      override=True)


class LockError(UserError, RuntimeError):
  """Another process holds the workdir; the message names it."""


class WorkdirLock:
  """An exclusive lock on WORKDIR/.lock, holding "pid host" of the holder."""

  def __init__(self, workdir: str, path: str | None = None):
    """`path`: the lock file when it cannot live inside `workdir` (a directory created by
    one rename at the end, as compress's output); default WORKDIR/.lock."""
    self.workdir = workdir
    self.path = path or os.path.join(workdir, ".lock")
    self._fd = None

  def acquire(self) -> str | None:
    """Takes the lock; returns a note when it took over a dead process's lock."""
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
      os.close(fd)
      who = f"pid {holder[0]} on {holder[1]}" if len(holder) >= 2 else "another process"
      raise LockError(f"{self.workdir} is in use by {who}; one run per workdir "
                      "(wait for it, stop it, or use another --workdir)") from None
    previous = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    self._fd = fd
    if len(previous) >= 2 and previous[0] != str(os.getpid()):
      return (f"took over the lock of pid {previous[0]} on {previous[1]}, which no longer "
              "holds it")
    return None

  def release(self) -> None:
    if self._fd is not None:
      os.ftruncate(self._fd, 0)
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


class SaveError(RuntimeError):
  """A checkpoint could not be written (disk full, permissions, ...); one line naming where."""


class Checkpointer:
  def __init__(self, directory: str, *, max_to_keep: int, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    # Two managers (checkpoints/ and best/) may commit the same step at once; Orbax names its
    # cross-process barrier after the step, so each manager gets its own prefix.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save,
        multiprocessing_options=ocp.options.MultiprocessingOptions(
            barrier_sync_key_prefix=os.path.basename(self.directory)))
    self._closed = False
    # Handlers named up front, so that a fresh process can read metadata before restoring.
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": ocp.JsonCheckpointHandler(),
                       "config": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def _failed(self, e: BaseException) -> SaveError:
    return SaveError(f"{self.directory}: a checkpoint could not be written "
                     f"({describe_error(e)})")

  def save(self, step: int, state, *, data: dict, config: dict, force: bool = False) -> bool:
    """Starts (async) or writes a save; an earlier async save's failure surfaces here too."""
    try:
      return self._manager.save(
          step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                        data=ocp.args.JsonSave(data),
                                        config=ocp.args.JsonSave(config)),
          force=force)
    except Exception as e:  # noqa: BLE001 (Orbax and tensorstore raise ValueError, OSError...)
      raise self._failed(e) from None

  def restore(self, step: int, abstract_state):
    """Restores `step` into the shapes, dtypes and shardings of `abstract_state`.

    `abstract_state` is a pytree of `jax.ShapeDtypeStruct`s with `.sharding` set, so each
    device reads only its own shards.
    """
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                      data=ocp.args.JsonRestore(),
                                      config=ocp.args.JsonRestore()))
    return restored.state, restored.data, restored.config

  def delete(self, step: int) -> None:
    self._manager.delete(step)

  def reload(self) -> None:
    """Re-reads the step list from disk (after steps were moved away)."""
    self._manager.reload()

  def restore_metadata(self, step: int) -> tuple[dict, dict]:
    """(data, config) of a checkpoint, without touching the arrays."""
    restored = self._manager.restore(
        step, args=ocp.args.Composite(data=ocp.args.JsonRestore(),
                                      config=ocp.args.JsonRestore()))
    return restored.data, restored.config

  def mismatches(self, step: int, abstract_state, limit: int = 3) -> list[str]:
    """Parameters whose saved shape differs from `abstract_state`'s (or that one side lacks)."""
    saved = params_lib.shapes(self._manager.item_metadata(step)["state"])
    wanted = params_lib.shapes(abstract_state)
    problems = []
    for name in sorted(set(saved) | set(wanted)):
      if not name.startswith("params."):
        continue
      have, want = saved.get(name), wanted.get(name)
      if have != want:
        problems.append(f"{name}: checkpoint {have or 'absent'}, model {want or 'absent'}")
    if len(problems) > limit:
      problems = problems[:limit] + [f"and {len(problems) - limit} more"]
    saved_ema = any(k.startswith("ema.") for k in saved)
    if not problems and saved_ema != any(k.startswith("ema.") for k in wanted):
      problems.append("ema: the checkpoint keeps a moving average of the parameters and this "
                      "config does not (optim.ema_decay=0)" if saved_ema else
                      "ema: the checkpoint has no moving average of the parameters and this "
                      "config keeps one (optim.ema_decay > 0)")
    if not problems:
      opt_saved = {k: v for k, v in saved.items() if k.startswith("opt_state.")}
      opt_wanted = {k: v for k, v in wanted.items() if k.startswith("opt_state.")}
      if opt_saved != opt_wanted:
        problems.append("opt_state: the saved optimizer state has another structure than "
                        "this config's optimizer")
    return problems

  def wait(self) -> None:
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      raise self._failed(e) from None

  def close(self) -> None:
    """Waits for the last save, then releases the manager (again: nothing to do)."""
    if self._closed:
      return
    try:
      self.wait()
    finally:
      self._closed = True
      try:  # Orbax's close joins the same failed writers again: one error, one type
        self._manager.close()
      except Exception as e:  # noqa: BLE001
        raise self._failed(e) from None


def abstract_like(tree, shardings):
  """ShapeDtypeStructs of `tree` (arrays or abstract values) placed by `shardings`."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def save_params(path: str, params) -> None:
  """A parameters-only checkpoint (`{"params": ...}`), as `jaxpt import-hf` writes."""
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.abspath(path), {"params": params})
  checkpointer.wait_until_finished()
  checkpointer.close()


def restore_params(path: str) -> dict:
  """Only the parameters of a saved pytree, as numpy arrays: `<checkpoints>/<step>/state` of a
  TrainState (its `ema` when it keeps one: what the run evaluated), or a `save_params`
  directory.

  A partial restore: the optimizer moments (twice the parameters, for Adam) are never read.
  """
  path = os.path.abspath(path)
  checkpointer = ocp.PyTreeCheckpointer()
  with quiet_absl():
    metadata = checkpointer.metadata(path)
  tree = getattr(metadata, "item_metadata", None)
  tree = getattr(tree, "tree", tree) if tree is not None else metadata
  key = "ema" if isinstance(tree.get("ema"), dict) and tree["ema"] else "params"
  params = tree[key]
  target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), params)
  restore_args = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), params)
  restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
      item={key: target}, restore_args={key: restore_args}, partial_restore=True))
  return _int_keys(restored[key])


def _int_keys(tree):
  """Orbax stores dict keys as strings; NNX's pure dicts key list entries (layers) by int."""
  if not isinstance(tree, dict):
    return tree
  return {int(k) if isinstance(k, str) and k.isdigit() else k: _int_keys(v)
          for k, v in tree.items()}


def remove_partial_saves(directory: str) -> list[str]:
  """Deletes the temporary directories of saves that never finished (a killed process)."""
  removed = sorted(glob.glob(os.path.join(glob.escape(directory), "*.orbax-checkpoint-tmp*")))
  for path in removed:
    shutil.rmtree(path, ignore_errors=True)
  return removed


def set_aside(directory: str, step: int, workdir: str) -> str:
  """Moves an unreadable step out of the checkpoint directory (kept, never deleted)."""
  target = os.path.join(workdir, "unreadable",
                        f"{os.path.basename(directory)}-{step}-{int(time.time())}")
  os.makedirs(os.path.dirname(target), exist_ok=True)
  os.replace(os.path.join(directory, str(step)), target)
  return target


def describe_error(e: BaseException) -> str:
  """One line of an Orbax / tensorstore / JSON failure."""
  text = " ".join(str(e).split()) or type(e).__name__
  # Long messages name a file first and the OS's reason last: keep both ends.
  return text if len(text) <= 400 else text[:180] + " ... " + text[-215:]
