"""Orbax checkpoints of the train state, with the config and the data position beside it.

Each checkpoint step directory holds three items: `state` (parameters, optimizer state, step;
restored straight into the target shardings), `data` (the next batch index and the tokenizer
hash) and `config` (the run's config, for humans and for mismatch checks). Orbax writes into a
temporary directory and renames it when complete, so an interrupted save is never restored.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  def __init__(self, directory: str, *, max_to_keep: int, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "data", "config"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state, *, data: dict, config: dict, force: bool = False) -> bool:
    return self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      data=ocp.args.JsonSave(data),
                                      config=ocp.args.JsonSave(config)),
        force=force)

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

  def restore_metadata(self, step: int) -> tuple[dict, dict]:
    """(data, config) of a checkpoint, without touching the arrays."""
    restored = self._manager.restore(
        step, args=ocp.args.Composite(data=ocp.args.JsonRestore(),
                                      config=ocp.args.JsonRestore()))
    return restored.data, restored.config

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_like(tree, shardings):
  """ShapeDtypeStructs of `tree` (arrays or abstract values) placed by `shardings`."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)
