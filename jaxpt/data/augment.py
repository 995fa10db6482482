"""On-the-fly text augmentation for fine-tuning: random word deletion, random swaps and
WordNet synonym replacement (Wei and Zou 2019, "EDA"). Seeded per (seed, step, example), so a
batch is the same whenever it is rebuilt (resume included)."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from jaxpt.data import corpora


@dataclasses.dataclass(frozen=True)
class Augment:
  delete: float = 0.0
  swap: float = 0.0
  synonym: float = 0.0

  @property
  def active(self) -> bool:
    return self.delete > 0 or self.swap > 0 or self.synonym > 0


def augment_words(words: list[str], spec: Augment, rng: np.random.Generator,
                  synonyms: dict[str, list[str]] | None = None) -> list[str]:
  words = list(words)
  if spec.synonym > 0 and synonyms:
    for i, w in enumerate(words):
      options = synonyms.get(w.lower())
      if options and rng.random() < spec.synonym:
        words[i] = options[int(rng.integers(len(options)))]
  if spec.swap > 0 and len(words) > 1:
    for i in range(len(words)):
      if rng.random() < spec.swap:
        j = int(rng.integers(len(words)))
        words[i], words[j] = words[j], words[i]
  if spec.delete > 0 and len(words) > 1:
    kept = [w for w in words if rng.random() >= spec.delete]
    words = kept or [words[int(rng.integers(len(words)))]]  # never an empty text
  return words


def augment_text(text: str, spec: Augment, rng: np.random.Generator,
                 synonyms: dict[str, list[str]] | None = None) -> str:
  return " ".join(augment_words(text.split(), spec, rng, synonyms))


@functools.lru_cache(maxsize=1)
def wordnet_synonyms(cache_dir: str | None = None) -> dict[str, list[str]]:
  """word -> other single words sharing a WordNet synset (Debian `wordnet-base`)."""
  root = corpora.fetch_debian("wordnet-base", cache_dir) / "usr" / "share" / "wordnet"
  groups: dict[str, set[str]] = {}
  for pos in ("noun", "verb", "adj", "adv"):
    for line in (root / f"data.{pos}").read_text(encoding="latin-1").splitlines():
      if line.startswith(" "):  # the licence header
        continue
      fields = line.split(" ")
      count = int(fields[3], 16)
      words = [fields[4 + 2 * i].lower() for i in range(count)]
      words = [w.split("(")[0] for w in words if "_" not in w]  # single words; no (a)/(p)
      for w in words:
        groups.setdefault(w, set()).update(x for x in words if x != w)
  return {w: sorted(s) for w, s in groups.items() if s}
