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
    ("norm", None),
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


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over data and fsdp; everything else replicated."""
  return NamedSharding(mesh, P(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def param_shardings(abstract_state, mesh: Mesh):
  """NamedShardings for an `nnx.State` whose Variables carry logical `out_sharding` names."""
  with nnx.logical_axis_rules(LOGICAL_AXIS_RULES):
    return nnx.get_named_sharding(abstract_state, mesh)
