"""Data preparation, storage, masking and the grain loader, on a small text fixture."""

import dataclasses
import json
import os

import numpy as np
import pytest

from jaxpt.config import DataConfig
from jaxpt.data import clean, loader, masking, store, tokenizer
from jaxpt.data.prepare import PrepareOptions, prepare


def test_manifest_counts_match_arrays(prepared_dir):
  manifest = json.loads((prepared_dir / "manifest.json").read_text())
  assert manifest["seq_length"] == 32
  assert set(manifest["splits"]) == {"train", "validation"}
  for split, info in manifest["splits"].items():
    reader = store.SplitReader(str(prepared_dir), split)
    rows = reader.read(np.arange(len(reader)))
    assert len(reader) == info["examples"] > 0
    assert int(rows["lengths"].sum()) == info["tokens"]
    assert rows["input_ids"].shape == (info["examples"], 32)
  assert manifest["tokenizer"]["hash"] == tokenizer.file_hash(
      str(prepared_dir / "tokenizer.json"))
  assert manifest["token_dtype"] == "uint16"
  assert manifest["cleaning"]["documents_kept"] == sum(
      s["documents"] for s in manifest["splits"].values())


def test_special_tokens_sit_where_they_should(prepared_dir):
  manifest = json.loads((prepared_dir / "manifest.json").read_text())
  ids = manifest["tokenizer"]["special_ids"]
  reader = store.SplitReader(str(prepared_dir), "train")
  rows = reader.read(np.arange(len(reader)))
  for tokens, types, length in zip(rows["input_ids"], rows["token_type_ids"], rows["lengths"]):
    assert tokens[0] == ids["cls"]
    assert tokens[length - 1] == ids["sep"]
    assert (tokens[length:] == ids["pad"]).all() and (types[length:] == 0).all()
    seps = np.flatnonzero(tokens[:length] == ids["sep"])
    assert len(seps) == 2  # [CLS] A [SEP] B [SEP]
    assert (types[:seps[0] + 1] == 0).all() and (types[seps[0] + 1:length] == 1).all()
    assert not np.isin(tokens[1:length], [ids["cls"], ids["pad"], ids["mask"]]).any()
  nsp = rows["nsp_labels"].mean()
  assert 0.25 < nsp < 0.75  # about half the B segments come from another document


def test_tokenizer_round_trips_and_loads_from_vocab(prepared_dir):
  tok = tokenizer.load(str(prepared_dir / "tokenizer.json"))
  enc = tok.encode("The brave knight rides.", "A dark night.")
  assert enc.tokens[0] == "[CLS]" and enc.tokens.count("[SEP]") == 2
  assert tok.decode(enc.ids) == "the brave knight rides. a dark night."
  from_vocab = tokenizer.load(str(prepared_dir / "vocab.txt"))
  assert from_vocab.encode("The brave knight rides.").ids == tok.encode(
      "The brave knight rides.").ids


def test_masking_statistics():
  vocab, mask_id, special = 1000, 4, (0, 1, 2, 3, 4)
  spec = masking.MaskingSpec(vocab_size=vocab, mask_id=mask_id, special_ids=special,
                             max_predictions=40)
  rng = np.random.default_rng(0)
  n, length = 400, 128
  lengths = rng.integers(60, length + 1, n)
  ids = rng.integers(5, vocab, (n, length))
  ids[:, 0] = 2
  ids[np.arange(n), lengths - 1] = 3
  ids[np.arange(length)[None] >= lengths[:, None]] = 0
  rows = {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "lengths": lengths,
          "nsp_labels": np.zeros(n)}
  out = masking.mask_batch(rows, spec, seed=0, step=0)
  w = out["masked_weights"] > 0
  candidates = lengths - 2
  # 15% of the candidates are targets (rounded per row).
  np.testing.assert_allclose(w.sum() / candidates.sum(), 0.15, atol=0.005)
  pos, tgt = out["masked_positions"][w], out["masked_ids"][w]
  row = np.nonzero(w)[0]
  assert not np.isin(tgt, special).any()  # never a special token
  np.testing.assert_array_equal(tgt, ids[row, pos])  # targets are the original tokens
  now = out["input_ids"][row, pos]
  frac_mask = np.mean(now == mask_id)
  frac_kept = np.mean(now == tgt)
  frac_random = 1 - frac_mask - frac_kept
  assert abs(frac_mask - 0.8) < 0.03 and abs(frac_kept - 0.1) < 0.025
  assert abs(frac_random - 0.1) < 0.025
  assert not np.isin(now[now != tgt], [0, 1, 2, 3]).any()  # random tokens are not special
  # Untouched elsewhere; attention covers exactly the real tokens.
  untouched = np.ones_like(ids, bool)
  untouched[row, pos] = False
  np.testing.assert_array_equal(out["input_ids"][untouched], ids[untouched])
  np.testing.assert_array_equal(out["attention_mask"].sum(1), lengths)


def test_the_masking_rate_follows_its_phases():
  """data.mask_prob_schedule "0:0.3,5:0.15,8:0.05": the targets per candidate token of each
  step's batch are the phase's rate (mmBERT's 30% -> 15% -> 5%)."""
  from jaxpt import config as config_lib
  d = config_lib.DataConfig(mask_prob_schedule="0:0.3,5:0.15,8:0.05",
                            max_predictions_per_seq=128)
  spec = masking.MaskingSpec(vocab_size=1000, mask_id=4, special_ids=(0, 1, 2, 3, 4),
                             max_predictions=128, rate_phases=config_lib.mask_rate_phases(d))
  rng = np.random.default_rng(0)
  ids = rng.integers(5, 1000, (200, 128))
  rows = {"input_ids": ids, "token_type_ids": np.zeros_like(ids),
          "lengths": np.full(200, 128), "nsp_labels": np.zeros(200)}
  for step, want in ((0, 0.3), (4, 0.3), (5, 0.15), (7, 0.15), (8, 0.05), (100, 0.05)):
    w = masking.mask_batch(rows, spec, seed=0, step=step)["masked_weights"]
    assert abs(w.sum() / ids.size - want) < 0.005, (step, w.sum() / ids.size)
  for bad, why in (("5:0.3", "start at 0"), ("0:0.3,3:1.5", "rate 1.5"),
                   ("0:0.3,x", "is not STEP:RATE"), ("0:0.3,4:0.2,2:0.1", "increase")):
    with pytest.raises(config_lib.ConfigError, match=why):
      config_lib.mask_rate_phases(config_lib.DataConfig(mask_prob_schedule=bad))


def test_default_prediction_slots_mask_the_rate_asked():
  """data.max_predictions_per_seq=0 (the default) sizes the slots from the highest rate of
  the schedule, so 30% of a full 128-token row is 38 targets; BERT's cap of 20 would have
  masked 15.6% whatever the rate said."""
  from jaxpt import config as config_lib
  rng = np.random.default_rng(1)
  ids = rng.integers(5, 1000, (100, 128))
  rows = {"input_ids": ids, "token_type_ids": np.zeros_like(ids),
          "lengths": np.full(100, 128), "nsp_labels": np.zeros(100)}
  for d, slots, rate in ((config_lib.DataConfig(mask_prob=0.3), 38, 0.3),
                         (config_lib.DataConfig(mask_prob=0.15), 19, 0.15),
                         (config_lib.DataConfig(mask_prob_schedule="0:0.1,9:0.4"), 51, 0.1),
                         (config_lib.DataConfig(mask_prob=0.3, max_predictions_per_seq=20),
                          20, 20 / 128)):
    assert config_lib.max_predictions(d, 128) == slots
    spec = masking.MaskingSpec(vocab_size=1000, mask_id=4, special_ids=(0, 1, 2, 3, 4),
                               mask_prob=d.mask_prob, max_predictions=slots,
                               rate_phases=config_lib.mask_rate_phases(d))
    w = masking.mask_batch(rows, spec, seed=0, step=0)["masked_weights"]
    assert w.shape == (100, slots)
    assert abs(w.sum() / ids.size - rate) < 0.004, (d, w.sum() / ids.size)
  with pytest.raises(config_lib.ConfigError, match="max_predictions_per_seq"):
    config_lib.validate(dataclasses.replace(
        config_lib.Config(), data=config_lib.DataConfig(max_predictions_per_seq=-1)))


def _batches(prepared_dir, **kw):
  data = loader.PreparedData.open(str(prepared_dir))
  from jaxpt.config import DataConfig
  spec = data.masking_spec(DataConfig(max_predictions_per_seq=5))
  return loader.batches(data.reader("train"), spec, batch_size=8, seed=3, **kw)


def test_loader_is_a_pure_function_of_seed_and_step(prepared_dir):
  it = _batches(prepared_dir)
  first = [next(it) for _ in range(6)]
  for batch in first:  # right padding, which the train step tells the stack (right_padded)
    assert (np.diff(batch["attention_mask"], axis=1) <= 0).all()
  resumed = _batches(prepared_dir, start_step=4)
  for expected in first[4:]:
    got = next(resumed)
    for key in expected:
      np.testing.assert_array_equal(got[key], expected[key])
  assert not np.array_equal(first[0]["input_ids"], first[1]["input_ids"])


def test_an_epoch_reads_every_example_exactly_once(prepared_dir):
  # Batch 1: an epoch is every stored row; unmasking each batch gives back the stored rows.
  data = loader.PreparedData.open(str(prepared_dir))
  reader = data.reader("train")
  n = len(reader)
  it = loader.batches(reader, data.masking_spec(DataConfig()), batch_size=1, seed=5)
  seen = []
  for _ in range(n):
    b = next(it)
    ids, w = b["input_ids"][0].copy(), b["masked_weights"][0] > 0
    ids[b["masked_positions"][0][w]] = b["masked_ids"][0][w]
    seen.append(ids.tobytes())
  stored = reader.read(np.arange(n))["input_ids"].astype(np.int32)
  assert sorted(seen) == sorted(r.tobytes() for r in stored)
  assert seen != [r.tobytes() for r in stored]  # and shuffled


def test_loader_processes_read_disjoint_parts_of_the_same_global_batch(prepared_dir):
  whole = _batches(prepared_dir)
  parts = [_batches(prepared_dir, rows=rows) for rows in ((0, 3), (3, 8))]
  for _ in range(3):
    expected = next(whole)
    halves = [next(p) for p in parts]
    for key in expected:
      np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), expected[key])


def test_prepare_refuses_bad_input(tmp_path):
  out = tmp_path / "out"
  opts = PrepareOptions(vocab_size=128, seq_length=32, progress=False)
  with pytest.raises(clean.InputError, match="no such file"):
    prepare([str(tmp_path / "missing.txt")], str(out), opts)
  (tmp_path / "empty").mkdir()
  with pytest.raises(clean.InputError, match="holds no input files"):
    prepare([str(tmp_path / "empty")], str(out), opts)
  (tmp_path / "short.txt").write_text("tiny\n\nwords\n")
  with pytest.raises(clean.InputError, match="no usable documents"):
    prepare([str(tmp_path / "short.txt")], str(out), opts)
  assert not out.exists()
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".out")]  # no temp left behind


def test_prepare_does_not_clobber_an_existing_output(corpus_dir, prepared_dir):
  with pytest.raises(clean.InputError, match="already holds a prepared dataset"):
    prepare([str(corpus_dir)], str(prepared_dir), PrepareOptions(progress=False))


def test_normalize_and_split_are_deterministic():
  assert clean.normalize("  a\u0000b\t\tc  \n\n e\u0301 ") == "ab c\n\u00e9"
  docs = [f"document number {i}" for i in range(2000)]
  splits = [clean.split_of(d, 0.1) for d in docs]
  assert splits == [clean.split_of(d, 0.1) for d in reversed(docs)][::-1]
  assert 0.07 < splits.count("validation") / len(docs) < 0.13


def test_a_prepared_directory_reads_the_same_through_a_url(prepared_dir, tmp_path):
  # file:// goes through tensorstore's key-value store, the code path of gs://.
  url = "file://" + str(prepared_dir)
  local, remote = loader.PreparedData.open(str(prepared_dir)), loader.PreparedData.open(url)
  assert remote.manifest == local.manifest
  assert remote.tokenizer().get_vocab() == local.tokenizer().get_vocab()
  rows = np.arange(5)
  for key, value in local.reader("train").read(rows).items():
    np.testing.assert_array_equal(remote.reader("train").read(rows)[key], value)
  assert store.read_bytes(url, "no-such-file") is None
  with pytest.raises(store.StoreError, match="no manifest.json"):
    loader.PreparedData.open("file://" + str(tmp_path))
