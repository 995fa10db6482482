"""`jaxpt compress`: pruning and int8 quantization of a fine-tuned classifier.

Pruning acts on the kernels of the encoder layers' dense layers (`params.prunable`: attention
query/key/value/output, MLP up/gate/down); embeddings, LayerNorms, biases, pooler and classifier stay.
- `magnitude`: global unstructured pruning, the `sparsity` fraction of those weights with the
  smallest |w| across all layers set to zero (exactly that many).
- `heads`: structured pruning of attention heads, the `sparsity` fraction of all heads with the
  lowest importance removed (their query/key/value columns and output rows zeroed). Importance
  is Michel et al. (2019)'s: |dL/dg_h| for a gate g_h = 1 on the head's output, which equals
  sum(W_out[h] * dL/dW_out[h]); summed over the validation split's batches.
- `--recover_steps N`: N more fine-tuning steps on the train split with `optim.keep_pruned`
  (no update reaches a pruned weight), in OUT/recovery/, an ordinary fine-tuning workdir.

Quantization (post-training, with qwix): the same dense layers get int8 weights, symmetric,
one scale per output channel (absmax); `w8a8` also quantizes their input activations to int8
per token at run time (dynamic range). The embedding tables are stored int8 with a scale per
row and dequantized when loaded (qwix intercepts matmuls, not table lookups).

OUT is a workdir `jaxpt evaluate` scores: task.json and tokenizer/ (copied), compression.json
(what was done, sparsity per layer, weight bytes) and model/ (a params-only Orbax checkpoint,
int8 values and float32 scales where quantized). It appears whole or not at all.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import qwix
from flax import nnx, traverse_util

from jaxpt import config as config_lib
from jaxpt import sharding
from jaxpt.errors import UserError
from jaxpt.files import atomic_directory
from jaxpt.models import params as params_lib
from jaxpt.tasks import classification
from jaxpt.train import checkpoint as ckpt_lib
from jaxpt.train.loop import TrainError

SCHEMES = ("magnitude", "heads")
QUANTIZE = ("none", "int8", "w8a8")
COMPRESSION_JSON = "compression.json"
MODEL_DIR = "model"
_TABLES = tuple(("encoder", "embeddings", name, "embedding")
                for name in ("word", "position", "token_type"))


class CompressError(UserError, ValueError):
  """Bad arguments or a workdir that cannot be compressed; the message names which."""


@dataclasses.dataclass
class Options:
  """`jaxpt compress`'s options (each one a flag of the same name)."""

  prune: float = config_lib.option(0.0, "Sparsity in [0, 1): the fraction of the encoder's "
                                   "dense weights (magnitude) or of its attention heads "
                                   "(heads) removed.")
  scheme: str = config_lib.option("magnitude", "Pruning scheme: magnitude (global, "
                                  "unstructured) or heads (attention heads by importance).",
                                  SCHEMES)
  recover_steps: int = config_lib.option(0, "Fine-tune this many steps after pruning with the "
                                         "mask held (0: no recovery).")
  quantize: str = config_lib.option("none", "none, int8 (int8 weights of the dense layers, "
                                    "per output channel) or w8a8 (also int8 activations, "
                                    "dynamic).", QUANTIZE)
  overwrite: bool = config_lib.option(False, "Replace --out if it exists.")


def check_options(o: Options) -> None:
  if not 0.0 <= o.prune < 1.0:
    raise CompressError(f"--prune={o.prune}: the sparsity must be in [0, 1)")
  if o.scheme not in SCHEMES:
    raise CompressError(f"--scheme={o.scheme!r}: unknown; one of {', '.join(SCHEMES)}")
  if o.quantize not in QUANTIZE:
    raise CompressError(f"--quantize={o.quantize!r}: unknown; one of {', '.join(QUANTIZE)}")
  if o.recover_steps < 0:
    raise CompressError(f"--recover_steps={o.recover_steps}: must be >= 0")
  if o.recover_steps and not o.prune:
    raise CompressError("--recover_steps needs --prune > 0 (there is nothing to recover from)")


# ---------------------------------------------------------------------------------------------
# Pruning, on host (numpy) parameter trees.


def _flat(params) -> dict[str, np.ndarray]:
  """{dotted path: writable numpy copy}; stacked (scanned) layers stay stacked."""
  return {k: np.array(v) for k, v in params_lib.flatten(params).items()}


def _layers(flat: dict, name: str) -> list[tuple[int, str, np.ndarray]]:
  return params_lib.layer_slices(name, flat[name])


def sparsity_report(params) -> dict:
  """Zeros per prunable kernel and layer, and over all of them."""
  flat = _flat(params)
  per_layer, zeros, total = {}, 0, 0
  for name in sorted(p for p in flat if params_lib.prunable(p)):
    for layer, sub, a in _layers(flat, name):
      per_layer[f"layer{layer}/" + sub.rsplit(".", 1)[0].replace(".", "/")] = round(
          float(np.mean(a == 0)), 4)
      zeros, total = zeros + int(np.sum(a == 0)), total + a.size
  return {"prunable_weights": total, "zeros": zeros,
          "sparsity": zeros / max(total, 1), "per_layer": per_layer}


def magnitude_prune(params, sparsity: float):
  """Global unstructured pruning: exactly round(sparsity * n) of the n prunable weights, those
  of smallest magnitude over all layers together, set to zero. Returns a new tree."""
  flat = _flat(params)
  paths = [p for p in flat if params_lib.prunable(p)]
  magnitudes = np.concatenate([np.abs(flat[p]).ravel() for p in paths])
  k = int(round(sparsity * magnitudes.size))
  keep = np.ones(magnitudes.size, bool)
  if k:
    keep[np.argpartition(magnitudes, k - 1)[:k]] = False
  offset = 0
  for p in paths:
    n = flat[p].size
    flat[p] = np.where(keep[offset:offset + n].reshape(flat[p].shape), flat[p], 0)
    offset += n
  return params_lib.unflatten(flat)


def _attention_slices(flat: dict, module: str, leaf: str) -> list[np.ndarray]:
  """Per layer, in order, a view of an attention parameter (edits reach `flat`)."""
  suffix = f".attention.{module}.{leaf}"
  found = [(layer, a) for name in flat
           if name.startswith(params_lib.LAYERS) and name.endswith(suffix)
           for layer, _, a in _layers(flat, name)]
  return [a for _, a in sorted(found, key=lambda item: item[0])]


def head_importance(runner: classification.ClassificationTask, params,
                    split: str = "validation") -> np.ndarray:
  """[layers, heads]: |sum over batches of sum(W_out[h] * dL/dW_out[h])| (Michel et al. 2019)."""
  scores = 0.0
  w = np.stack(_attention_slices(_flat(jax.device_get(params)), "out", "kernel"))
  # w: [layers, heads, head_dim, embed]
  with jax.set_mesh(runner.mesh):
    for batch, _ in runner.eval_batches(split):
      g = np.stack(_attention_slices(_flat(jax.device_get(runner.grad_step(params, batch))),
                                     "out", "kernel"))
      scores = scores + np.sum(w * g, axis=(2, 3))
  return np.abs(scores)


def head_prune(params, importance: np.ndarray, fraction: float):
  """Removes the round(fraction * layers * heads) least important heads; returns (new tree,
  [layers, heads] bool of removed heads)."""
  num = int(round(fraction * importance.size))
  removed = np.zeros(importance.size, bool)
  removed[np.argsort(importance.ravel(), kind="stable")[:num]] = True
  removed = removed.reshape(importance.shape)
  flat = _flat(params)
  # The head axis: q/k/v kernels [embed, heads, head_dim], their biases [heads, head_dim], the
  # output kernel [heads, head_dim, embed].
  for module, leaf, axis in (("query", "kernel", 1), ("key", "kernel", 1),
                             ("value", "kernel", 1), ("query", "bias", 0), ("key", "bias", 0),
                             ("value", "bias", 0), ("out", "kernel", 0)):
    for l, a in enumerate(_attention_slices(flat, module, leaf)):
      index = [slice(None)] * a.ndim
      index[axis] = removed[l]
      a[tuple(index)] = 0  # a view into flat: edits in place
  return params_lib.unflatten(flat), removed


# ---------------------------------------------------------------------------------------------
# Quantization.


def _rules(mode: str) -> list:
  act = jnp.int8 if mode == "w8a8" else None
  pattern = r"encoder/layers/.*(" + "|".join(params_lib.PRUNABLE) + ")$"
  return [qwix.QuantizationRule(module_path=pattern, weight_qtype=jnp.int8, act_qtype=act)]


def _dummy_inputs(runner: classification.ClassificationTask):
  ids = jnp.zeros((1, runner.setup.cfg.finetune.max_length), jnp.int32)
  return ids, ids, jnp.ones_like(ids)


def _looped_graphdef(runner: classification.ClassificationTask):
  """The classifier's graph with a Python loop of layers: qwix quantizes a layer's weights
  where it meets them, and inside `nnx.scan` it meets per-layer slices of stacked ones."""
  cfg = dataclasses.replace(runner.setup.cfg.model, scan_layers=False)
  task = runner.setup.task
  with nnx.use_eager_sharding(False):
    graphdef, _ = nnx.eval_shape(lambda: nnx.split(classification.create_classifier(
        cfg, len(task.labels), task.kind, 0)))
  return graphdef


def _unscan(params, cfg) -> dict:
  """Stacked (scanned) layer parameters -> one entry per layer, as a loop of layers has."""
  if not cfg.model.scan_layers:
    return params
  return params_lib.unstack_tree(params, cfg.model.num_layers)


def quantized_model(runner: classification.ClassificationTask, params, mode: str) -> nnx.Module:
  """The classifier with `params` (host or device arrays), its dense layers quantized by qwix."""
  params = _unscan(jax.device_get(params), runner.setup.cfg)
  model = nnx.merge(_looped_graphdef(runner), params)
  return qwix.quantize_model(model, qwix.PtqProvider(_rules(mode)), *_dummy_inputs(runner))


def _abstract_quantized(runner: classification.ClassificationTask, mode: str) -> nnx.Module:
  def build():
    params = _unscan(jax.tree.map(jnp.zeros_like, runner.abstract_params), runner.setup.cfg)
    model = nnx.merge(_looped_graphdef(runner), params)
    return qwix.quantize_model(model, qwix.PtqProvider(_rules(mode)), *_dummy_inputs(runner))
  return nnx.eval_shape(build)


def quantize_rows(table: np.ndarray) -> dict:
  """int8 values and a float32 scale per row (symmetric, absmax), with qwix."""
  q = qwix.quantize(jnp.asarray(table, jnp.float32), jnp.int8, channelwise_axes=[0])
  return {"qvalue": np.asarray(q.qvalue), "scale": np.asarray(q.scale)}


def dequantize_rows(q: dict) -> np.ndarray:
  return np.asarray(q["qvalue"], np.float32) * np.asarray(q["scale"], np.float32)


def weight_bytes(tree) -> int:
  return sum(int(np.asarray(x).nbytes) for x in jax.tree.leaves(tree))


def _disk_bytes(directory: str) -> int:
  return sum(os.path.getsize(os.path.join(root, f))
             for root, _, files in os.walk(directory) for f in files)


def quantized_predict_step(runner: classification.ClassificationTask, mode: str):
  """(graphdef-bound predict step, jitted) for a quantized model's state."""
  graphdef, _ = nnx.split(_abstract_quantized(runner, mode))
  predict = runner.make_predict_step(graphdef)
  rep = sharding.replicated(runner.mesh)
  return jax.jit(predict, in_shardings=(rep, runner.batch_sh), out_shardings=(rep, rep, rep))


# ---------------------------------------------------------------------------------------------
# The command.


def compress(workdir: str, out: str, opts: Options, *, progress: bool = True) -> dict:
  """Compresses WORKDIR's best checkpoint into OUT; returns compression.json's content."""
  check_options(opts)
  workdir, out = os.path.abspath(workdir), os.path.abspath(out)
  if out == workdir:
    raise CompressError(f"--out={out}: must differ from --workdir")
  if os.path.exists(out) and os.listdir(out) and not opts.overwrite:
    raise CompressError(f"--out={out}: already exists (pass --overwrite to replace it)")
  if os.path.exists(os.path.join(workdir, COMPRESSION_JSON)):
    raise CompressError(f"--workdir={workdir}: already compressed; compress the fine-tuning "
                        "workdir it came from")
  if not os.path.exists(os.path.join(workdir, classification.TASK_JSON)):
    raise CompressError(f"--workdir={workdir}: no {classification.TASK_JSON}; not a trained "
                        "classifier (`jaxpt finetune` writes one)")
  try:
    runner, state, info, step = classification.load_best(workdir)
  except TrainError as e:
    raise CompressError(f"--workdir={workdir}: {e}") from None
  cfg = runner.setup.cfg
  params = jax.device_get(state.eval_params)
  del state
  record = {"source": workdir, "source_step": step, "config": config_lib.to_dict(cfg),
            "prune": opts.prune, "scheme": opts.scheme if opts.prune else None,
            "recover_steps": opts.recover_steps, "quantize": opts.quantize,
            "dense_bytes": weight_bytes(params)}
  t0 = time.perf_counter()
  # One writer per output: a sibling lock file (OUT itself appears only at the final rename).
  parent, name = os.path.split(out)
  lock = ckpt_lib.WorkdirLock(out, os.path.join(parent, f".{name}.lock"))
  note = lock.acquire()
  if note:
    print(f"jaxpt compress: {out}: {note}", flush=True)
  try:
    return _write(runner, params, info, opts, out, record, t0, progress)
  finally:
    lock.release()


def _write(runner, params, info: dict, opts: "Options", out: str, record: dict, t0: float,
           progress: bool) -> dict:
  workdir = record["source"]
  with atomic_directory(out) as tmp:
    tmp = str(tmp)
    if opts.prune:
      if opts.scheme == "magnitude":
        params = magnitude_prune(params, opts.prune)
      else:
        importance = head_importance(runner, _place(params, runner))
        params, removed = head_prune(params, importance, opts.prune)
        record["head_importance"] = np.round(importance, 6).tolist()
        record["heads_removed"] = removed.astype(int).tolist()
      record["after_pruning"] = sparsity_report(params)
      if opts.recover_steps:
        params = _recover(runner, params, info, opts.recover_steps,
                          os.path.join(tmp, "recovery"), progress)
    record["sparsity"] = (sparsity_report(params) if opts.recover_steps or not opts.prune
                          else record["after_pruning"])
    if opts.quantize != "none":
      qmodel = quantized_model(runner, params, opts.quantize)
      saved = nnx.to_pure_dict(nnx.state(qmodel))
      saved = traverse_util.flatten_dict(saved)
      for table in (t for t in _TABLES if t in saved):
        saved[table] = quantize_rows(saved[table])  # a {qvalue, scale} dict in its place
      saved = traverse_util.unflatten_dict(saved)
    else:
      saved = params
    saved = jax.tree.map(np.asarray, saved)
    ckpt_lib.save_params(os.path.join(tmp, MODEL_DIR), saved)
    record.update(weight_bytes=weight_bytes(saved), disk_bytes=_disk_bytes(
        os.path.join(tmp, MODEL_DIR)), seconds=round(time.perf_counter() - t0, 1))
    shutil.copy(os.path.join(workdir, classification.TASK_JSON),
                os.path.join(tmp, classification.TASK_JSON))
    shutil.copytree(os.path.join(workdir, "tokenizer"), os.path.join(tmp, "tokenizer"))
    with open(os.path.join(tmp, COMPRESSION_JSON), "w", encoding="utf-8") as f:
      json.dump(record, f, indent=2)
      f.write("\n")
  return record


def _place(params, runner: classification.ClassificationTask):
  with jax.set_mesh(runner.mesh):
    return sharding.place(params, runner.param_sh)


def _recover(runner: classification.ClassificationTask, params, info: dict, steps: int,
             workdir: str, progress: bool):
  """`steps` of fine-tuning from the pruned `params` with the mask held; the best validation
  checkpoint's parameters."""
  cfg = runner.setup.cfg
  cfg = dataclasses.replace(
      cfg, optim=dataclasses.replace(cfg.optim, keep_pruned=True,
                                     warmup_steps=min(cfg.optim.warmup_steps, steps // 10)),
      train=dataclasses.replace(cfg.train, num_steps=steps,
                                eval_every_steps=max(1, steps // 4)),
      finetune=dataclasses.replace(cfg.finetune, epochs=0.0, eval_every_epochs=0.0,
                                   evaluations=0, warmup_fraction=0.0))
  s = runner.setup
  setup = classification.Setup(config_lib.validate(cfg), s.task, s.tokenizer, params,
                         f"{info['init']} (pruned)")
  classification.finetune(setup, workdir, progress=progress)
  _, state, _, _ = classification.load_best(workdir)
  return jax.device_get(state.eval_params)


@dataclasses.dataclass
class Loaded:
  """A compressed workdir ready to predict: `runner.predict(params, split, predict_step)`."""

  runner: classification.ClassificationTask
  params: dict  # device arrays
  predict_step: object  # None: the runner's own (unquantized) step
  record: dict  # compression.json
  info: dict  # task.json


def load(workdir: str, task_spec: str | None = None) -> Loaded:
  record = json.load(open(os.path.join(workdir, COMPRESSION_JSON)))
  info = classification.read_task_info(workdir)
  cfg = classification.config_from_dict(record["config"])
  runner = classification.runner_for(workdir, info, cfg, task_spec)
  saved = ckpt_lib.restore_params(os.path.join(workdir, MODEL_DIR))
  if record["quantize"] == "none":
    return Loaded(runner, _place(saved, runner), None, record, info)
  flat = traverse_util.flatten_dict(saved)
  for table in (t for t in _TABLES if t + ("qvalue",) in flat):
    flat[table] = dequantize_rows({k[-1]: flat.pop(k) for k in list(flat) if k[:4] == table})
  params = jax.device_put(traverse_util.unflatten_dict(flat), sharding.replicated(runner.mesh))
  return Loaded(runner, params, quantized_predict_step(runner, record["quantize"]), record, info)


def is_compressed(workdir: str) -> bool:
  return os.path.exists(os.path.join(workdir, COMPRESSION_JSON))


def evaluate(workdir: str, *, split: str = "test", task_spec: str | None = None,
             out: str | None = None) -> dict:
  """A compressed workdir's model on `split`: report, written like `jaxpt evaluate`'s."""
  c = load(workdir, task_spec)
  report = c.runner.report(c.params, split, c.predict_step)
  report.update(step=c.record["source_step"], task=c.info["task"], init=c.info["init"],
                compression={k: c.record[k] for k in ("prune", "scheme", "recover_steps",
                                                      "quantize", "weight_bytes")})
  if c.runner.is_main:
    classification.write_report(workdir, split, report, out)
  return report
