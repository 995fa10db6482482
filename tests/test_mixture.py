"""Data mixtures (`data.sources`): the rows each source gives, epoch by epoch; the mix drawn
and logged against the weights; a one-source mixture is its directory; exact resume; a
mixture's evaluation per source; bad specs and unlike sources refused in one line."""

import json

import numpy as np
import pytest

from conftest import write_corpus
from jaxpt import cli
from jaxpt import config as config_lib
from jaxpt.config import ConfigError
from jaxpt.data import loader


@pytest.fixture(scope="module")
def second_dir(prepared_dir, tmp_path_factory):
  """Other documents, tokenized with the first directory's tokenizer."""
  from jaxpt.data.prepare import PrepareOptions, prepare
  root = tmp_path_factory.mktemp("second")
  out = root / "data"
  prepare([str(write_corpus(root / "text", num_files=2, seed=1))], str(out),
          PrepareOptions(tokenizer=str(prepared_dir / "tokenizer.json"), seq_length=32,
                         validation_fraction=0.2, progress=False))
  return out


def test_quotas_follow_the_weights_and_every_positive_weight_gets_rows():
  q = loader.block_quotas([0.8, 0.2])
  assert q.tolist() == [3277, 819] and q.sum() == loader.MIX_BLOCK  # 3276.8, 819.2
  q = loader.block_quotas([1.0, 1e-9, 0.0], block=100)
  assert q.tolist() == [99, 1, 0]
  q = loader.block_quotas([1, 1, 1], block=100)
  assert sorted(q.tolist()) == [33, 33, 34] and q.sum() == 100


def test_each_source_gives_every_position_once_in_order_of_its_stream():
  rs = loader.RowSources(loader.block_quotas([0.7, 0.3], block=64), seed=5)
  source, position = rs.locate(np.arange(64 * 10))
  for i, quota in enumerate(rs.quotas):
    mine = position[source == i]
    assert mine.tolist() == list(range(quota * 10))  # 0, 1, 2, ...: no gap, no repeat
  # A pure function of the row: any slice (a resumed run, one process's rows) agrees.
  s2, p2 = rs.locate(np.arange(100, 300))
  assert np.array_equal(s2, source[100:300]) and np.array_equal(p2, position[100:300])
  other = loader.RowSources(rs.quotas, seed=6).locate(np.arange(64))[0]
  assert not np.array_equal(other, source[:64])  # the order is drawn from the seed
  assert rs.counts(0, 640).tolist() == (rs.quotas * 10).tolist()


def test_loader_reads_each_row_from_its_source(prepared_dir, second_dir):
  a, b = (loader.PreparedData.open(str(d)) for d in (prepared_dir, second_dir))
  readers = [a.reader("train"), b.reader("train")]
  rs = loader.RowSources(loader.block_quotas([0.75, 0.25], block=16), seed=0)
  it = loader.batches(readers, None, batch_size=8, seed=0, row_sources=rs, read_threads=1)
  rows = np.concatenate([next(it)["input_ids"] for _ in range(6)])
  source, position = rs.locate(np.arange(48))
  for i, (reader, data) in enumerate(zip(readers, (a, b))):
    # Source i's stream is its own shuffle (seed + i), walked from position 0.
    order = [data_index for data_index in _shuffled(len(reader), seed=i)]
    want = reader.read(np.asarray([order[p % len(order)] for p in position[source == i]]))
    np.testing.assert_array_equal(rows[source == i], want["input_ids"])
  assert (source == 1).sum() == 12


def _shuffled(n, seed):
  import grain
  stream = grain.MapDataset.range(n).seed(seed).shuffle()
  return [stream[i] for i in range(n)]


def test_bad_specs_are_one_line_naming_the_field(prepared_dir, second_dir, tmp_path):
  def parse(spec, **data):
    return config_lib.mixture_sources(config_lib.DataConfig(sources=spec, **data))

  assert parse(f"{prepared_dir}:3,x={second_dir}:1") == (
      ("data", str(prepared_dir), 0.75), ("x", str(second_dir), 0.25))
  for spec, needle in ((f"{prepared_dir}", "is not [NAME=]DIR:WEIGHT"),
                       (f"{prepared_dir}:abc", "is not [NAME=]DIR:WEIGHT"),
                       (f"{prepared_dir}:-1,{second_dir}:1", "must be a finite number >= 0"),
                       (f"a={prepared_dir}:0,b={second_dir}:0", "the weights are all zero"),
                       (f"{prepared_dir}:1,{second_dir}:1", "two sources are named 'data'")):
    with pytest.raises(ConfigError, match="config.data.sources") as e:
      parse(spec)
    assert needle in str(e.value) and "\n" not in str(e.value)
  with pytest.raises(ConfigError, match="is not one of the sources"):
    parse(f"{prepared_dir}:1", dir=str(second_dir))

  # A source with another tokenizer: refused by name, before anything compiles.
  from jaxpt.data.prepare import PrepareOptions, prepare
  other = tmp_path / "other"
  prepare([str(write_corpus(tmp_path / "t", num_files=1, seed=2))], str(other),
          PrepareOptions(vocab_size=100, seq_length=32, validation_fraction=0.2,
                         progress=False))
  with pytest.raises(ConfigError, match="other .* has another tokenizer than a"):
    loader.open_mixture(config_lib.DataConfig(sources=f"a={prepared_dir}:1,{other}:1"))


@pytest.mark.slow
def test_a_mixture_trains_logs_its_mix_evaluates_each_source_and_resumes_exactly(
    prepared_dir, second_dir, tmp_path, capsys):
  vocab = json.loads((prepared_dir / "manifest.json").read_text())["tokenizer"]["vocab_size"]
  common = ["--config=configs/bert_tiny.py", "--noprogress",
            f"--config.model.vocab_size={vocab}", "--config.model.max_position_embeddings=32",
            "--config.model.hidden_size=32", "--config.model.intermediate_size=64",
            "--config.train.batch_size=64", "--config.train.log_every_steps=2",
            "--config.train.eval_every_steps=4", "--config.train.eval_batches=1",
            "--config.optim.warmup_steps=2", "--config.optim.learning_rate=1e-3",
            "--config.optim.schedule=constant",  # a 4-step run then 8 has the 8-step run's lr
            "--config.checkpoint.every_steps=4"]
  mix = f"--config.data.sources=a={prepared_dir}:0.8,b={second_dir}:0.2"

  def pretrain(workdir, *extra):
    code = cli.main(["jaxpt", "pretrain", f"--workdir={workdir}", *common, *extra])
    assert code == 0, capsys.readouterr().err[-3000:]
    return [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]

  whole = pretrain(tmp_path / "whole", mix, "--config.train.num_steps=8")
  fractions = [r["data/fraction/a"] for r in whole]
  assert all(abs(r["data/fraction/a"] + r["data/fraction/b"] - 1) < 1e-9 for r in whole)
  # 128 rows per row of the log: the share of a within 4 standard deviations of 0.8.
  assert all(abs(f - 0.8) < 4 * np.sqrt(0.8 * 0.2 / 128) for f in fractions), fractions
  evals = [r for r in whole if "eval/loss" in r]
  assert len(evals) == 2
  for r in evals:
    assert {"eval/a/mlm_loss", "eval/b/mlm_loss", "eval/a/nsp_loss"} <= set(r)
    assert min(r["eval/a/mlm_loss"], r["eval/b/mlm_loss"]) <= r["eval/mlm_loss"] <= max(
        r["eval/a/mlm_loss"], r["eval/b/mlm_loss"])

  # Stopped at step 4 and resumed: the same batches, the same losses, bit for bit.
  pretrain(tmp_path / "halves", mix, "--config.train.num_steps=4")
  halves = pretrain(tmp_path / "halves", mix, "--config.train.num_steps=8")
  assert [r["train/loss"] for r in halves] == [r["train/loss"] for r in whole]
  assert [r["data/fraction/a"] for r in halves] == fractions

  # One source at weight 1 is that directory alone, bit for bit.
  alone = pretrain(tmp_path / "alone", f"--config.data.dir={prepared_dir}",
                   "--config.train.num_steps=2", "--config.train.eval_every_steps=0")
  mixed = pretrain(tmp_path / "one", f"--config.data.sources={prepared_dir}:1",
                   "--config.train.num_steps=2", "--config.train.eval_every_steps=0")
  assert mixed[0]["train/loss"] == alone[0]["train/loss"]
  assert mixed[0]["data/fraction/data"] == 1.0
