"""Metric writers (JSONL and TensorBoard) and throughput accounting."""

from __future__ import annotations

import json
import math
import os
import time

from jaxpt.config import ModelConfig


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
    if self._tb is not None:
      self._tb.close()


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

  Encoder matmuls: 2 * 12 * H^2 per token per layer (QKV, output, MLP at 4H), attention
  scores and values 2 * 2 * L * H; the MLM head runs only on the predicted positions.
  """
  h, layers, i = cfg.hidden_size, cfg.num_layers, cfg.intermediate_size
  per_layer = 2 * (4 * h * h + 2 * h * i) + 2 * 2 * seq_length * h
  head = predictions_per_seq / seq_length * 2 * (h * h + h * cfg.vocab_size)
  return 3.0 * (layers * per_layer + head)


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
