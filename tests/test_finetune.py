"""Fine-tuning: a planted task is learned and shuffled labels are not; metrics equal
scikit-learn's; recipes split without leaks; early stopping keeps the best checkpoint; token
labels go to first sub-words; bad task data is a clear error."""

import dataclasses
import json
import pathlib

import numpy as np
import pytest

from jaxpt import cli, evaluation
from jaxpt.data import augment
from jaxpt.data import labelled as tasks
from jaxpt.tasks import classification
from jaxpt import config as config_lib
from jaxpt.data import corpora
from jaxpt.data import tokenizer as tok_lib

pytestmark = pytest.mark.slow  # subprocess runs and compiles: `make test` only

WORDS = ("the a king queen castle sword river forest night day sun moon walks rides speaks "
         "old young brave dark bright").split()
CUES = ("apple", "banana", "cherry")


def write_task(directory: pathlib.Path, *, shuffle_labels: bool = False, seed: int = 0,
               sizes=(("train", 384), ("validation", 64), ("test", 64)),
               cues: int = 3, kind: str = "sequence") -> pathlib.Path:
  """Label = which fruit word is planted (`cues` times, anywhere) among 8 random words; a
  token task (`kind`) tags each word: B-FRUIT for the planted ones, O for the others."""
  rng = np.random.default_rng(seed)
  directory.mkdir(parents=True, exist_ok=True)
  for split, n in sizes:
    rows = []
    for _ in range(n):
      label = int(rng.integers(0, 3))
      words = rng.choice(WORDS, 8).tolist()
      for _ in range(cues):
        words.insert(int(rng.integers(0, len(words) + 1)), CUES[label])
      rows.append({"text": " ".join(words), "label": f"class_{label}"} if kind == "sequence"
                  else {"tokens": words, "tags": ["B-FRUIT" if w in CUES else "O"
                                                  for w in words]})
    if shuffle_labels and split == "train":
      labels = [r["label"] for r in rows]
      rng.shuffle(labels)
      rows = [dict(r, label=l) for r, l in zip(rows, labels)]
    (directory / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  return directory


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory) -> str:
  """A small vocabulary covering the planted task (the default is 30k tokens): written, not
  trained, so that token ids (and so the runs) are the same every time."""
  path = tmp_path_factory.mktemp("tok") / "vocab.txt"
  letters = sorted(set("".join(WORDS + list(CUES))))
  path.write_text("\n".join([*tok_lib.SPECIAL_TOKENS, *sorted(set(WORDS + list(CUES))),
                             *letters, *(f"##{c}" for c in letters)]) + "\n")
  return str(path)


def tiny(**finetune_changes) -> config_lib.Config:
  cfg = config_lib.load("configs/finetune.py")
  cfg = config_lib.with_model(cfg, num_layers=2, hidden_size=64, num_heads=4,
                              intermediate_size=128, max_position_embeddings=16,
                              hidden_dropout=0.0, attention_dropout=0.0)
  return dataclasses.replace(
      cfg, mesh=dataclasses.replace(cfg.mesh, data=8),
      optim=dataclasses.replace(cfg.optim, learning_rate=2e-3, warmup_steps=5),
      train=dataclasses.replace(cfg.train, early_stopping_patience=0),
      finetune=dataclasses.replace(cfg.finetune, max_length=16, epochs=6.0, min_steps=0,
                                   evaluations=0, warmup_fraction=0.0, **finetune_changes))


def test_planted_task_is_learned_and_shuffled_labels_are_not(tmp_path, vocab_file, capsys):
  # Through the command line, sharded over 8 devices; then resumed and re-evaluated.
  task = write_task(tmp_path / "task")
  overrides = ["--config.model.num_layers=2", "--config.model.hidden_size=64",
               "--config.model.num_heads=4", "--config.model.intermediate_size=128",
               "--config.model.max_position_embeddings=16", "--config.mesh.data=8",
               "--config.finetune.max_length=16", "--config.finetune.epochs=6",
               "--config.finetune.min_steps=0", "--config.finetune.evaluations=0",
               "--config.finetune.warmup_fraction=0",
               "--config.optim.learning_rate=2e-3", "--config.optim.warmup_steps=5",
               "--config.train.early_stopping_patience=0", "--config.model.hidden_dropout=0",
               "--config.model.attention_dropout=0"]
  workdir = tmp_path / "run"
  assert cli.main(["jaxpt", "finetune", f"--workdir={workdir}", f"--task={task}",
                   f"--tokenizer={vocab_file}", "--noprogress", *overrides]) == 0
  report = json.loads((workdir / "eval.json").read_text())
  assert report["num_examples"] == 64 and report["accuracy"] > 0.9 and report["f1_macro"] > 0.9
  for key in ("precision_macro", "recall_macro", "mcc", "confusion_matrix"):
    assert key in report
  assert sum(map(sum, report["confusion_matrix"])) == 64
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [12 * i for i in range(1, 7)]  # 384 / 32 steps an epoch
  # Ran its 6 epochs: "still improving" says whether the best validation score was the last.
  assert report["stopped"] == "finished" and report["last_step"] == 72
  assert report["still_improving"] == (report["step"] == 72)

  # Re-running a finished run resumes at its end and only re-evaluates: no step is trained
  # again (metrics.jsonl keeps its rows) and the checkpoints stay at step 72.
  assert cli.main(["jaxpt", "finetune", f"--workdir={workdir}", f"--task={task}",
                   f"--tokenizer={vocab_file}", "--noprogress", *overrides]) == 0
  again = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in again if "train/loss" in r] == [r["step"] for r in rows
                                                             if "train/loss" in r]
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()
                if p.name.isdigit())[-1] == 72
  capsys.readouterr()
  assert cli.main(["jaxpt", "evaluate", f"--workdir={workdir}", "--split=validation"]) == 0
  assert "f1_macro" in capsys.readouterr().out
  assert (workdir / "eval_validation.json").exists()

  # Out to HuggingFace: transformers' BertForSequenceClassification, with the tokenizer and
  # the labels, predicts the test split as jaxpt's best checkpoint does.
  out = tmp_path / "hf"
  assert cli.main(["jaxpt", "export-hf", f"--workdir={workdir}", f"--to={out}"]) == 0
  import torch
  import transformers
  model = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
  assert type(model).__name__ == "BertForSequenceClassification"
  tok = transformers.AutoTokenizer.from_pretrained(out)
  test = [json.loads(l) for l in (task / "test.jsonl").read_text().splitlines()]
  enc = tok([r["text"] for r in test], padding=True, return_tensors="pt")
  with torch.no_grad():
    predicted = model(**enc).logits.argmax(-1).tolist()
  accuracy = np.mean([model.config.id2label[p] == r["label"] for p, r in zip(predicted, test)])
  assert accuracy == pytest.approx(report["accuracy"])
  assert cli.main(["jaxpt", "fill-mask", f"--workdir={workdir}", "a [MASK]"]) == 2

  # The same model on shuffled training labels learns nothing that transfers.
  shuffled = write_task(tmp_path / "shuffled", shuffle_labels=True)
  setup = classification.setup(tiny(), str(shuffled), "scratch", vocab_file)
  report = classification.finetune(setup, str(tmp_path / "shuffled_run"), progress=False)
  assert report["accuracy"] < 0.6 and report["f1_macro"] < 0.6


def from_confusion(matrix):
  """(labels, predictions) whose confusion matrix (rows: true, columns: predicted) is `matrix`."""
  pairs = [(t, p) for t, row in enumerate(matrix) for p, n in enumerate(row) for _ in range(n)]
  return np.array([t for t, _ in pairs]), np.array([p for _, p in pairs])


def test_metrics_equal_a_hand_count():
  matrix = [[5, 1, 0], [2, 3, 1], [0, 0, 4]]
  labels, predictions = from_confusion(matrix)
  report = evaluation.classification_report(labels, predictions, ["a", "b", "c"])
  assert report["confusion_matrix"] == matrix
  assert report["num_examples"] == 16 and report["accuracy"] == pytest.approx(12 / 16)
  precision = [5 / 7, 3 / 4, 4 / 5]  # diagonal over column sums (7, 4, 5)
  recall = [5 / 6, 3 / 6, 4 / 4]  # diagonal over row sums (6, 6, 4)
  f1 = [10 / 13, 3 / 5, 8 / 9]  # 2pr / (p + r) per class
  assert report["precision_macro"] == pytest.approx(sum(precision) / 3)
  assert report["recall_macro"] == pytest.approx(sum(recall) / 3)
  assert report["f1_macro"] == pytest.approx(sum(f1) / 3)
  # Gorodkin's multi-class MCC: (correct * n - sum(pred_k * true_k)) /
  # sqrt((n^2 - sum(pred_k^2)) * (n^2 - sum(true_k^2))) = (192 - 86) / sqrt(166 * 168).
  assert report["mcc"] == pytest.approx(106 / (166 * 168) ** 0.5)
  labels, predictions = from_confusion([[7, 2], [1, 5]])  # ham, spam (positive)
  binary = evaluation.classification_report(labels, predictions, ["ham", "spam"])
  assert binary["precision_binary"] == pytest.approx(5 / 7)
  assert binary["recall_binary"] == pytest.approx(5 / 6)
  assert binary["f1_binary"] == pytest.approx(10 / 13)
  # Entity-level F1 on BIO tags, by hand: one of two gold entities found, one spurious.
  true = [["B-PER", "I-PER", "O", "B-LOC"]]
  pred = [["B-PER", "I-PER", "O", "O"], ]
  pred[0][2] = "B-ORG"
  ent = evaluation.entity_report(true, pred)
  assert (ent["entity_precision"], ent["entity_recall"]) == (0.5, 0.5)


@pytest.mark.parametrize("recipe", ["spamassassin", "brown_genre"])
def test_recipe_splits_are_disjoint_and_stable(recipe):
  task = tasks.load(recipe)
  again = tasks.load(recipe)
  assert task.labels == again.labels
  for split in tasks.SPLITS:
    assert task.splits[split] == again.splits[split]
    assert len(task.splits[split]) > 50
  if recipe == "spamassassin":
    assert task.labels == ["ham", "spam"]
    bodies = {s: {e["text"].lower() for e in task.splits[s]} for s in tasks.SPLITS}
    total = sum(len(task.splits[s]) for s in tasks.SPLITS)
    assert 5500 < total < 6046  # duplicates and empty bodies dropped
    # Headers are gone (a forwarded message may still quote some in its body).
    texts = [e["text"] for s in tasks.SPLITS for e in task.splits[s]]
    assert sum(t.startswith(("Return-Path:", "Received:", "Delivered-To:")) for t in texts) < 5
  else:
    assert len(task.labels) == 15
    bodies = {s: {e["document"] for e in task.splits[s]} for s in tasks.SPLITS}
  assert not (bodies["train"] & bodies["validation"]) and not (bodies["train"] & bodies["test"])
  assert not (bodies["validation"] & bodies["test"])


def test_early_stopping_restores_the_best_checkpoint_not_the_last(tmp_path, vocab_file):
  # A learning rate that learns, then diverges: the best validation step comes early.
  task = write_task(tmp_path / "task")
  cfg = tiny()
  cfg = dataclasses.replace(
      cfg, optim=dataclasses.replace(cfg.optim, learning_rate=0.3, warmup_steps=0,
                                     schedule="constant", grad_clip_norm=0.0),
      train=dataclasses.replace(cfg.train, early_stopping_patience=2, eval_every_steps=3),
      finetune=dataclasses.replace(cfg.finetune, eval_every_epochs=0.0))
  setup = classification.setup(cfg, str(task), "scratch", vocab_file)
  workdir = tmp_path / "run"
  report = classification.finetune(setup, str(workdir), progress=False)
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  scores = {r["step"]: r["eval/f1_macro"] for r in rows}
  best_step = max(scores, key=lambda s: (scores[s], -s))
  last_step = max(scores)
  assert last_step < 72  # stopped before the configured 6 epochs
  assert best_step == last_step - 2 * 3  # patience 2, an evaluation every 3 steps
  assert report["step"] == best_step != last_step
  assert report["stopped"] == "early_stopping" and report["last_step"] == last_step
  assert report["still_improving"] is False
  validation = classification.evaluate_workdir(str(workdir), split="validation")
  assert validation["f1_macro"] == pytest.approx(scores[best_step])


def test_token_labels_go_to_the_first_sub_word(vocab_file):
  tok = tok_lib.load(vocab_file)
  task = tasks.Task("pos", "token", ["adj", "noun", "verb"], {}, "test")
  example = {"tokens": ["bananas", "rides", "old"], "tags": ["noun", "verb", "adj"]}
  enc = classification.encode([example], tok, task, max_length=16)
  pieces = tok.encode(example["tokens"], is_pretokenized=True)
  assert len(pieces.ids) > 5  # "bananas" splits into several sub-words
  labelled = [(pieces.tokens[i], int(l)) for i, l in enumerate(enc.labels[0]) if l >= 0]
  starts = [t for t, w, prev in zip(pieces.tokens, pieces.word_ids, [None] + pieces.word_ids)
            if w is not None and w != prev]
  assert [t for t, _ in labelled] == starts
  assert [l for _, l in labelled] == [1, 2, 0]


def test_augmentation_is_seeded_and_does_what_it_says():
  words = "the quick brown fox jumps over the lazy dog".split()
  spec = augment.Augment(delete=0.3)
  a = augment.augment_words(words, spec, np.random.default_rng([1, 2, 3]))
  assert a == augment.augment_words(words, spec, np.random.default_rng([1, 2, 3]))
  assert len(a) < len(words) and all(w in words for w in a)
  swapped = augment.augment_words(words, augment.Augment(swap=0.5), np.random.default_rng(0))
  assert sorted(swapped) == sorted(words) and swapped != words
  synonyms = {"quick": ["fast"], "lazy": ["idle"]}
  replaced = augment.augment_words(words, augment.Augment(synonym=0.99),
                                   np.random.default_rng(0), synonyms)
  assert "fast" in replaced and "idle" in replaced


@pytest.mark.parametrize("rows,needle", [
    ([{"text": "a b"}], "train.jsonl:1: missing 'label'"),
    ([{"text": "a", "label": 1}, {"text": "b", "label": "x"}], "mixes label types"),
    ([{"label": "x"}], "missing or empty 'text'"),
])
def test_bad_task_files_name_the_line(tmp_path, rows, needle):
  write_task(tmp_path)
  (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  with pytest.raises(tasks.TaskError, match=needle):
    tasks.load(str(tmp_path))


def test_bad_task_splits_and_lengths(tmp_path, vocab_file, capsys):
  write_task(tmp_path)
  (tmp_path / "test.jsonl").write_text(json.dumps({"text": "x", "label": "class_9"}) + "\n")
  with pytest.raises(tasks.TaskError, match="test.jsonl:1: label 'class_9' never occurs"):
    tasks.load(str(tmp_path))
  (tmp_path / "test.jsonl").write_text("")
  with pytest.raises(tasks.TaskError, match="the test split is empty"):
    tasks.load(str(tmp_path))
  write_task(tmp_path)
  cfg = dataclasses.replace(tiny(too_long="error"), finetune=dataclasses.replace(
      tiny().finetune, too_long="error", max_length=6))
  with pytest.raises(tasks.TaskError, match=r"more than finetune.max_length=6"):
    classification.ClassificationTask(classification.setup(cfg, str(tmp_path), "scratch", vocab_file))
  # Pretrained weights whose tokenizer differs from the one given: refused before compiling.
  minilm = corpora.fetch_weights("all-minilm-l6-v2")
  assert cli.main(["jaxpt", "finetune", f"--workdir={tmp_path / 'x'}", f"--task={tmp_path}",
                   f"--init=hf:{minilm}", f"--tokenizer={vocab_file}"]) == 2
  assert "differs from the tokenizer of hf:" in capsys.readouterr().err
  assert cli.main(["jaxpt", "finetune", f"--workdir={tmp_path / 'x'}", f"--task={tmp_path}",
                   f"--init={tmp_path / 'nowhere'}"]) == 2
  assert "nowhere: no such directory" in capsys.readouterr().err
  assert not (tmp_path / "x").exists()


def test_brown_pretraining_text_holds_no_held_out_document():
  text = "".join(p.read_text() for p in corpora.fetch("brown")[0].glob("*.txt"))
  held_out = kept = 0
  for doc, _, sentences in tasks.brown_documents(corpora.default_cache_dir()):
    first = " ".join(w for w, _ in max(sentences, key=len))  # a document's longest sentence
    if tasks.brown_held_out(doc):
      held_out += 1
      assert first not in text, doc
    else:
      kept += 1
      assert first in text, doc
  assert held_out > 100 and kept > 250


def test_a_scratch_baseline_downloads_nothing(tmp_path, monkeypatch):
  """--init=scratch without --tokenizer trains a WordPiece vocabulary on the task's train
  split; no registry is called (the fetchers are made to fail)."""
  def offline(*args, **kwargs):
    raise AssertionError("a download was attempted")
  monkeypatch.setattr(corpora, "fetch_weights", offline)
  monkeypatch.setattr(corpora, "fetch_pypi", offline, raising=False)
  task = write_task(tmp_path / "task")
  cfg = dataclasses.replace(tiny(), finetune=dataclasses.replace(tiny().finetune,
                                                                 scratch_vocab_size=200))
  s = classification.setup(cfg, str(task), "scratch")
  assert "trained on the task's train split" in s.init_source
  size = s.tokenizer.get_vocab_size()
  assert 100 <= size <= 200 and s.cfg.model.vocab_size == size
  text = tasks.load(str(task)).splits["train"][0]["text"]
  ids = s.tokenizer.encode(text).ids
  assert s.tokenizer.token_to_id("[UNK]") not in ids  # its own text is covered
