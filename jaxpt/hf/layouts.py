"""What every HuggingFace name table is made of: entries, tensor layouts, the error class.

PyTorch `nn.Linear` stores `[out, in]`; jaxpt kernels are `[in, out]`, and the attention
projections keep heads as their own axis (`[embed, heads, head_dim]`,
`[heads, head_dim, embed]`) so that tensor parallelism can split them. A fused HuggingFace
tensor (ModernBERT's `Wqkv`, its GeGLU `Wi`) is several jaxpt parameters: each entry names its
`part` (index, count) of the tensor's first axis. GPT-2's `Conv1D` weights are stored `[in,
out]`: `transposed` entries are turned into `nn.Linear`'s layout first (and back on export).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxpt.config import ModelConfig
from jaxpt.errors import UserError


class HFError(UserError, ValueError):
  """A HuggingFace directory jaxpt cannot use; the message names the file and the field."""


@dataclasses.dataclass(frozen=True)
class Entry:
  path: str  # dotted jaxpt parameter path, layers unrolled
  layout: str  # same | linear | qkv_kernel | heads_bias | out_kernel
  part: tuple[int, int] | None = None  # (index, count) of the HF tensor's first axis
  transposed: bool = False  # stored transposed relative to nn.Linear (GPT-2's Conv1D)


def to_jaxpt(x: np.ndarray, layout: str, cfg: ModelConfig) -> np.ndarray:
  n, d = cfg.num_heads, cfg.head_dim
  if layout == "same":
    return x
  if layout == "linear":
    return x.T
  if layout == "qkv_kernel":  # [heads * head_dim, embed] -> [embed, heads, head_dim]
    return x.T.reshape(x.shape[1], n, d)
  if layout == "heads_bias":
    return x.reshape(n, d)
  if layout == "out_kernel":  # [embed, heads * head_dim] -> [heads, head_dim, embed]
    return x.T.reshape(n, d, x.shape[0])
  raise AssertionError(layout)


def to_hf(x: np.ndarray, layout: str) -> np.ndarray:
  if layout == "same":
    return x
  if layout == "linear":
    return x.T
  if layout == "qkv_kernel":
    return x.reshape(x.shape[0], -1).T
  if layout == "heads_bias":
    return x.reshape(-1)
  if layout == "out_kernel":
    return x.reshape(-1, x.shape[-1]).T
  raise AssertionError(layout)


def hf_shape(shape: tuple[int, ...], entry: Entry) -> tuple[int, ...]:
  """The shape of the whole HF tensor an entry of a jaxpt parameter of `shape` comes from."""
  one = to_hf(np.empty(shape, np.float32), entry.layout).shape
  if entry.part is not None:
    one = (one[0] * entry.part[1], *one[1:])
  return one[::-1] if entry.transposed else one


def as_linear(x: np.ndarray, entry: Entry) -> np.ndarray:
  """The stored tensor in nn.Linear's layout (a transposed entry's is `[in, out]`); its own
  inverse."""
  return x.T if entry.transposed else x


def take_part(x: np.ndarray, entry: Entry) -> np.ndarray:
  if entry.part is None:
    return x
  index, count = entry.part
  rows = x.shape[0] // count
  return x[index * rows:(index + 1) * rows]
