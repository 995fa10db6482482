"""Training-step throughput of jaxpt presets on the devices present: tokens/s, MFU, memory.

Times exactly the jitted, sharded `train_step` that `jaxpt pretrain` runs on synthetic
batches already on device, and optionally (`--data_dir`) the same step fed by the real input
pipeline (grain, host masking, device prefetch), side by side in one run. One JSON line per
configuration, then a Markdown table.

  python benchmarks/throughput.py --preset=bert_tiny,bert_mini --batch_size=32 --seq_len=128

`--compare=hf` also times the transformers class users would otherwise train (PyTorch,
AdamW) on the same architecture, batch and masked positions: `BertForPreTraining` for BERT
presets, `ModernBertForMaskedLM` for ModernBERT ones, `GPT2LMHeadModel` for GPT-2 ones (a
causal LM: every position a target). Each side runs
in its own subprocess (so each gets a clean peak-RSS figure), alternating jaxpt, hf, jaxpt,
hf for `--rounds` rounds; the table gives medians and the jaxpt / hf ratio.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
import pathlib
import platform
import time

import jax
import numpy as np
from absl import app, flags

from jaxpt import config as config_lib
from jaxpt.cli import allocator
from jaxpt import sharding
from jaxpt.tasks import pretraining
from jaxpt.train import loop
from jaxpt.train import metrics as metrics_lib
from jaxpt.data import loader
from jaxpt.models import params as params_lib
from jaxpt.models import transformer

REPO = pathlib.Path(__file__).resolve().parent.parent

_PRESETS = flags.DEFINE_list("preset", ["bert_tiny", "bert_mini"],
                             "Presets (names in jaxpt/configs/, or paths of config files).")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Global batch (sequences).")
_LENGTH = flags.DEFINE_integer("seq_len", 128, "Tokens per sequence.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps (after 2 warm-up steps).")
_PRECISION = flags.DEFINE_enum("precision", "fp32", ["fp32", "bf16"], "Compute dtype.")
_MESH = flags.DEFINE_string("mesh", "-1,1,1", "data,fsdp,tensor sizes.")
_REMAT = flags.DEFINE_enum("remat", "none", ["none", "full", "save_dots"], "Remat policy.")
_ATTENTION = flags.DEFINE_enum("attention", "", ["", "auto", "xla", "cudnn", "splash"],
                               "model.attention (default: the preset's).")
_NO_ATTN_DROPOUT = flags.DEFINE_boolean("no_attention_dropout", False,
                                        "model.attention_dropout=0 (lets fused kernels run).")
_DATA = flags.DEFINE_string("data_dir", "", "A prepared directory: also time the same step fed "
                            "by the real loader, side by side.")
_COMPARE = flags.DEFINE_enum("compare", "", ["", "hf"], "Also time HuggingFace's PyTorch "
                             "BertForPreTraining on the same batches, side by side.")
_DOCS = flags.DEFINE_integer("docs", 0, "> 0: each synthetic row packs documents of about this "
                             "many tokens (lengths drawn from a geometric distribution, seed 0): "
                             "jaxpt gets their segment ids and keeps them apart; HF gets the "
                             "same rows as run_mlm's concatenated blocks (no document mask).")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "With --compare: alternating rounds per side.")
_HUGE = flags.DEFINE_enum("huge_pages", "jaxpt", ["jaxpt", "both", "none"],
                          "Which sides run with glibc's huge-page tunable "
                          "(jaxpt/cli/allocator.py): jaxpt's, as the `jaxpt` command sets it "
                          "for itself (the default); both; neither.")
_SIDE = flags.DEFINE_enum("side", "", ["", "jaxpt", "hf"], "Internal: measure one side only "
                          "and print its JSON line.")
_SWEEP = flags.DEFINE_list("sweep_batch_sizes", [], "Measure each preset at each of these "
                           "global batch sizes (instead of --batch_size).")
_PNG = flags.DEFINE_string("png", "", "Also draw tokens/s and MFU against batch size to this "
                           "PNG.")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "Peak TFLOP/s of one device, for MFU; 0: from "
                           "jaxpt's table of TPU/GPU kinds (CPUs are not in it).")


def _config(preset: str) -> config_lib.Config:
  path = preset
  cfg = config_lib.load(path)
  data, fsdp, tensor = (int(x) for x in _MESH.value.split(","))
  extra = {}
  if _ATTENTION.value:
    extra["attention"] = _ATTENTION.value
  if _NO_ATTN_DROPOUT.value:
    extra["attention_dropout"] = 0.0
  cfg = config_lib.with_model(cfg, dtype="bfloat16" if _PRECISION.value == "bf16" else "float32",
                              remat=_REMAT.value, **extra,
                              max_position_embeddings=max(cfg.model.max_position_embeddings,
                                                          _LENGTH.value))
  return config_lib.validate(dataclasses.replace(
      cfg, mesh=config_lib.MeshConfig(data, fsdp, tensor),
      data=dataclasses.replace(cfg.data, dir=""),  # synthetic batches; --data_dir is separate
      train=dataclasses.replace(cfg.train, batch_size=_BATCH.value, num_steps=10_000)))


def causal(cfg: config_lib.Config) -> bool:
  return cfg.model.attention_kind == "causal"


def predictions(cfg: config_lib.Config) -> int:
  """Positions the LM head runs on per sequence: the masked ones, or all of them (causal)."""
  return _LENGTH.value if causal(cfg) else config_lib.max_predictions(cfg.data, _LENGTH.value)


def packed_segments(batch: int, length: int, mean: int, seed: int = 0) -> np.ndarray:
  """`[batch, length]` segment ids 1..K: each row filled with documents of geometric lengths
  (mean `mean` tokens), the last one cut at the row's end."""
  rng = np.random.default_rng(seed)
  seg = np.zeros((batch, length), np.int32)
  for row in seg:
    at, doc = 0, 1
    while at < length:
      n = int(rng.geometric(1.0 / mean))
      row[at:at + n] = doc
      at, doc = at + n, doc + 1
  return seg


def synthetic_batch(cfg: config_lib.Config, batch: int, length: int, preds: int, seed: int = 0,
                    docs: int = 0):
  """Random tokens and masked positions; `docs` > 0 adds segment ids of packed documents."""
  host = _synthetic(cfg, batch, length, preds, seed)
  if docs:
    if cfg.model.variant == "bert":
      raise SystemExit("--docs: BERT's next-sentence task needs sentence pairs, not packed "
                       "documents; use a RoBERTa, ModernBERT or decoder preset")
    host["segment_ids"] = packed_segments(batch, length, docs, seed)
  return host


def _synthetic(cfg: config_lib.Config, batch: int, length: int, preds: int, seed: int):
  rng = np.random.default_rng(seed)
  if causal(cfg):
    return {"input_ids": rng.integers(5, cfg.model.vocab_size, (batch, length)).astype(np.int32),
            "attention_mask": np.ones((batch, length), np.int32)}
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
  program = pretraining.build_program(cfg, mesh)
  preds = predictions(cfg)
  host = synthetic_batch(cfg, _BATCH.value, _LENGTH.value, preds, docs=_DOCS.value)
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
      batches = loop.device_prefetch(host_it, program.batch_sharding)
      fed, state = _timed(compiled, state, lambda: next(batches))
  tokens = _BATCH.value * _LENGTH.value
  step = float(np.median(times))
  flops = metrics_lib.flops_per_token(cfg.model, _LENGTH.value, preds) * tokens
  peak = metrics_lib.peak_flops(jax.devices()[0].device_kind, _PEAK.value * 1e12)
  if peak is None and jax.devices()[0].platform == "cpu":
    peak = cpu_matmul_peak()  # the CPU's measured fp32 matmul rate stands in for a data sheet
  mem = compiled.memory_analysis()
  row = {
      "preset": pathlib.Path(preset).stem, "seq_len": _LENGTH.value,
      "batch_size": _BATCH.value, "precision": _PRECISION.value, "mesh": dict(mesh.shape),
      "attention": cfg.model.attention, "attention_dropout": cfg.model.attention_dropout,
      "kernels": transformer.describe_kernels(cfg.model, _LENGTH.value, packed=bool(_DOCS.value)),
      "docs": _DOCS.value,
      "params": params_lib.count(program.model.abstract_params),
      "compile_s": round(compile_s, 2), "step_time_s": step,
      "step_time_p90_s": float(np.percentile(times, 90)), "tokens_per_sec": tokens / step,
      "model_tflops_per_sec": flops / step / 1e12,
      "mfu": flops / step / (peak * jax.device_count()) if peak else None,
      "peak_tflops_per_device": peak / 1e12 if peak else None,
      "peak_memory_bytes": (int(mem.argument_size_in_bytes + mem.output_size_in_bytes
                                + mem.temp_size_in_bytes - mem.alias_size_in_bytes)
                            if mem is not None else None),
  }
  if fed is not None:
    row["loader_fed_tokens_per_sec"] = tokens / float(np.median(fed))
    row["fed_over_bare"] = row["loader_fed_tokens_per_sec"] / row["tokens_per_sec"]
  return row


@functools.lru_cache(maxsize=None)  # once per run: every row of a sweep uses the same peak
def cpu_matmul_peak(n: int = 2048, reps: int = 10) -> float:
  """FLOP/s of XLA's fp32 matmul on one CPU device (best of 3): the CPU's practical peak."""
  import jax.numpy as jnp
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = 0.0
  for _ in range(3):
    t0 = time.perf_counter()
    for _ in range(reps):
      out = f(a)
    out.block_until_ready()
    best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - t0))
  return best


def hf_model(m: config_lib.ModelConfig):
  """The transformers model of the same architecture (its default attention)."""
  import transformers
  if m.variant == "gpt2":
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=m.vocab_size, n_embd=m.hidden_size, n_layer=m.num_layers,
        n_head=m.num_heads, n_inner=m.intermediate_size, n_positions=m.max_position_embeddings,
        resid_pdrop=m.hidden_dropout, embd_pdrop=m.hidden_dropout,
        attn_pdrop=m.attention_dropout, layer_norm_epsilon=m.layer_norm_eps))
  if m.variant == "modernbert":
    from jaxpt.hf import modernbert
    return transformers.ModernBertForMaskedLM(transformers.ModernBertConfig(
        **modernbert.config_to_hf(m, "ModernBertForMaskedLM")))
  return transformers.BertForPreTraining(transformers.BertConfig(
      vocab_size=m.vocab_size, hidden_size=m.hidden_size, num_hidden_layers=m.num_layers,
      num_attention_heads=m.num_heads, intermediate_size=m.intermediate_size,
      max_position_embeddings=m.max_position_embeddings, type_vocab_size=m.type_vocab_size,
      hidden_dropout_prob=m.hidden_dropout, attention_probs_dropout_prob=m.attention_dropout,
      layer_norm_eps=m.layer_norm_eps))


def measure_hf(preset: str) -> dict:
  """The same training step in PyTorch: the transformers class + torch AdamW."""
  import os
  import torch
  import transformers
  torch.set_num_threads(os.cpu_count())
  cfg = _config(preset)
  m = cfg.model
  model = hf_model(m)
  dtype = torch.bfloat16 if _PRECISION.value == "bf16" else None
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
  preds = predictions(cfg)
  host = synthetic_batch(cfg, _BATCH.value, _LENGTH.value, preds, docs=_DOCS.value)
  # --docs: the same tokens as run_mlm's concatenated blocks; HF's classes take no document
  # mask (their SDPA path attends across documents), so segment_ids are not passed
  inputs = {"input_ids": torch.tensor(host["input_ids"], dtype=torch.long),
            "attention_mask": torch.tensor(host["attention_mask"], dtype=torch.long)}
  if causal(cfg):  # GPT2LMHeadModel shifts the labels itself
    inputs["labels"] = inputs["input_ids"]
  else:
    labels = np.full(host["input_ids"].shape, -100, np.int64)  # HF: -100 = not predicted
    np.put_along_axis(labels, host["masked_positions"], host["masked_ids"], axis=1)
    inputs["labels"] = torch.tensor(labels)
    if m.variant == "bert":
      inputs.update(token_type_ids=torch.tensor(host["token_type_ids"], dtype=torch.long),
                    next_sentence_label=torch.tensor(host["nsp_labels"], dtype=torch.long))

  def step():
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
      loss = model(**inputs).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)

  for _ in range(2):
    step()
  times = []
  for _ in range(_STEPS.value):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
  tokens = _BATCH.value * _LENGTH.value
  step_s = float(np.median(times))
  # The FLOPs HF's step actually performs: the LM head over every position.
  flops_done = metrics_lib.flops_per_token(m, _LENGTH.value, _LENGTH.value) * tokens
  return {"preset": pathlib.Path(preset).stem, "side": "hf", "seq_len": _LENGTH.value,
          "batch_size": _BATCH.value, "precision": _PRECISION.value,
          "step_time_s": step_s, "step_time_p90_s": float(np.percentile(times, 90)),
          "tokens_per_sec": tokens / step_s, "executed_tflops_per_sec": flops_done / step_s / 1e12,
          "peak_memory_bytes": _peak_rss(), "torch": torch.__version__,
          "transformers": transformers.__version__}


def _peak_rss() -> int:
  import resource
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _side_env(side: str) -> dict[str, str]:
  """The side's environment: with or without the allocator tunable, as `--huge_pages` says."""
  base = allocator.untuned_environment(dict(os.environ))
  if _HUGE.value == "both" or (_HUGE.value == "jaxpt" and side == "jaxpt"):
    unset = {k: v for k, v in base.items() if k != allocator.OPT_OUT}
    return allocator.tuned_here(unset) or base
  return base


def compare(preset: str) -> list[dict]:
  """Alternates subprocesses of each side; returns the per-run rows."""
  import subprocess
  import sys
  rows = []
  passthrough = [f"--preset={preset}", f"--batch_size={_BATCH.value}",
                 f"--seq_len={_LENGTH.value}", f"--steps={_STEPS.value}",
                 f"--precision={_PRECISION.value}", f"--mesh={_MESH.value}",
                 f"--remat={_REMAT.value}", f"--peak_tflops={_PEAK.value}",
                 f"--docs={_DOCS.value}"]
  for _ in range(_ROUNDS.value):
    for side in ("jaxpt", "hf"):
      proc = subprocess.run([sys.executable, __file__, f"--side={side}", *passthrough],
                            capture_output=True, text=True, check=False, env=_side_env(side))
      if proc.returncode:
        raise SystemExit(f"{side} run failed:\n{proc.stderr[-3000:]}")
      rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
      print(json.dumps(rows[-1]), flush=True)
  return rows


def _compare_table(preset: str, rows: list[dict]) -> str:
  def med(side, key):
    return float(np.median([r[key] for r in rows if r.get("side", "jaxpt") == side]))
  j, h = med("jaxpt", "tokens_per_sec"), med("hf", "tokens_per_sec")
  jm, hm = med("jaxpt", "peak_memory_bytes"), med("hf", "peak_memory_bytes")
  mfu = [r["mfu"] for r in rows if r.get("side", "jaxpt") == "jaxpt" and r.get("mfu")]
  return (f"| {preset} | {j:,.0f} | {h:,.0f} | {j / h:.2f}x | {jm / 2**20:,.0f} | "
          f"{hm / 2**20:,.0f} | " + (f"{np.median(mfu):.1%}" if mfu else "n/a") + " |")


def _chart(rows: list[dict], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for preset in dict.fromkeys(r["preset"] for r in rows):
    mine = [r for r in rows if r["preset"] == preset]
    x = [r["batch_size"] for r in mine]
    axes[0].plot(x, [r["tokens_per_sec"] for r in mine], "o-", label=preset)
    if all(r["mfu"] for r in mine):
      axes[1].plot(x, [100 * r["mfu"] for r in mine], "o-", label=preset)
  for ax, title in zip(axes, ("tokens/s", "MFU (%)")):
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"global batch (sequences of {rows[0]['seq_len']})")
    ax.set_title(title)
    ax.legend()
  fig.suptitle(f"jaxpt train step, {rows[0]['precision']}, {jax.device_count()} x "
               f"{jax.devices()[0].device_kind}")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main(argv):
  del argv
  if not _SIDE.value and not _COMPARE.value and _HUGE.value != "none":
    allocator.reexec_with_huge_pages()  # as the `jaxpt` command does
  if _SIDE.value:
    preset = _PRESETS.value[0]
    row = measure(preset) if _SIDE.value == "jaxpt" else measure_hf(preset)
    row["glibc_tunables"] = os.environ.get("GLIBC_TUNABLES", "")
    if _SIDE.value == "jaxpt":
      row.update(side="jaxpt", process_peak_rss_bytes=_peak_rss())
      row["peak_memory_bytes"] = row["process_peak_rss_bytes"]  # like for like with torch
    print(json.dumps(row), flush=True)
    return
  if _COMPARE.value:
    lines = ["| preset | jaxpt tokens/s | HF PyTorch tokens/s | ratio | jaxpt peak RSS (MiB) | "
             "HF peak RSS (MiB) | jaxpt MFU |", "|---|---|---|---|---|---|---|"]
    for preset in _PRESETS.value:
      lines.append(_compare_table(pathlib.Path(preset).stem, compare(preset)))
    print("\n".join(lines))
    return
  dev = jax.devices()[0]
  print(f"# {datetime.date.today()} | {platform.node()} | {jax.device_count()} x "
        f"{dev.device_kind} ({dev.platform}) | jax {jax.__version__}")
  rows = []
  for preset in _PRESETS.value:
    for batch in _SWEEP.value or [_BATCH.value]:
      flags.FLAGS.batch_size = int(batch)
      rows.append(measure(preset))
      print(json.dumps(rows[-1]), flush=True)
  if _PNG.value:
    _chart(rows, _PNG.value)
  keys = ["preset", "batch_size", "params", "step_time_s", "tokens_per_sec", "model_tflops_per_sec", "mfu",
          "peak_memory_bytes", "compile_s"] + (["loader_fed_tokens_per_sec", "fed_over_bare"]
                                               if _DATA.value else [])
  print("| " + " | ".join(keys) + " |")
  print("|" + "---|" * len(keys))
  for row in rows:
    print("| " + " | ".join(f"{row[k]:.4g}" if isinstance(row[k], float) else str(row[k])
                            for k in keys) + " |")


if __name__ == "__main__":
  app.run(main)
