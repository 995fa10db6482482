"""The device mesh and the one table mapping logical axis names to mesh axes.

Changing a parallelism scheme is a change of `MeshConfig` sizes (or of this table), not of model
code. With one device every mesh axis has size 1 and the same code runs unchanged.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxpt.config import ConfigError, MeshConfig

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axis (or axes). Names not listed (and None) are replicated.
LOGICAL_AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("layers", None),  # the stacked-layer axis of scan_layers (pipeline stages would go here)
    ("norm", None),
    ("length", None),  # sequence parallelism would go here
    ("act_embed", None),  # activations keep the embedding whole (FSDP gathers weights)
)


def mesh_shape(cfg: MeshConfig, num_devices: int) -> tuple[int, int, int]:
  """Resolves the -1 entry of (data, fsdp, tensor) so the product is `num_devices`."""
  sizes = [cfg.data, cfg.fsdp, cfg.tensor]
  free = [i for i, s in enumerate(sizes) if s == -1]
  if len(free) > 1:
    raise ConfigError(f"config.mesh: at most one axis may be -1, got {tuple(sizes)}")
  known = math.prod(s for s in sizes if s != -1)
  if free:
    if num_devices % known:
      raise ConfigError(f"config.mesh={tuple(sizes)}: {num_devices} devices are not "
                        f"divisible by {known}")
    sizes[free[0]] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ConfigError(f"config.mesh={tuple(sizes)} needs {math.prod(sizes)} devices, "
                      f"{num_devices} are present")
  return tuple(sizes)


def make_mesh(cfg: MeshConfig, devices=None) -> Mesh:
  """A (data, fsdp, tensor) mesh over all global devices, in the topology-aware order."""
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(cfg, len(devices))
  try:
    from jax.experimental import mesh_utils
    ordered = mesh_utils.create_device_mesh(shape, devices=devices)
  except (ValueError, NotImplementedError, AssertionError):
    ordered = np.asarray(devices).reshape(shape)
  return Mesh(ordered, MESH_AXES)


def check_fits(cfg, mesh: Mesh) -> None:
  """Sizes the mesh must divide, checked before anything is compiled (cfg: jaxpt Config)."""
  m, t = cfg.model, cfg.train
  tensor, fsdp = mesh.shape["tensor"], mesh.shape["fsdp"]
  shards = mesh.shape["data"] * fsdp
  for name, size, axis, axis_size in (
      ("model.num_heads", m.num_heads, "tensor", tensor),
      ("model.intermediate_size", m.intermediate_size, "tensor", tensor),
      ("model.vocab_size", m.vocab_size, "tensor", tensor),
      ("model.hidden_size", m.hidden_size, "fsdp", fsdp)):
    if size % axis_size:
      hint = (" (the model's vocabulary may be larger than the tokenizer's: round it up)"
              if name == "model.vocab_size" else "")
      raise ConfigError(f"config.{name}={size} is not divisible by the mesh's {axis} axis "
                        f"({axis_size}){hint}")
  micro = t.batch_size // t.microbatches
  if micro % shards:
    raise ConfigError(
        f"config.train.batch_size={t.batch_size} over train.microbatches={t.microbatches} "
        f"gives {micro} sequences per micro-batch, not divisible by data x fsdp = {shards}")
  start = t.batch_warmup_start  # the sizes of a warm-up double from it
  if start and (start // t.microbatches % shards or start % jax.process_count()):
    raise ConfigError(
        f"config.train.batch_warmup_start={start} over train.microbatches={t.microbatches} "
        f"is not divisible by data x fsdp = {shards} (and by {jax.process_count()} processes)")
  if t.batch_size % jax.process_count():
    raise ConfigError(f"config.train.batch_size={t.batch_size} is not divisible by the "
                      f"number of processes ({jax.process_count()})")


def local_batch_rows(sharding: NamedSharding, global_batch: int) -> tuple[int, int]:
  """The [start, stop) rows of the global batch held by this process's devices.

  The loader reads exactly these rows, so each process loads only its own examples. With the
  batch axis split over processes they are a contiguous 1/process_count block; where a mesh
  replicates the batch over processes, every process reads all of it.
  """
  starts, stops = [], []
  for index in sharding.addressable_devices_indices_map((global_batch,)).values():
    rows = index[0]
    starts.append(rows.start or 0)
    stops.append(global_batch if rows.stop is None else rows.stop)
  return min(starts), max(stops)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over data and fsdp; everything else replicated."""
  return NamedSharding(mesh, P(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def param_shardings(abstract_state, mesh: Mesh):
  """NamedShardings for an `nnx.State` whose Variables carry logical `out_sharding` names."""
  with nnx.logical_axis_rules(LOGICAL_AXIS_RULES):
    return nnx.get_named_sharding(abstract_state, mesh)


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None,
                           auto: bool = False, timeout_s: int = 300) -> None:
  """Joins this process to a multi-process JAX run (`jax.distributed.initialize`).

  Explicit: all of coordinator_address, num_processes and process_id (localhost runs, plain
  clusters). Auto: JAX detects TPU pods, SLURM and Open MPI from their environment. A peer
  that never arrives or dies mid-run ends this process within `timeout_s` seconds (the
  initialisation and heartbeat timeouts) instead of hanging.
  """
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise ConfigError("--coordinator_address, --num_processes and --process_id go together")
    if not 0 <= process_id < num_processes:
      raise ConfigError(f"--process_id={process_id} must be in [0, {num_processes})")
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               initialization_timeout=timeout_s,
                               heartbeat_timeout_seconds=timeout_s)
  elif auto:
    jax.distributed.initialize(initialization_timeout=timeout_s,
                               heartbeat_timeout_seconds=timeout_s)


_RULES = dict(LOGICAL_AXIS_RULES)


def constrain(x, axes: tuple[str | None, ...]):
  """Pins an activation's layout by logical axis names; a no-op outside a mesh context.

  Used on the hidden states so that FSDP gathers weights and keeps activations split by
  batch, rather than letting propagation shard activations along `embed`.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not set(MESH_AXES) <= set(mesh.axis_names):
    return x
  return jax.lax.with_sharding_constraint(x, P(*(_RULES.get(a) if a else None for a in axes)))


def place(params: dict, shardings: dict) -> dict:
  """Host arrays -> global arrays with `shardings`; each process supplies only its shards."""
  def put(x, s):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, s, lambda index: x[index])
  return jax.tree.map(put, params, shardings)
