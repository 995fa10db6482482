"""The one parameter-tree toolbox: paths, flatten / unflatten, stacking of scanned layers, the
prunable kernels, counts. `hf`, `compress`, `pretrained` and `checkpoint` all use it.

A model's parameters as NNX's pure dicts are nested dicts with int keys for list entries
(layers of a Python loop); with `model.scan_layers`, `encoder.layers` holds each parameter
once with a leading [layers] axis. "Flat" means {dotted path: array} with layers unrolled
(`encoder.layers.3.attention.query.kernel`), the form name tables and reports work in.
"""

from __future__ import annotations

import jax
import numpy as np

LAYERS = "encoder.layers."  # the dotted prefix of every layer parameter
PRUNABLE = ("query", "key", "value", "out", "up", "gate", "down")  # a layer's dense layers


def key_name(key) -> str:
  """One entry of a jax tree path (DictKey, GetAttrKey, SequenceKey) or a plain key, as text."""
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def dotted(path) -> str:
  return ".".join(key_name(k) for k in path)


def shapes(tree) -> dict[str, tuple[int, ...]]:
  """Dotted path -> shape, for arrays, abstract arrays and Orbax array metadata alike."""
  return {dotted(path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def flatten(tree, *, scanned: bool = False, num_layers: int = 0) -> dict:
  """A pure-dict tree -> {dotted path: numpy array (abstract leaves stay abstract)}, with
  stacked layers (`scanned`) unrolled into `num_layers` entries."""
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if not isinstance(leaf, jax.ShapeDtypeStruct):
      leaf = np.asarray(jax.device_get(leaf))
    flat[dotted(path)] = leaf
  return unstack_layers(flat, num_layers) if scanned else flat


def unflatten(flat: dict, *, scanned: bool = False, num_layers: int = 0) -> dict:
  """The inverse of `flatten`: a nested dict (int keys for digits), layers stacked again when
  `scanned`."""
  if scanned:
    flat = stack_layers(flat, num_layers)
  tree: dict = {}
  for name, value in flat.items():
    keys = [int(k) if k.isdigit() else k for k in name.split(".")]
    node = tree
    for k in keys[:-1]:
      node = node.setdefault(k, {})
    node[keys[-1]] = value
  return tree


def unstack_layers(flat: dict, num_layers: int) -> dict:
  """`encoder.layers.<sub>` [layers, ...] -> `encoder.layers.<i>.<sub>`, i < num_layers."""
  out = {}
  for name, value in flat.items():
    if not name.startswith(LAYERS):
      out[name] = value
      continue
    sub = name[len(LAYERS):]
    for i in range(num_layers):
      out[f"{LAYERS}{i}.{sub}"] = (jax.ShapeDtypeStruct(value.shape[1:], value.dtype)
                                   if isinstance(value, jax.ShapeDtypeStruct) else value[i])
  return out


def stack_layers(flat: dict, num_layers: int) -> dict:
  """The inverse of `unstack_layers`."""
  out = {k: v for k, v in flat.items() if not k.startswith(LAYERS)}
  subs = sorted({k[len(LAYERS):].split(".", 1)[1] for k in flat if k.startswith(LAYERS)})
  for sub in subs:
    out[LAYERS + sub] = np.stack([flat[f"{LAYERS}{i}.{sub}"] for i in range(num_layers)])
  return out


def unstack_tree(tree: dict, num_layers: int) -> dict:
  """A nested tree whose `encoder.layers` is stacked -> one entry per layer (a loop's layout)."""
  layers = tree["encoder"]["layers"]
  looped = {i: jax.tree.map(lambda a, i=i: a[i], layers) for i in range(num_layers)}
  return dict(tree, encoder=dict(tree["encoder"], layers=looped))


def layer_slices(name: str, value) -> list[tuple[int, str, np.ndarray]]:
  """(layer, sub-path, array) for a dotted layer parameter: one entry for a loop's
  `encoder.layers.<i>.<sub>`, one per layer for a stacked `encoder.layers.<sub>`."""
  head, sub = name[len(LAYERS):].split(".", 1)
  if head.isdigit():
    return [(int(head), sub, value)]
  return [(i, f"{head}.{sub}", a) for i, a in enumerate(value)]


def prunable(path) -> bool:
  """Whether a parameter path (dotted text, or keys, or jax tree path entries) names the kernel
  of a layer's dense layer: what magnitude pruning and int8 quantization act on."""
  keys = path.split(".") if isinstance(path, str) else [key_name(k) for k in path]
  return ("layers" in keys and len(keys) >= 2 and keys[-1] == "kernel"
          and keys[-2] in PRUNABLE)


def count(tree) -> int:
  """Number of parameters (abstract trees too)."""
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def mismatch(a, b) -> str | None:
  """Why trees `a` and `b` cannot be averaged (the first path missing from one, or shaped
  differently), or None when they have one structure and shapes."""
  sa, sb = shapes(a), shapes(b)
  for name in sorted(set(sa) | set(sb)):
    if name not in sa or name not in sb:
      return f"{name} is only in one of them"
    if sa[name] != sb[name]:
      return f"{name} is {list(sa[name])} in one and {list(sb[name])} in the other"
  return None


def average(trees: list, weights=None):
  """The weighted mean of parameter trees of one structure and shapes: a model soup of
  fine-tuned runs, or a run's last checkpoints. Accumulates in float64 on the host; each
  leaf keeps its dtype. `weights` (default uniform) are normalised to sum to 1."""
  if not trees:
    raise ValueError("nothing to average")
  for other in trees[1:]:
    why = mismatch(trees[0], other)
    if why:
      raise ValueError(why)
  w = np.ones(len(trees)) if weights is None else np.asarray(weights, np.float64)
  if w.shape != (len(trees),) or np.any(w < 0) or w.sum() <= 0:
    raise ValueError(f"weights {list(w)} must be {len(trees)} non-negative numbers, not all 0")
  w = w / w.sum()

  def mean(*leaves):
    host = [np.asarray(jax.device_get(x)) for x in leaves]
    total = sum(wi * x.astype(np.float64) for wi, x in zip(w, host))
    return total.astype(host[0].dtype)

  return jax.tree.map(mean, *trees)
