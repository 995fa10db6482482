"""Shared fixtures: 8 fake CPU devices, a small text corpus and its prepared examples."""

import os

# Before JAX is imported anywhere: 8 CPU devices stand in for a TPU slice or a GPU host.
# The suite compiles hundreds of small programs and runs each briefly: compiling dominates, so
# XLA's backend optimisations are off (they change no result an assertion here looks at;
# measured: a third less CPU time). JAXPT_TEST_XLA_OPT=1 keeps them.
FAST_COMPILE = ("" if os.environ.get("JAXPT_TEST_XLA_OPT")
                else "--xla_backend_optimization_level=0")  # for subprocesses' own XLA_FLAGS
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8 " + FAST_COMPILE).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One XLA compilation cache for the session, subprocesses included: the many small runs of the
# same tiny config (kill-and-resume, multi-process, CLI) compile each program once. A fresh
# directory per session, so nothing stale is ever reused.
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # the process that makes it removes it
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxpt-xla-cache-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import pathlib  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent

_WORDS = ("the king queen castle sword crown knight horse river forest night day sun moon "
          "speaks rides walks sleeps fights loves hates sees holds keeps a an old young brave "
          "wise fair dark bright and but with under over near far from into this that").split()


def write_corpus(directory: pathlib.Path, num_files: int = 3, docs_per_file: int = 12,
                 seed: int = 0) -> pathlib.Path:
  """Blank-line-separated documents of short sentences over a small vocabulary."""
  rng = np.random.default_rng(seed)
  directory.mkdir(parents=True, exist_ok=True)
  for f in range(num_files):
    docs = []
    for _ in range(docs_per_file):
      sentences = [" ".join(rng.choice(_WORDS, size=rng.integers(4, 12))).capitalize() + "."
                   for _ in range(rng.integers(3, 9))]
      docs.append("\n".join(sentences))
    (directory / f"part{f}.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
  return directory


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> pathlib.Path:
  return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def prepared_dir(corpus_dir, tmp_path_factory) -> pathlib.Path:
  from jaxpt.data.prepare import PrepareOptions, prepare
  out = tmp_path_factory.mktemp("prepared") / "data"
  prepare([str(corpus_dir)], str(out),
          PrepareOptions(vocab_size=128, seq_length=32, validation_fraction=0.2,
                         progress=False))
  return out


def start_steps(workdir) -> list[int]:
  """The step each run in a workdir began at (0, or the step it resumed from), in order, as
  the loop records it in metrics.jsonl (`run/start_step` on a run's first row)."""
  import json
  path = pathlib.Path(workdir) / "metrics.jsonl"
  rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  return [r["run/start_step"] for r in rows if "run/start_step" in r]


@pytest.fixture
def jaxpt_here(capsys):
  """`jaxpt ARGS` run in this process (`cli.main`: no interpreter start, no imports again),
  returning what a subprocess run would: returncode, stdout, stderr. For end-to-end tests
  whose subject is not the process itself (signals and multi-process runs use subprocesses)."""
  import subprocess

  from jaxpt import cli

  def call(*args, timeout=None):
    capsys.readouterr()
    code = cli.main(["jaxpt", *args])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)
  return call
