"""Training-step throughput of jaxpt presets on the devices present: tokens/s, MFU, memory.

Times exactly the jitted, sharded `train_step` that `jaxpt pretrain` runs, fed with
synthetic batches already on device (the input pipeline is measured separately), and
reports the compiled executable's memory from XLA's own analysis.

  python benchmarks/train_throughput.py --configs=configs/bert_tiny.py,configs/bert_mini.py
"""

from __future__ import annotations

import dataclasses
import datetime
import pathlib
import platform
import time

import jax
import numpy as np
from absl import app, flags

from jaxpt import config as config_lib
from jaxpt import metrics as metrics_lib
from jaxpt import sharding, trainer
from jaxpt.data import loader
from jaxpt.models import bert

_CONFIGS = flags.DEFINE_list("configs", ["configs/bert_tiny.py", "configs/bert_mini.py"],
                             "Config files (presets in configs/).")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Global batch (sequences).")
_LENGTH = flags.DEFINE_integer("seq_length", 128, "Tokens per sequence.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps (after 2 warm-up steps).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_DATA = flags.DEFINE_string("data_dir", "", "A prepared directory: also time the same step fed "
                            "by the real loader (grain, masking, device prefetch), side by side.")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "Peak TFLOP/s of all devices together, for "
                           "MFU; 0 leaves MFU out.")


def synthetic_batch(cfg: config_lib.Config, batch: int, length: int, preds: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  return {
      "input_ids": rng.integers(5, cfg.model.vocab_size, (batch, length)).astype(np.int32),
      "token_type_ids": (np.arange(length)[None] >= length // 2).repeat(batch, 0)
                        .astype(np.int32),
      "attention_mask": np.ones((batch, length), np.int32),
      "masked_positions": np.sort(rng.integers(1, length, (batch, preds)), 1).astype(np.int32),
      "masked_ids": rng.integers(5, cfg.model.vocab_size, (batch, preds)).astype(np.int32),
      "masked_weights": np.ones((batch, preds), np.float32),
      "nsp_labels": rng.integers(0, 2, batch).astype(np.int32),
  }


def _time_with_loader(cfg, program, compiled, state) -> float:
  """Seconds per step when batches come from the prepared data through the real loader."""
  data = loader.PreparedData.open(_DATA.value)
  if data.seq_length != _LENGTH.value:
    raise SystemExit(f"--data_dir holds {data.seq_length}-token examples; pass "
                     f"--seq_length={data.seq_length}")
  host = loader.batches(data.reader("train"), data.masking_spec(cfg.data),
                        batch_size=_BATCH.value, seed=0, read_threads=cfg.data.read_threads,
                        prefetch=cfg.data.prefetch_batches)
  batches = trainer.device_prefetch(host, program.batch_sharding)
  for _ in range(2):
    state, m = compiled(state, next(batches))
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(_STEPS.value):
    state, m = compiled(state, next(batches))
  jax.block_until_ready(m)
  return (time.perf_counter() - t0) / _STEPS.value


def measure(path: str) -> dict:
  cfg = config_lib.load(path)
  cfg = config_lib.with_model(cfg, dtype=_DTYPE.value)
  cfg = dataclasses.replace(cfg, train=dataclasses.replace(
      cfg.train, batch_size=_BATCH.value, num_steps=10_000))
  config_lib.validate(cfg)
  mesh = sharding.make_mesh(cfg.mesh)
  program = trainer.build_program(cfg, mesh)
  preds = min(cfg.data.max_predictions_per_seq, _LENGTH.value)
  host = synthetic_batch(cfg, _BATCH.value, _LENGTH.value, preds)
  with jax.set_mesh(mesh):
    batch = {k: jax.device_put(v, program.batch_sharding) for k, v in host.items()}
    state = program.init_state()
    t0 = time.perf_counter()
    compiled = program.train_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(2):
      state, m = compiled(state, batch)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(_STEPS.value):
      state, m = compiled(state, batch)
    jax.block_until_ready(m)
    step_s = (time.perf_counter() - t0) / _STEPS.value
    fed_s = _time_with_loader(cfg, program, compiled, state) if _DATA.value else None
  tokens = _BATCH.value * _LENGTH.value
  flops = metrics_lib.flops_per_token(cfg.model, _LENGTH.value, preds) * tokens
  mem = compiled.memory_analysis()
  row = {
      "config": pathlib.Path(path).stem,
      "params_M": bert.count_params(program.model.abstract_params) / 1e6,
      "step_ms": step_s * 1e3, "tokens_per_sec": tokens / step_s,
      "tflops": flops / step_s / 1e12, "compile_s": compile_s,
  }
  if fed_s is not None:
    row["loader_fed_tokens_per_sec"] = tokens / fed_s
    row["fed_vs_bare"] = step_s / fed_s  # 1.0: the input pipeline costs nothing
  if _PEAK.value:
    row["mfu"] = flops / step_s / (_PEAK.value * 1e12)
  if mem is not None:
    row["mem_MiB"] = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                      + mem.temp_size_in_bytes - mem.alias_size_in_bytes) / 2**20
  return row


def main(argv):
  del argv
  dev = jax.devices()[0]
  print(f"# {datetime.date.today()} | {platform.node()} | {jax.device_count()} x "
        f"{dev.device_kind} ({dev.platform}) | jax {jax.__version__} | batch "
        f"{_BATCH.value} x {_LENGTH.value} | {_DTYPE.value}")
  rows = [measure(path) for path in _CONFIGS.value]
  keys = list(rows[0])
  print("| " + " | ".join(keys) + " |")
  print("|" + "---|" * len(keys))
  for row in rows:
    print("| " + " | ".join(f"{row[k]:.3g}" if isinstance(row[k], float) else str(row[k])
                            for k in keys) + " |")


if __name__ == "__main__":
  app.run(main)
