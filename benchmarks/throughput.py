"""Training-step throughput of jaxpt presets on the devices present: tokens/s, MFU, memory.

Times exactly the jitted, sharded `train_step` that `jaxpt pretrain` runs on synthetic
batches already on device, and optionally (`--data_dir`) the same step fed by the real input
pipeline (grain, host masking, device prefetch), side by side in one run. One JSON line per
configuration, then a Markdown table.

  python benchmarks/throughput.py --preset=bert_tiny,bert_mini --batch_size=32 --seq_len=128
"""

from __future__ import annotations

import dataclasses
import datetime
import json
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

REPO = pathlib.Path(__file__).resolve().parent.parent

_PRESETS = flags.DEFINE_list("preset", ["bert_tiny", "bert_mini"],
                             "Presets (names in configs/, or paths of config files).")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Global batch (sequences).")
_LENGTH = flags.DEFINE_integer("seq_len", 128, "Tokens per sequence.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps (after 2 warm-up steps).")
_PRECISION = flags.DEFINE_enum("precision", "fp32", ["fp32", "bf16"], "Compute dtype.")
_MESH = flags.DEFINE_string("mesh", "-1,1,1", "data,fsdp,tensor sizes.")
_REMAT = flags.DEFINE_enum("remat", "none", ["none", "full", "save_dots"], "Remat policy.")
_DATA = flags.DEFINE_string("data_dir", "", "A prepared directory: also time the same step fed "
                            "by the real loader, side by side.")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "Peak TFLOP/s of one device, for MFU; 0: from "
                           "jaxpt's table of TPU/GPU kinds (CPUs are not in it).")


def _config(preset: str) -> config_lib.Config:
  path = preset if preset.endswith(".py") else str(REPO / "configs" / f"{preset}.py")
  cfg = config_lib.load(path)
  data, fsdp, tensor = (int(x) for x in _MESH.value.split(","))
  cfg = config_lib.with_model(cfg, dtype="bfloat16" if _PRECISION.value == "bf16" else "float32",
                              remat=_REMAT.value,
                              max_position_embeddings=max(cfg.model.max_position_embeddings,
                                                          _LENGTH.value))
  return config_lib.validate(dataclasses.replace(
      cfg, mesh=config_lib.MeshConfig(data, fsdp, tensor),
      train=dataclasses.replace(cfg.train, batch_size=_BATCH.value, num_steps=10_000)))


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


def _timed(compiled, state, next_batch) -> tuple[list[float], object]:
  """Per-step seconds, each step synchronised (the loop itself never is)."""
  for _ in range(2):
    state, m = compiled(state, next_batch())
  jax.block_until_ready(m)
  times = []
  for _ in range(_STEPS.value):
    t0 = time.perf_counter()
    state, m = compiled(state, next_batch())
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  return times, state


def measure(preset: str) -> dict:
  cfg = _config(preset)
  mesh = sharding.make_mesh(cfg.mesh)
  sharding.check_fits(cfg, mesh)
  program = trainer.build_program(cfg, mesh)
  preds = min(cfg.data.max_predictions_per_seq, _LENGTH.value)
  host = synthetic_batch(cfg, _BATCH.value, _LENGTH.value, preds)
  with jax.set_mesh(mesh):
    batch = {k: jax.device_put(v, program.batch_sharding) for k, v in host.items()}
    state = program.init_state()
    t0 = time.perf_counter()
    compiled = program.train_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    times, state = _timed(compiled, state, lambda: batch)
    fed = None
    if _DATA.value:
      data = loader.PreparedData.open(_DATA.value)
      if data.seq_length != _LENGTH.value:
        raise SystemExit(f"--data_dir holds {data.seq_length}-token examples; pass "
                         f"--seq_len={data.seq_length}")
      host_it = loader.batches(data.reader("train"), data.masking_spec(cfg.data),
                               batch_size=_BATCH.value, seed=0,
                               read_threads=cfg.data.read_threads,
                               prefetch=cfg.data.prefetch_batches)
      batches = trainer.device_prefetch(host_it, program.batch_sharding)
      fed, state = _timed(compiled, state, lambda: next(batches))
  tokens = _BATCH.value * _LENGTH.value
  step = float(np.median(times))
  flops = metrics_lib.flops_per_token(cfg.model, _LENGTH.value, preds) * tokens
  peak = metrics_lib.peak_flops(jax.devices()[0].device_kind, _PEAK.value * 1e12)
  mem = compiled.memory_analysis()
  row = {
      "preset": pathlib.Path(preset).stem, "seq_len": _LENGTH.value,
      "batch_size": _BATCH.value, "precision": _PRECISION.value, "mesh": dict(mesh.shape),
      "params": bert.count_params(program.model.abstract_params),
      "compile_s": round(compile_s, 2), "step_time_s": step,
      "step_time_p90_s": float(np.percentile(times, 90)), "tokens_per_sec": tokens / step,
      "model_tflops_per_sec": flops / step / 1e12,
      "mfu": flops / step / (peak * jax.device_count()) if peak else None,
      "peak_memory_bytes": (int(mem.argument_size_in_bytes + mem.output_size_in_bytes
                                + mem.temp_size_in_bytes - mem.alias_size_in_bytes)
                            if mem is not None else None),
  }
  if fed is not None:
    row["loader_fed_tokens_per_sec"] = tokens / float(np.median(fed))
    row["fed_over_bare"] = row["loader_fed_tokens_per_sec"] / row["tokens_per_sec"]
  return row


def main(argv):
  del argv
  dev = jax.devices()[0]
  print(f"# {datetime.date.today()} | {platform.node()} | {jax.device_count()} x "
        f"{dev.device_kind} ({dev.platform}) | jax {jax.__version__}")
  rows = []
  for preset in _PRESETS.value:
    rows.append(measure(preset))
    print(json.dumps(rows[-1]), flush=True)
  keys = ["preset", "params", "step_time_s", "tokens_per_sec", "model_tflops_per_sec", "mfu",
          "peak_memory_bytes", "compile_s"] + (["loader_fed_tokens_per_sec", "fed_over_bare"]
                                               if _DATA.value else [])
  print("| " + " | ".join(keys) + " |")
  print("|" + "---|" * len(keys))
  for row in rows:
    print("| " + " | ".join(f"{row[k]:.4g}" if isinstance(row[k], float) else str(row[k])
                            for k in keys) + " |")


if __name__ == "__main__":
  app.run(main)
