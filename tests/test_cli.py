"""The `jaxpt` command end to end, as a user runs it: prepare, pretrain, stop, resume; errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import FAST_COMPILE, REPO, start_steps


def jaxpt(*args, timeout=300):
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  return subprocess.run([sys.executable, "-m", "jaxpt", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


def one_line_error(proc, *needles):
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  for needle in needles:
    assert needle in lines[0], lines[0]
  return lines[0]


def test_help_lists_commands():
  proc = jaxpt()  # no command: the usage, and a failing status
  assert proc.returncode == 2 and "prepare" in proc.stderr and "pretrain" in proc.stderr
  proc = jaxpt("--help")
  assert proc.returncode == 0 and "prepare" in proc.stdout and "generate" in proc.stdout
  proc = jaxpt("pretrain", "--help")
  assert proc.returncode == 0 and "--workdir" in proc.stdout and "--config" in proc.stdout


@pytest.mark.slow
def test_prepare_then_pretrain_then_resume(corpus_dir, tmp_path):
  data = tmp_path / "data"
  proc = jaxpt("prepare", f"--input={corpus_dir}", f"--output={data}", "--vocab_size=128",
               "--seq_length=32", "--validation_fraction=0.2", "--noprogress")
  assert proc.returncode == 0, proc.stderr[-3000:]
  vocab = json.loads((data / "manifest.json").read_text())["tokenizer"]["vocab_size"]
  workdir = tmp_path / "run"
  common = ["--config=configs/bert_tiny.py", f"--workdir={workdir}", "--noprogress",
            f"--config.data.dir={data}", f"--config.model.vocab_size={vocab}",
            "--config.model.max_position_embeddings=32", "--config.train.batch_size=16",
            "--config.train.log_every_steps=5", "--config.train.eval_every_steps=10",
            "--config.train.eval_batches=2", "--config.checkpoint.every_steps=10",
            "--config.optim.warmup_steps=5", "--config.optim.learning_rate=1e-3"]
  proc = jaxpt("pretrain", *common, "--config.train.num_steps=20")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "20"]
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [5, 10, 15, 20]
  assert start_steps(workdir) == [0]
  for key in ("train/loss", "train/mlm_loss", "train/nsp_loss", "train/mlm_accuracy", "lr",
              "perf/tokens_per_sec"):
    assert key in rows[0]
  assert "eval/mlm_loss" in rows[1] and "eval/mlm_accuracy" in rows[3]
  assert rows[-1]["train/mlm_loss"] < rows[0]["train/mlm_loss"]
  assert os.listdir(workdir / "tensorboard")

  # Same command, a longer run: resumes from the saved step 20 instead of step 0.
  proc = jaxpt("pretrain", *common, "--config.train.num_steps=30")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert start_steps(workdir) == [0, 20]
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30]
  # (A checkpoint of another model is refused: test_resilience.py.)

  # The mean of the last two checkpoints, as a directory pretraining and export start from.
  from jaxpt import cli, pretrained
  from jaxpt.models import params as params_lib
  assert cli.main(["jaxpt", "average", f"--workdir={workdir}", "--last=2",
                   f"--out={tmp_path / 'avg'}"]) == 0
  a, b = (params_lib.flatten(pretrained.load(str(workdir), step=s).params) for s in (20, 30))
  mean = params_lib.flatten(pretrained.load(str(tmp_path / "avg")).params)
  assert set(mean) == set(a)
  for name in a:
    np.testing.assert_allclose(mean[name], (a[name] + b[name]) / 2, rtol=1e-6, atol=1e-7)
  assert cli.main(["jaxpt", "average", f"--workdir={workdir}", "--last=9",
                   f"--out={tmp_path / 'avg9'}"]) == 2
  assert not (tmp_path / "avg9").exists()


def test_config_typo_is_one_line(prepared_dir, tmp_path):
  proc = jaxpt("pretrain", "--config=configs/bert_tiny.py", f"--workdir={tmp_path}",
               "--config.optim.learnig_rate=1e-3")
  one_line_error(proc, "learnig_rate")
  proc = jaxpt("pretrain", "--config=configs/bert_tiny.py", f"--workdir={tmp_path}",
               "--config.train.batch_size=abc")
  one_line_error(proc, "batch_size")
  proc = jaxpt("pretrain", "--config=configs/no_such_preset.py", f"--workdir={tmp_path}")
  one_line_error(proc, "no_such_preset")
  proc = jaxpt("pretrain", "--config=configs/bert_tiny.py", f"--workdir={tmp_path}",
               "--config.model.num_heads=3")
  one_line_error(proc, "config.model.num_heads=3")


def test_pretrain_refuses_missing_or_unfinished_data(tmp_path):
  proc = jaxpt("pretrain", "--config=configs/bert_tiny.py", f"--workdir={tmp_path / 'w'}",
               f"--config.data.dir={tmp_path / 'nowhere'}")
  one_line_error(proc, "nowhere", "does not exist")
  (tmp_path / "half").mkdir()
  proc = jaxpt("pretrain", "--config=configs/bert_tiny.py", f"--workdir={tmp_path / 'w'}",
               f"--config.data.dir={tmp_path / 'half'}")
  one_line_error(proc, "no manifest.json")


def test_pretrain_refuses_data_the_model_cannot_hold(prepared_dir, tmp_path):
  # A tokenizer larger than the vocabulary; examples longer than the positions.
  proc = jaxpt("pretrain", "--config=configs/bert_tiny.py", f"--workdir={tmp_path / 'w'}",
               f"--config.data.dir={prepared_dir}", "--config.model.vocab_size=50")
  one_line_error(proc, "config.model.vocab_size=50")
  proc = jaxpt("pretrain", "--config=configs/bert_tiny.py", f"--workdir={tmp_path / 'w'}",
               f"--config.data.dir={prepared_dir}", "--config.model.max_position_embeddings=16")
  one_line_error(proc, "config.model.max_position_embeddings=16 is shorter than the examples",
                 "seq_length 32")


def test_a_preset_follows_the_data_unless_told_otherwise(prepared_dir, tmp_path):
  """bert_tiny (30,522 tokens) on data with a small vocabulary builds the data's vocabulary,
  and says so; an explicit --config.model.vocab_size wins (and a too small one is refused, see
  above); a warm-up as long as the run is a warning with both numbers."""
  vocab = json.loads((prepared_dir / "manifest.json").read_text())["tokenizer"]["vocab_size"]
  assert vocab < 30522

  def parameters(*extra):
    proc = jaxpt("pretrain", "--config=bert_tiny", "--dry_run", f"--config.data.dir={prepared_dir}",
                 "--config.train.batch_size=8", *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    count = int(proc.stdout.split("parameters:")[1].split()[0].replace(",", ""))
    return count, proc.stdout
  followed, out = parameters("--config.train.num_steps=50")
  assert f"model.vocab_size={vocab} from {prepared_dir}" in out
  assert "warning: optim.warmup_steps=10000 is not shorter than train.num_steps=50" in out
  explicit, out = parameters("--config.model.vocab_size=30522")
  assert "model.vocab_size=" not in out
  assert explicit - followed == (30522 - vocab) * (128 + 1)  # embedding rows + the MLM bias


@pytest.mark.parametrize("args,needle", [
    (["--output=OUT", "--input=/no/such/file.txt"], "/no/such/file.txt"),
    (["--input=EMPTY"], "--output is required"),
    (["--output=OUT", "--input=EMPTY"], "holds no input files"),
    (["--output=OUT", "--input=BLANK"], "holds no text (empty or whitespace only)"),
    (["--output=OUT", "--input=BLANK", "--on_bad_input=maybe"], "--on_bad_input='maybe'"),
    (["--output=OUT", "--input=BLANK", "--seq_length=2"], "--seq_length=2"),
    (["--output=OUT", "--input=BLANK", "--shard_documents=0"], "--shard_documents=0"),
])
def test_prepare_bad_input_is_one_line(tmp_path, args, needle):
  (tmp_path / "empty").mkdir()
  (tmp_path / "blank.txt").write_text("\n \n")
  subst = {"OUT": str(tmp_path / "out"), "EMPTY": str(tmp_path / "empty"),
           "BLANK": str(tmp_path / "blank.txt")}
  args = [a.split("=")[0] + "=" + subst.get(a.split("=", 1)[1], a.split("=", 1)[1])
          for a in args]
  proc = jaxpt("prepare", *args, "--noprogress")
  one_line_error(proc, needle)
  assert not (tmp_path / "out").exists()


def test_plot_draws_a_png_and_refuses_an_empty_workdir(tmp_path):
  rows = [{"step": s, "train/mlm_loss": 9 - s / 10, "lr": 1e-3, "perf/tokens_per_sec": 100.0}
          for s in range(1, 30)]
  rows[9].update({"eval/mlm_loss": 8.0, "eval/mlm_accuracy": 0.1, "eval/nsp_accuracy": 0.5})
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  proc = jaxpt("plot", f"--workdir={tmp_path}")
  assert proc.returncode == 0, proc.stderr
  png = tmp_path / "metrics.png"
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
  proc = jaxpt("plot", f"--workdir={tmp_path / 'nothing'}")
  one_line_error(proc, "no metrics to plot")


@pytest.mark.slow
def test_presets_by_name_from_any_directory(tmp_path):
  # From a directory without configs/: the packaged preset, by name and by its old path.
  for spec in ("bert_tiny", "configs/bert_tiny.py"):
    proc = subprocess.run([sys.executable, "-m", "jaxpt", "pretrain", f"--config={spec}",
                           "--dry_run", "--config.model.max_position_embeddings=32",
                           "--config.train.batch_size=8"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=180,
                          env=dict(os.environ, XLA_FLAGS=FAST_COMPILE))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "compiled the train step" in proc.stdout
  proc = subprocess.run([sys.executable, "-m", "jaxpt", "pretrain", "--config=bert_tiniest",
                         "--dry_run"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
  err = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(err) == 1 and "bert_tiny," in err[0], proc.stderr


def test_options_dataclasses_are_the_flags():
  """Each field of an options dataclass is a flag of its command, declared once: same name,
  default and help; parsed values land in the dataclass."""
  import dataclasses

  from absl import flags

  from jaxpt.cli import compress as compress_cli
  from jaxpt.cli import prepare as prepare_cli
  from jaxpt.cli.common import options_from
  from jaxpt.compress import Options
  from jaxpt.data.prepare import PrepareOptions
  for define, cls, argv, want in (
      (prepare_cli.define, PrepareOptions, ["--vocab_size=777", "--pack", "--examples=x"],
       dict(vocab_size=777, pack=True, examples="x")),
      (compress_cli.define, Options, ["--prune=0.25", "--quantize=int8"],
       dict(prune=0.25, quantize="int8"))):
    fv = flags.FlagValues()
    define(fv)
    for field in dataclasses.fields(cls):
      assert fv[field.name].default == field.default, field.name
      assert fv[field.name].help.startswith(field.metadata["help"]), field.name
    fv(["prog", *argv])
    assert options_from(cls, fv) == cls(**want)


def test_a_misspelt_config_key_gets_a_suggestion(tmp_path):
  proc = jaxpt("pretrain", "--config=bert_tiny", f"--workdir={tmp_path / 'w'}",
               "--config.train.num_step=5")
  one_line_error(proc, "num_step", "did you mean --config.train.num_steps?")
