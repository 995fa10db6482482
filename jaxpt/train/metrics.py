"""Metric writers (JSONL and TensorBoard) and throughput accounting."""

from __future__ import annotations

import json
import math
import os
import time

from jaxpt.config import ModelConfig
from jaxpt.models import transformer


class MetricWriter:
  """Appends one JSON object per logged step to metrics.jsonl and mirrors it to TensorBoard."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if enabled:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    row = {"step": int(step)}
    row.update({k: _plain(v) for k, v in sorted(metrics.items())})
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(row) + "\n")
    for k, v in row.items():
      if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
        self._tb.add_scalar(k, v, step)

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    """Flushes TensorBoard's mirror. A write that fails here (a full disk) is dropped: the
    rows are in metrics.jsonl, whose own write failures stop the run."""
    if self._tb is not None:
      try:
        self._tb.close()
      except OSError:
        pass


def _plain(v):
  try:
    return float(v)
  except (TypeError, ValueError):
    return v


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def flops_per_token(cfg: ModelConfig, seq_length: int, predictions_per_seq: int) -> float:
  """Training FLOPs per input token (forward + backward = 3x forward), matmuls only.

  Per token and layer: 2 * 4 * H^2 for q, k, v and the output, 2 * H * I per MLP matrix (two,
  or three when gated), and 2 * 2 * K * H for the attention scores and values over the K keys
  a token sees (the length, or the window on a local layer); the MLM head runs only on the
  predicted positions.
  """
  h, i = cfg.hidden_size, cfg.intermediate_size
  mlp_matrices = 3 if cfg.mlp in ("geglu", "swiglu") else 2
  left, right = transformer.local_window(cfg)
  window = min(seq_length, left + right + 1)
  total = 0.0
  for local in transformer.local_layers(cfg):
    keys = window if local else seq_length
    total += 2 * (4 * h * h + mlp_matrices * h * i) + 2 * 2 * keys * h
  head = predictions_per_seq / seq_length * 2 * (h * h + h * cfg.vocab_size)
  return 3.0 * (total + head)


# Dense bf16 peak FLOP/s per chip, from the vendors' data sheets, matched against
# `jax.Device.device_kind` by substring (first match wins).
PEAK_FLOPS = (
    ("TPU v6", 918e12), ("TPU v5p", 459e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12),
    ("TPU v5", 459e12), ("TPU v4", 275e12), ("TPU v3", 123e12), ("TPU v2", 46e12),
    ("B200", 2250e12), ("H200", 989e12), ("H100", 989e12), ("A100", 312e12),
    ("L40S", 362e12), ("L4", 121e12), ("A10", 125e12), ("V100", 125e12),
)


def peak_flops(device_kind: str, configured: float = 0.0) -> float | None:
  """Peak FLOP/s of one device: `configured` if set, else the table's entry, else None."""
  if configured:
    return configured
  for name, flops in PEAK_FLOPS:
    if name.lower() in device_kind.lower():
      return flops
  return None


class Throughput:
  """Tokens per second between calls of `rate`, on the host clock."""

  def __init__(self):
    self._t = time.perf_counter()
    self._tokens = 0

  def add(self, tokens: int) -> None:
    self._tokens += tokens

  def rate(self) -> float:
    now = time.perf_counter()
    r = self._tokens / max(now - self._t, 1e-9)
    self._t, self._tokens = now, 0
    return r


def plot(workdir: str, out: str | None = None) -> str:
  """Draws loss, learning rate, throughput and eval curves of a run to a PNG; returns its path."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = read_metrics(workdir)
  if not rows:
    raise FileNotFoundError(f"{os.path.join(workdir, 'metrics.jsonl')}: no metrics to plot")

  def series(key):
    pts = [(r["step"], r[key]) for r in rows if key in r and isinstance(r[key], (int, float))
           and math.isfinite(r[key])]
    return ([p[0] for p in pts], [p[1] for p in pts]) if pts else None

  panels = [
      ("loss", [("train/mlm_loss", "train MLM"), ("eval/mlm_loss", "eval MLM"),
                ("train/clm_loss", "train causal LM"), ("eval/clm_loss", "eval causal LM")]),
      ("accuracy", [("train/mlm_accuracy", "train MLM"), ("eval/mlm_accuracy", "eval MLM"),
                    ("eval/nsp_accuracy", "eval NSP"), ("train/clm_accuracy", "train causal LM"),
                    ("eval/clm_accuracy", "eval causal LM")]),
      ("learning rate", [("lr", "lr")]),
      ("throughput (tokens/s)", [("perf/tokens_per_sec", "tokens/s")]),
  ]
  fig, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
  for ax, (title, keys) in zip(axes.flat, panels):
    for key, label in keys:
      s = series(key)
      if s:
        ax.plot(*s, label=label, marker="o" if key.startswith("eval/") else None, ms=3)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend()
  fig.suptitle(os.path.abspath(workdir))
  out = out or os.path.join(workdir, "metrics.png")
  tmp = out + ".tmp.png"
  fig.savefig(tmp, dpi=100)
  plt.close(fig)
  os.replace(tmp, out)
  return out
