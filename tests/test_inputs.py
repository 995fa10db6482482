"""The data pipeline at scale: every input format reads the same documents; bad input is one
clear error (or counted with --on_bad_input=skip); planted duplicates and only they are
removed; the split does not depend on input order; prepare is byte-for-byte reproducible;
RoBERTa's BPE + FULL-SENTENCES packing; whole-word masking never splits a word."""

import collections
import gzip
import hashlib
import json
import os
import pathlib

import numpy as np
import pytest

from jaxpt.data import clean, examples, inputs, masking, store, tokenizer
from jaxpt.data.prepare import PrepareOptions, prepare

DOCS = ["First document.\nIt has two lines.", "Second one, with a comma.",
        "Third: unicode café and naïve.", "Fourth\nsplit over\nthree lines.",
        "Fifth document is here.", "Sixth and last."]


def _write_all_formats(d: pathlib.Path) -> list[pathlib.Path]:
  import datasets
  import pyarrow as pa
  import pyarrow.parquet as pq
  import zstandard
  d.mkdir(parents=True, exist_ok=True)
  text = "\n\n".join(DOCS) + "\n"
  jsonl = "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(DOCS))
  (d / "a.txt").write_text(text)
  (d / "a.txt.gz").write_bytes(gzip.compress(text.encode()))
  (d / "a.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(text.encode()))
  (d / "a.jsonl").write_text(jsonl)
  (d / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(jsonl.encode()))
  import csv
  with open(d / "a.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["id", "text"])
    w.writerows(enumerate(DOCS))
  with open(d / "a.tsv", "w", newline="") as f:
    w = csv.writer(f, delimiter="\t")
    w.writerow(["id", "text"])
    w.writerows(enumerate(DOCS))
  pq.write_table(pa.table({"id": list(range(len(DOCS))), "text": DOCS}), d / "a.parquet")
  datasets.Dataset.from_dict({"text": DOCS}).save_to_disk(str(d / "saved"))
  return sorted(d.iterdir())


def test_every_format_reads_the_same_documents(tmp_path):
  paths = _write_all_formats(tmp_path / "in")
  assert len(paths) == 9
  for path in paths:
    assert list(inputs.read_documents(str(path))) == DOCS, path.name
  # A folder resolves to all of them (the datasets directory as one input), sorted.
  assert inputs.resolve_inputs([str(tmp_path / "in")]) == [str(p) for p in paths]


@pytest.mark.parametrize("name, content, needle", [
    ("bad.txt", b"good line\nbad \xff here\n", "bad.txt: invalid UTF-8 at byte 14 (line 2)"),
    ("bin.txt", b"PK\x03\x04\x00\x00binary", "bin.txt: a binary file (NUL byte at offset 4)"),
    ("empty.txt", b"", "empty.txt: empty file"),
    ("blank.txt", b"\n \n\t\n", "blank.txt: holds no text"),
    ("rows.jsonl", b'{"text": "ok"}\n{"body": "x"}\n', "rows.jsonl:2: no field 'text' (has: body)"),
    ("rows2.jsonl", b'{"text": "ok"}\nnot json\n', "rows2.jsonl:2: not a JSON object"),
    ("t.csv", b"id,body\n1,hello\n", "t.csv: no column 'text' (has: id, body)"),
    # a real .docx is a zip archive (NUL bytes): not text, whatever its name says
    ("notes.docx", b"PK\x03\x04\x14\x00\x06\x00\x08\x00word/document.xml",
     "notes.docx: unknown input format"),
])
def test_bad_input_is_one_clear_error(tmp_path, name, content, needle):
  (tmp_path / name).write_bytes(content)
  with pytest.raises(inputs.InputError) as e:
    prepare([str(tmp_path / name)], str(tmp_path / "out"),
            PrepareOptions(vocab_size=128, seq_length=32, progress=False))
  assert needle in str(e.value)
  assert not (tmp_path / "out").exists()


def test_parquet_missing_column_and_skip_mode(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  pq.write_table(pa.table({"body": ["a"]}), tmp_path / "x.parquet")
  with pytest.raises(inputs.InputError, match=r"x.parquet: no column 'text' \(has: body\)"):
    list(inputs.read_documents(str(tmp_path / "x.parquet")))
  (tmp_path / "mixed.txt").write_bytes(b"one good line\nbad \xff\n\nanother \xfe\nfine doc\n")
  report = collections.Counter()
  docs = list(inputs.read_documents(str(tmp_path / "mixed.txt"), on_bad_input="skip",
                                    report=report))
  assert docs == ["one good line", "fine doc"] and report == {"invalid_utf8": 2}


def _words(rng, n):
  return " ".join(f"w{int(i)}" for i in rng.integers(0, 5000, n))


def test_dedup_removes_planted_duplicates_and_nothing_else():
  rng = np.random.default_rng(0)
  originals = [_words(rng, 300) for _ in range(40)]
  exact = "  " + originals[0].upper().replace(" ", "   ") + " "  # case and spacing differ
  words = originals[1].split()
  words[150] = "changed"
  # One word of 300: Jaccard of 5-word shingles 0.97, which LSH at 0.8 misses with
  # probability about 1e-4 (at 0.9 it would be about 0.1).
  near = " ".join(words)
  half = " ".join(originals[2].split()[:150]) + " " + _words(rng, 150)  # Jaccard about 0.3
  report = clean.CleanReport(documents_in=43, documents_kept=43)
  docs = originals + [exact, near, half]
  kept = clean.deduplicate(docs, near_threshold=0.8, report=report)
  assert report.removed == {"exact_duplicate": 1, "near_duplicate": 1}
  assert len(kept) == 41 and report.documents_kept == 41
  assert half in kept and all(d in kept for d in originals[3:])
  assert (originals[0] in kept) != (exact in kept) and (originals[1] in kept) != (near in kept)
  # Which copy survives does not depend on the input order.
  again = clean.deduplicate(list(reversed(docs)), near_threshold=0.8,
                            report=clean.CleanReport())
  assert again == kept


def test_split_is_stable_under_input_order_and_sharding():
  docs = [f"document number {i} about things" for i in range(3000)]
  assign = {d: clean.split_of(d, 0.05, 0.05) for d in docs}
  shuffled = list(np.random.default_rng(1).permutation(docs))
  assert {d: clean.split_of(d, 0.05, 0.05) for d in shuffled} == assign
  # Workers that each see a slice of the input assign each document the same split.
  for workers in (2, 3, 7):
    for w in range(workers):
      assert all(clean.split_of(d, 0.05, 0.05) == assign[d] for d in shuffled[w::workers])
  counts = collections.Counter(assign.values())
  assert 0.035 < counts["validation"] / 3000 < 0.065 and 0.035 < counts["test"] / 3000 < 0.065


def _tree_bytes(root: pathlib.Path) -> dict:
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob("*")) if p.is_file()}


def test_prepare_twice_is_byte_identical(corpus_dir, tmp_path):
  opts = PrepareOptions(vocab_size=128, seq_length=32, validation_fraction=0.2,
                        test_fraction=0.25, progress=False)
  a = prepare([str(corpus_dir)], str(tmp_path / "a"), opts)
  # The same files named in another order, as separate inputs.
  files = sorted(str(p) for p in corpus_dir.iterdir())
  prepare(list(reversed(files)), str(tmp_path / "b"), opts)
  assert _tree_bytes(tmp_path / "a") == _tree_bytes(tmp_path / "b")
  assert set(a["splits"]) == {"train", "validation", "test"}
  assert "seconds" not in json.loads((tmp_path / "a" / store.MANIFEST).read_text())


def test_full_sentences_packing():
  docs = [[[5, 6, 7], [8, 9]], [[10] * 12], [[11, 12], [13]]]
  out = examples.pack_full_sentences(docs, 8, cls_id=2, sep_id=3, pad_id=0)
  stream = []
  for row, n in zip(out.input_ids, out.lengths):
    assert row[0] == 2 and row[n - 1] == 3 and np.all(row[n:] == 0) and n <= 8
    stream.extend(row[1:n - 1].tolist())
  # In order; documents joined by a separator (none where an example ends anyway); the
  # over-long sentence cut into pieces of 6.
  assert stream == [5, 6, 7, 8, 9, 3] + [10] * 12 + [11, 12, 13]
  assert out.input_ids[0].tolist() == [2, 5, 6, 7, 8, 9, 3, 3]  # whole sentences, then [SEP]
  assert np.all(out.token_type_ids == 0) and np.all(out.nsp_labels == 0)


@pytest.mark.slow
def test_roberta_data_prepares_and_pretrains(corpus_dir, tmp_path):
  m = prepare([str(corpus_dir)], str(tmp_path / "roberta"),
              PrepareOptions(vocab_size=300, seq_length=32, tokenizer_type="bpe",
                             examples="full_sentences", validation_fraction=0.2,
                             progress=False))
  assert m["tokenizer"]["family"] == "roberta" and m["examples"] == "full_sentences"
  train = m["splits"]["train"]
  # Whole sentences of 5-20 tokens in 30: about half a sentence of padding per example.
  assert train["nsp_random_fraction"] == 0 and train["padding_fraction"] < 0.3
  rows = store.SplitReader(str(tmp_path / "roberta"), "train").read(np.arange(3))
  tok = tokenizer.load(str(tmp_path / "roberta" / "tokenizer.json"))
  assert rows["input_ids"][0][0] == tok.token_to_id("<s>")

  # RoBERTa pretraining on it (MLM only); a BERT model (NSP) is refused before compiling.
  from test_cli import jaxpt, one_line_error
  common = ["--config=configs/bert_tiny.py", "--noprogress",
            f"--config.data.dir={tmp_path / 'roberta'}", "--config.model.vocab_size=300",
            "--config.model.max_position_embeddings=40", "--config.train.batch_size=16",
            "--config.train.num_steps=4", "--config.train.log_every_steps=2",
            "--config.train.eval_every_steps=4", "--config.train.eval_batches=1",
            "--config.optim.warmup_steps=1"]
  one_line_error(jaxpt("pretrain", *common, f"--workdir={tmp_path / 'bert'}"),
                 "FULL-SENTENCES", "--config.model.variant=roberta")
  one_line_error(jaxpt("pretrain", *common, f"--workdir={tmp_path / 'r0'}",
                       "--config.model.variant=roberta", "--config.model.pad_token_id=0"),
                 "--config.model.pad_token_id=1")
  proc = jaxpt("pretrain", *common, f"--workdir={tmp_path / 'run'}",
               "--config.model.variant=roberta", "--config.model.pad_token_id=1")
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert rows[-1]["step"] == 4 and np.isfinite(rows[-1]["train/mlm_loss"])
  assert "train/nsp_loss" not in rows[-1]


@pytest.mark.slow
def test_packed_data_prepares_and_pretrains(corpus_dir, tmp_path):
  from test_cli import jaxpt
  m = prepare([str(corpus_dir)], str(tmp_path / "packed"),
              PrepareOptions(vocab_size=128, seq_length=48, short_seq_prob=0.5, pack=True,
                             validation_fraction=0.2, progress=False))
  train = m["splits"]["train"]
  assert m["packed"] and train["sequences"] > train["examples"]  # rows hold several examples
  proc = jaxpt("pretrain", "--config=configs/bert_tiny.py", "--noprogress",
               f"--workdir={tmp_path / 'run'}",  # the data through a URL, as gs:// would be
               f"--config.data.dir=file://{tmp_path / 'packed'}",
               "--config.model.vocab_size=128", "--config.model.max_position_embeddings=48",
               "--config.train.batch_size=8", "--config.train.num_steps=4",
               "--config.train.log_every_steps=2", "--config.train.eval_every_steps=4",
               "--config.train.eval_batches=1", "--config.optim.warmup_steps=1")
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  last = rows[-1]
  assert np.isfinite(last["train/nsp_loss"]) and np.isfinite(last["eval/nsp_loss"])
  assert 0.5 < last["train/real_token_fraction"] <= 1.0
  assert last["perf/real_tokens_per_sec"] < last["perf/tokens_per_sec"] + 1e-6


def test_whole_word_masking_never_splits_a_word():
  vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##believ", "##able", "cat",
           "##s", "run", "##ning", "fast", "the"]
  from tokenizers import Tokenizer, models
  tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
  table = masking.continuation_table(tok)
  assert table.tolist() == [t.startswith("##") for t in vocab]
  spec = masking.MaskingSpec(vocab_size=len(vocab), mask_id=4, special_ids=(0, 1, 2, 3, 4),
                             mask_prob=0.3, max_predictions=8, continues_word=table)
  rng = np.random.default_rng(0)
  words = [[5, 6, 7], [8, 9], [10, 11], [12], [13]]
  masked_tokens = 0
  for _ in range(300):
    chosen = [words[i] for i in rng.integers(0, len(words), 8)]
    ids = np.array([2] + [t for w in chosen for t in w] + [3], np.int32)
    spans, start = [], 1
    for w in chosen:
      spans.append(range(start, start + len(w)))
      start += len(w)
    _, positions, _, weights = masking.mask_row(ids, len(ids), spec, rng)
    picked = set(positions[weights > 0].tolist())
    for span in spans:  # all of a word or none of it
      assert set(span) <= picked or not set(span) & picked
    masked_tokens += len(picked)
  assert masked_tokens > 300  # it did mask


def _peak_python_bytes(fn) -> int:
  import tracemalloc
  tracemalloc.start()
  try:
    fn()
    return tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()


@pytest.mark.slow
def test_prepare_memory_does_not_grow_with_the_text(tmp_path):
  """Documents stream through: texts wait in a file, not in memory, and examples are appended
  to the stored arrays shard by shard. Preparing 4x the text (1.2 -> 5 MB) must raise the peak
  of Python allocations by well under the added text (holding the documents would add all of
  it, and their example arrays half as much again)."""
  rng = np.random.default_rng(3)
  sizes = {}
  for n in (300, 1200):
    d = tmp_path / f"in{n}"
    d.mkdir()
    docs = ["\n".join(_words(rng, 60) + "." for _ in range(12)) for _ in range(n)]
    (d / "docs.txt").write_text("\n\n".join(docs) + "\n")
    text_bytes = sum(len(x.encode()) for x in docs)
    opts = PrepareOptions(vocab_size=600, near_duplicate_threshold=0.0, shard_documents=50,
                          validation_fraction=0.1, progress=False)
    out = tmp_path / f"out{n}"
    peak = _peak_python_bytes(lambda: prepare([str(d)], str(out), opts))
    manifest = store.read_manifest(str(out))
    assert manifest["cleaning"]["documents_kept"] == n
    assert not list(out.glob("*.spill"))  # the spill file is gone
    sizes[n] = (text_bytes, peak)
  added_text = sizes[1200][0] - sizes[300][0]
  added_peak = sizes[1200][1] - sizes[300][1]
  assert added_text > 3_500_000
  assert added_peak < 0.2 * added_text, (sizes, added_peak / added_text)


def test_rows_that_are_not_text_are_counted_not_dropped_silently(tmp_path):
  docs = [{"text": f"Document number {i} says something about the river and the king."}
          for i in range(6)]
  rows = docs + [{"text": 5}, {"text": None}, {"text": ["a", "list"]}]
  (tmp_path / "in").mkdir()
  (tmp_path / "in" / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  report = collections.Counter()
  read = list(inputs.read_documents(str(tmp_path / "in" / "a.jsonl"), report=report))
  assert len(read) == 6 and report["text_not_a_string"] == 3
  manifest = prepare([str(tmp_path / "in")], str(tmp_path / "out"),
                     PrepareOptions(vocab_size=100, seq_length=16, validation_fraction=0.0,
                                    near_duplicate_threshold=0.0, progress=False))
  assert manifest["cleaning"]["removed"]["text_not_a_string"] == 3


def test_a_vocabulary_below_the_alphabet_is_reported_with_both_sizes(tmp_path, capsys):
  # 300 distinct letters: WordPiece keeps each (and its "##" form), more than 100 tokens.
  letters = [chr(0x4E00 + i) for i in range(300)]
  text = "\n\n".join(" ".join(letters[i:i + 30]) + " and more words here"
                     for i in range(0, 300, 30))
  (tmp_path / "in").mkdir()
  (tmp_path / "in" / "a.txt").write_text(text + "\n", encoding="utf-8")
  manifest = prepare([str(tmp_path / "in")], str(tmp_path / "out"),
                     PrepareOptions(vocab_size=100, seq_length=16, validation_fraction=0.0,
                                    near_duplicate_threshold=0.0, progress=True))
  size = manifest["tokenizer"]["vocab_size"]
  assert size > 100 and manifest["vocab_size_requested"] == 100
  said = "".join(capsys.readouterr())
  assert "--vocab_size=100 is below" in said and f"{size:,} tokens" in said


def test_a_killed_writers_temporary_directory_is_removed(tmp_path):
  from jaxpt import files
  dead = subprocess_pid_that_exited()
  stale = tmp_path / f".out-{dead}-abc"
  stale.mkdir()
  (stale / "part").write_text("half written")
  live = tmp_path / f".out-{os.getpid()}-def"  # a writer still running: left alone
  live.mkdir()
  with files.atomic_directory(tmp_path / "out") as tmp:
    (tmp / "x").write_text("done")
  assert not stale.exists() and live.exists() and (tmp_path / "out" / "x").exists()


def subprocess_pid_that_exited() -> int:
  import subprocess
  proc = subprocess.Popen(["true"])
  proc.wait()
  return proc.pid


def test_a_huge_line_is_read_in_pieces_and_cut_into_bounded_documents(tmp_path, monkeypatch):
  """Plain text arrives in chunks (multi-byte characters across a chunk's edge decode
  right) and a document past MAX_DOCUMENT_CHARS is cut at whitespace: every piece within the
  bound, the words all there, in order. A bad byte drops its line only."""
  monkeypatch.setattr(inputs, "_CHUNK", 7)  # bytes per read: cuts inside "é" often
  monkeypatch.setattr(inputs, "MAX_DOCUMENT_CHARS", 50)
  words = [f"mot{i}é" for i in range(300)]
  path = tmp_path / "huge.txt"
  path.write_text("short first document here\n\n" + " ".join(words) + "\n\nlast one\n",
                  encoding="utf-8")
  docs = list(inputs.read_documents(str(path)))
  assert docs[0] == "short first document here" and docs[-1] == "last one"
  middle = docs[1:-1]
  assert len(middle) > 10 and all(len(d) <= 50 for d in middle)
  assert " ".join(middle).split() == words
  # A line within one read: a bad byte drops that line whole (a line longer than a read
  # loses what follows the bad byte).
  monkeypatch.setattr(inputs, "_CHUNK", 1 << 20)
  monkeypatch.setattr(inputs, "MAX_DOCUMENT_CHARS", 1_000_000)
  bad = tmp_path / "bad.txt"
  bad.write_bytes(("good line one\n" + " ".join(words[:40])).encode() + b"\xff tail\nkept\n")
  report = collections.Counter()
  got = list(inputs.read_documents(str(bad), on_bad_input="skip", report=report))
  assert report["invalid_utf8"] == 1
  assert " ".join(got).split() == ["good", "line", "one", "kept"]


def test_text_as_it_comes_without_extensions_and_compressed(tmp_path):
  """README, copyright, changelog.Debian.gz: files with no or an unknown extension are plain
  text when they sniff as UTF-8 (in a folder and named alone); a binary file is skipped in a
  folder and refused alone; --format forces a format."""
  folder = tmp_path / "doc"
  folder.mkdir()
  (folder / "README").write_text("The package does things.\nIt is small.\n")
  (folder / "copyright").write_text("Copyright 2026 someone.\n")
  with gzip.open(folder / "changelog.Debian.gz", "wt") as f:
    f.write("pkg (1.0) unstable; urgency=low\n\n  * First release.\n")
  (folder / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
  found = [os.path.basename(p) for p in inputs.resolve_inputs([str(folder)])]
  assert found == ["README", "changelog.Debian.gz", "copyright"]
  docs = list(inputs.read_documents(str(folder / "changelog.Debian.gz")))
  assert docs == ["pkg (1.0) unstable; urgency=low", "  * First release."]
  with pytest.raises(inputs.InputError, match="logo.png: unknown input format"):
    inputs.resolve_inputs([str(folder / "logo.png")])
  (folder / "rows.data").write_text('{"text": "one row"}\n')
  assert list(inputs.read_documents(str(folder / "rows.data"), fmt="jsonl")) == ["one row"]


def test_documents_are_paragraphs_lines_or_files(tmp_path):
  path = tmp_path / "t.txt"
  path.write_text("first line\nsecond line\n\nthird line\n\n\nfourth line\n")
  count = {d: len(list(inputs.read_documents(str(path), documents=d)))
           for d in inputs.DOCUMENTS}
  assert count == {"paragraph": 3, "line": 4, "file": 1}
  assert list(inputs.read_documents(str(path), documents="file")) == [
      "first line\nsecond line\nthird line\nfourth line"]


def test_prepare_warns_about_padding_random_partners_a_small_vocabulary_and_empty_splits(
    tmp_path):
  """Short two-line documents at 128 tokens: mostly padding and mostly random next
  sentences; 5,000 tokens asked of a text with a few hundred; a validation split too small
  to hold a document. Each is a warning in the manifest, with its numbers."""
  from jaxpt.data.prepare import PrepareOptions, prepare
  (tmp_path / "in").mkdir()
  docs = [f"word{i} goes here.\nand then word{i + 1} follows." for i in range(40)]
  (tmp_path / "in" / "a.txt").write_text("\n\n".join(docs) + "\n")
  manifest = prepare([str(tmp_path / "in")], str(tmp_path / "out"),
                     PrepareOptions(vocab_size=5000, seq_length=128, validation_fraction=0.001,
                                    near_duplicate_threshold=0.0, progress=False))
  said = "\n".join(manifest["warnings"])
  assert manifest["splits"]["train"]["padding_fraction"] > 0.3
  assert "train: " in said and "of the tokens are padding" in said
  assert "of next sentences are random" in said
  assert f"{manifest['tokenizer']['vocab_size']} tokens, far below --vocab_size=5000" in said
  assert "the validation split is empty" in said
  # and a healthy corpus gets none
  assert not prepare([str(tmp_path / "in")], str(tmp_path / "out2"),
                     PrepareOptions(vocab_size=120, seq_length=16, validation_fraction=0.0,
                                    examples="full_sentences", pack=True,
                                    near_duplicate_threshold=0.0, progress=False))["warnings"]
