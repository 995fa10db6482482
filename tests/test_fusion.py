"""A learning-rate sweep picks its best validation run and resumes past finished candidates;
an ensemble of a run with itself is the run; a soup of one run is the run and a soup of two
is the mean of their weights; runs of other tasks or starts are refused; the default recipe
learns a planted task from scratch."""

import dataclasses
import json
import os
import shutil

import jax
import numpy as np
import pytest

from jaxpt import cli, fusion, sweep
from jaxpt import config as config_lib
from jaxpt.models import params as params_lib
from jaxpt.tasks import classification
from test_finetune import tiny, vocab_file, write_task  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow  # fine-tuning runs


@pytest.fixture(scope="module")
def swept(tmp_path_factory, vocab_file):
  """A sweep of two learning rates on the planted task: one too small to learn in 72 steps."""
  root = tmp_path_factory.mktemp("sweep")
  task = write_task(root / "task")
  workdir = root / "run"
  result = sweep.run(tiny(), ["optim.learning_rate=1e-5,2e-3"], str(task), "scratch",
                     vocab_file, str(workdir), progress=False)
  return task, workdir, result


def read(path):
  return json.loads(path.read_text())


def test_the_sweep_picks_the_best_validation_run_and_a_rerun_skips_finished(
    swept, vocab_file, capsys):
  task, workdir, result = swept
  rows = {r["name"]: r for r in result["candidates"]}
  low, high = "optim.learning_rate=1e-5", "optim.learning_rate=2e-3"
  assert set(rows) == {low, high}
  for name, row in rows.items():  # each row is its run's own validation score
    validation = read(workdir / "sweep" / name / "eval_validation.json")
    assert row["validation f1_macro"] == validation["f1_macro"]
  assert rows[high]["validation f1_macro"] > rows[low]["validation f1_macro"] + 0.3
  assert result["best"] == high == read(workdir / "sweep.json")["best"]
  # WORKDIR is the best run: its report, and a best checkpoint `evaluate` scores alike.
  assert read(workdir / "eval.json") == read(workdir / "sweep" / high / "eval.json")
  again = classification.evaluate_workdir(str(workdir), split="test",
                                          out=str(workdir / "again.json"))
  assert again["f1_macro"] == read(workdir / "eval.json")["f1_macro"]

  # A re-run with one more candidate trains only that one.
  finished = {n: os.path.getmtime(workdir / "sweep" / n / "eval.json") for n in rows}
  capsys.readouterr()
  sweep.run(tiny(), ["optim.learning_rate=1e-5,2e-3,3e-4"], str(task), "scratch", vocab_file,
            str(workdir), progress=False)
  out = capsys.readouterr().out
  assert out.count("finished earlier; skipped") == 2 and "<- best" in out
  for name, mtime in finished.items():
    assert os.path.getmtime(workdir / "sweep" / name / "eval.json") == mtime
  table = read(workdir / "sweep.json")
  assert len(table["candidates"]) == 3
  scores = {r["name"]: r["validation f1_macro"] for r in table["candidates"]}
  assert table["best"] == max(scores, key=scores.get)


def test_an_ensemble_of_a_run_with_itself_is_the_run(swept, tmp_path):
  _, workdir, result = swept
  run = str(workdir / "sweep" / result["best"])
  report = fusion.ensemble([run, run], str(tmp_path / "ens"))
  alone = read(workdir / "sweep" / result["best"] / "eval.json")
  for key in ("accuracy", "f1_macro", "mcc", "confusion_matrix"):
    assert report[key] == alone[key]
  assert read(tmp_path / "ens" / "eval.json")["f1_macro"] == alone["f1_macro"]
  assert [m["f1_macro"] for m in report["members"]] == [alone["f1_macro"]] * 2


def _best_params(workdir):
  _, state, _, _ = classification.load_best(str(workdir))
  return jax.device_get(state.params)


def test_a_soup_of_one_is_the_run_and_of_two_the_mean(swept, tmp_path, capsys):
  _, workdir, result = swept
  names = [r["name"] for r in result["candidates"]]
  runs = [str(workdir / "sweep" / n) for n in names]
  one = fusion.soup(runs[:1], str(tmp_path / "one"))
  alone = read(workdir / "sweep" / names[0] / "eval.json")
  for key in ("accuracy", "f1_macro", "confusion_matrix"):
    assert one[key] == alone[key]
  flat = params_lib.flatten(_best_params(tmp_path / "one"))
  for name, value in params_lib.flatten(_best_params(runs[0])).items():
    np.testing.assert_array_equal(flat[name], value)

  assert cli.main(["jaxpt", "average", f"--workdirs={','.join(runs)}",
                   f"--out={tmp_path / 'two'}"]) == 0
  assert "uniform soup of 2 of 2 runs" in capsys.readouterr().out
  soup = params_lib.flatten(_best_params(tmp_path / "two"))
  a, b = (params_lib.flatten(_best_params(r)) for r in runs)
  for name in a:
    np.testing.assert_allclose(soup[name], (a[name] + b[name]) / 2, rtol=1e-6, atol=1e-7)
  assert (tmp_path / "two" / "eval.json").exists()
  # The soup is a fine-tuning workdir: `jaxpt evaluate` scores it.
  assert cli.main(["jaxpt", "evaluate", f"--workdir={tmp_path / 'two'}"]) == 0
  # Greedy: the better run first; the worse one joins only if validation does not fall.
  greedy = fusion.soup(runs, str(tmp_path / "greedy"), greedy=True)
  chosen = [m["workdir"] for m in greedy["members"] if m["chosen"]]
  assert chosen[0] == str(workdir / "sweep" / result["best"]) or len(chosen) == 2
  with pytest.raises(fusion.FusionError, match="already holds a run"):
    fusion.soup(runs[:1], str(tmp_path / "one"))


def test_runs_of_other_labels_or_starts_are_refused(swept, tmp_path, capsys):
  _, workdir, result = swept
  run = workdir / "sweep" / result["best"]
  other = tmp_path / "other"
  shutil.copytree(run, other)
  info = read(run / "task.json")
  (other / "task.json").write_text(json.dumps(dict(info, labels=["x", "y", "z"])))
  assert cli.main(["jaxpt", "ensemble", f"--workdirs={run},{other}",
                   f"--out={tmp_path / 'e'}"]) == 2
  assert "fuse runs of one label set" in capsys.readouterr().err
  assert not (tmp_path / "e").exists()
  (other / "task.json").write_text(json.dumps(dict(info, init="hf:somewhere")))
  with pytest.raises(fusion.FusionError, match="a soup averages runs of one start"):
    fusion.soup([str(run), str(other)], str(tmp_path / "s"))
  assert not (tmp_path / "s").exists()


def test_the_default_recipe_learns_a_planted_task_from_scratch(tmp_path):
  # The packaged defaults (a WordPiece vocabulary trained on the task, learning rate by
  # width, warm-up share, 20 evaluations, early stopping, length buckets) with only the model
  # made tiny; 128 training labels.
  task = write_task(tmp_path / "task", sizes=(("train", 128), ("validation", 64),
                                              ("test", 64)))
  cfg = config_lib.with_model(config_lib.load("finetune"), num_layers=2, hidden_size=64,
                              num_heads=4, intermediate_size=128)
  s = classification.setup(cfg, str(task), "scratch")
  assert s.cfg.optim.learning_rate == pytest.approx(1e-3)
  report = classification.finetune(s, str(tmp_path / "run"), progress=False)
  predicted = np.sum(report["confusion_matrix"], 0)  # test examples per predicted class
  assert report["f1_macro"] > 0.8, report  # the majority class scores 0.17
  assert predicted.max() < 64


def test_the_scoreboard_reuses_an_ensemble_only_of_the_same_seeds(tmp_path):
  """benchmarks/finetune_report.py caches each cell's ensemble and soup: a later run with other
  seeds (one seed, or two of three) must not report the cached three-seed fusion as its own."""
  import importlib.util
  from test_cli import REPO
  spec = importlib.util.spec_from_file_location(
      "finetune_report", os.path.join(REPO, "benchmarks", "finetune_report.py"))
  report = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(report)
  path = tmp_path / "ensemble.json"
  assert report.cached_fusion(path, [0, 1, 2]) is None
  path.write_text(json.dumps({"f1_macro": 0.5, "seeds": [0, 1, 2], "members": [0.4, 0.5, 0.6]}))
  assert report.cached_fusion(path, [0, 1, 2])["f1_macro"] == 0.5
  assert report.cached_fusion(path, [0, 1]) is None
  assert report.cached_fusion(path, [1, 2, 3]) is None
  path.write_text(json.dumps({"f1_macro": 0.5, "members": [0.4, 0.5, 0.6]}))  # before "seeds"
  assert report.cached_fusion(path, [0, 1, 2])["f1_macro"] == 0.5
  assert report.cached_fusion(path, [0, 1]) is None
