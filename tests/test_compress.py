"""Compression: pruning reaches its sparsity and the mask holds through recovery; head pruning
removes whole heads; int8 logits stay close to fp32; compressed workdirs restore and evaluate
through the command line; bad arguments are clear errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, traverse_util

from jaxpt.train import checkpoint as ckpt_lib
from jaxpt import cli, compress
from jaxpt.tasks import classification
from jaxpt import config as config_lib
from jaxpt.models import params as params_lib

from test_finetune import tiny, vocab_file, write_task  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow  # subprocess runs and compiles: `make test` only

INT8_REL_ERROR = 2e-2  # ||logits_int8 - logits_fp32|| / ||logits_fp32||, weights only
W8A8_REL_ERROR = 5e-2  # int8 activations too


@pytest.fixture(scope="module")
def trained(tmp_path_factory, vocab_file):
  """A small classifier fine-tuned on the planted task (scanned layers: the stacked layout)."""
  root = tmp_path_factory.mktemp("compress")
  task = write_task(root / "task")
  cfg = config_lib.with_model(tiny(), scan_layers=True)
  report = classification.finetune(classification.setup(cfg, str(task), "scratch", vocab_file),
                             str(root / "run"), progress=False)
  assert report["accuracy"] > 0.9
  runner, state, _, _ = classification.load_best(str(root / "run"))
  return root, runner, jax.device_get(state.params), report


def _saved(out) -> dict:
  return traverse_util.flatten_dict(ckpt_lib.restore_params(str(out / compress.MODEL_DIR)))


def _prunable(flat: dict) -> dict:
  return {k: np.asarray(v) for k, v in flat.items() if params_lib.prunable(k)}


def test_magnitude_pruning_reaches_the_sparsity_and_recovery_keeps_the_mask(trained):
  root, runner, params, _ = trained
  pruned = _prunable(traverse_util.flatten_dict(compress.magnitude_prune(params, 0.5)))
  n = sum(a.size for a in pruned.values())
  assert sum(int(np.sum(a == 0)) for a in pruned.values()) == round(0.5 * n)
  # Global: every kept weight is at least as large as every removed one.
  original = _prunable(traverse_util.flatten_dict(params))
  kept = np.concatenate([np.abs(original[k][pruned[k] != 0]) for k in pruned])
  removed = np.concatenate([np.abs(original[k][pruned[k] == 0]) for k in pruned])
  assert kept.min() >= removed.max()

  out = root / "magnitude"
  assert cli.main(["jaxpt", "compress", f"--workdir={root / 'run'}", f"--out={out}",
                   "--prune=0.5", "--recover_steps=8", "--noprogress"]) == 0
  record = json.loads((out / compress.COMPRESSION_JSON).read_text())
  assert record["after_pruning"]["sparsity"] == pytest.approx(0.5, abs=1e-4)
  assert set(record["sparsity"]["per_layer"]) >= {"layer0/attention/query", "layer1/mlp/down"}
  recovered = _prunable(_saved(out))
  moved = 0
  for k, before in pruned.items():
    assert np.all(recovered[k][before == 0] == 0), k  # the mask held through recovery
    moved += int(np.sum(recovered[k][before != 0] != before[before != 0]))
  assert moved > n // 4  # and recovery did train the weights that were kept
  assert (out / "recovery" / "best").is_dir()
  assert cli.main(["jaxpt", "evaluate", f"--workdir={out}"]) == 0
  report = json.loads((out / "eval.json").read_text())
  assert report["compression"]["prune"] == 0.5 and report["num_examples"] == 64


def test_head_pruning_removes_whole_heads(trained):
  root, runner, params, _ = trained
  importance = compress.head_importance(runner, compress._place(params, runner))
  layers, heads = runner.setup.cfg.model.num_layers, runner.setup.cfg.model.num_heads
  assert importance.shape == (layers, heads) and np.all(importance >= 0)
  pruned, removed = compress.head_prune(params, importance, 0.25)
  assert removed.sum() == round(0.25 * layers * heads)
  assert importance[removed].max() <= importance[~removed].min()
  attention = pruned["encoder"]["layers"]["attention"]  # scanned: [layers, ...]
  for l, h in zip(*np.nonzero(removed)):
    for name in ("query", "key", "value"):
      assert np.all(attention[name]["kernel"][l, :, h] == 0)
      assert np.all(attention[name]["bias"][l, h] == 0)
    assert np.all(attention["out"]["kernel"][l, h] == 0)
  for l, h in zip(*np.nonzero(~removed)):
    assert np.any(attention["query"]["kernel"][l, :, h] != 0)
  # Removing a head is removing its output: logits with the head's q/k/v also zeroed equal
  # those with only its output rows zeroed.
  only_out = jax.tree.map(np.array, params)
  for l, h in zip(*np.nonzero(removed)):
    only_out["encoder"]["layers"]["attention"]["out"]["kernel"][l, h] = 0
  batch = next(iter(runner.eval_batches("test")))[0]
  def logits(p):
    m = nnx.merge(runner.graphdef, p)
    return np.asarray(m(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]))
  np.testing.assert_allclose(logits(pruned), logits(only_out), atol=1e-5)


def test_int8_logits_stay_close_to_fp32(trained):
  _, runner, params, _ = trained
  batch = next(iter(runner.eval_batches("test")))[0]
  inputs = (batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
  reference = np.asarray(nnx.merge(runner.graphdef, params)(*inputs))
  for mode, bound in (("int8", INT8_REL_ERROR), ("w8a8", W8A8_REL_ERROR)):
    model = compress.quantized_model(runner, params, mode)
    logits = np.asarray(model(*inputs))
    error = np.linalg.norm(logits - reference) / np.linalg.norm(reference)
    assert 0 < error < bound, (mode, error)  # > 0: the weights really are int8
    kernels = [x for x in jax.tree.leaves(nnx.state(model)) if x.dtype == jnp.int8]
    # q, k, v, out, up, down in each layer (the scanned model's layers are unrolled for qwix)
    assert len(kernels) == 6 * runner.setup.cfg.model.num_layers


def test_quantized_checkpoint_restores_and_evaluates(trained):
  root, _, _, base = trained
  out = root / "int8"
  assert cli.main(["jaxpt", "compress", f"--workdir={root / 'run'}", f"--out={out}",
                   "--quantize=int8"]) == 0
  record = json.loads((out / compress.COMPRESSION_JSON).read_text())
  assert record["weight_bytes"] < 0.4 * record["dense_bytes"]
  saved = _saved(out)
  assert all(v.dtype == np.int8 for k, v in saved.items() if k[-1] == "qvalue")
  assert sum(1 for k in saved if k[-1] == "qvalue") == 6 * 2 + 3  # dense kernels + 3 tables
  assert cli.main(["jaxpt", "evaluate", f"--workdir={out}", "--split=test"]) == 0
  report = json.loads((out / "eval.json").read_text())
  assert report["compression"]["quantize"] == "int8"
  assert report["f1_macro"] >= base["f1_macro"] - 0.05


@pytest.mark.parametrize("flags, needle", [
    (["--prune=1.0"], "--prune=1.0: the sparsity must be in [0, 1)"),
    (["--prune=-0.1"], "--prune=-0.1"),
    (["--prune=0.3", "--scheme=blocks"], "--scheme='blocks': unknown"),
    (["--quantize=int4"], "--quantize='int4': unknown"),
    (["--recover_steps=5"], "--recover_steps needs --prune"),
])
def test_bad_arguments_are_clear_errors(trained, tmp_path, capsys, flags, needle):
  root = trained[0]
  assert cli.main(["jaxpt", "compress", f"--workdir={root / 'run'}",
                   f"--out={tmp_path / 'out'}", *flags]) == 2
  assert needle in capsys.readouterr().err
  assert not (tmp_path / "out").exists()


def test_a_workdir_without_a_classifier_is_refused(trained, tmp_path, capsys):
  root = trained[0]
  (tmp_path / "empty").mkdir()
  assert cli.main(["jaxpt", "compress", f"--workdir={tmp_path / 'empty'}",
                   f"--out={tmp_path / 'out'}", "--quantize=int8"]) == 2
  assert "not a trained classifier" in capsys.readouterr().err
  (root / "int8_again").mkdir()
  (root / "int8_again" / "keep.txt").write_text("x")
  assert cli.main(["jaxpt", "compress", f"--workdir={root / 'run'}",
                   f"--out={root / 'int8_again'}", "--quantize=int8"]) == 2
  assert "already exists" in capsys.readouterr().err
  assert (root / "int8_again" / "keep.txt").exists()


def test_a_second_writer_of_one_output_is_refused(trained, tmp_path, capsys):
  """compress holds a lock on OUT (a sibling file: OUT appears only at the final rename); a
  second writer refuses naming OUT and the holder, and writes nothing."""
  root = trained[0]
  out = tmp_path / "out"
  holder = ckpt_lib.WorkdirLock(str(out), str(tmp_path / ".out.lock"))
  assert holder.acquire() is None
  try:
    assert cli.main(["jaxpt", "compress", f"--workdir={root / 'run'}", f"--out={out}",
                     "--quantize=int8"]) == 2
    err = capsys.readouterr().err
    assert f"{out} is in use by pid" in err and "one run per workdir" in err
    assert not out.exists()
  finally:
    holder.release()
  assert cli.main(["jaxpt", "compress", f"--workdir={root / 'run'}", f"--out={out}",
                   "--quantize=int8"]) == 0  # released: the same command now runs
  assert (out / compress.COMPRESSION_JSON).exists()
