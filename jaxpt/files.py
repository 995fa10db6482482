"""Directories that appear whole or not at all: built in a temporary sibling, then renamed."""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
from typing import Iterator


@contextlib.contextmanager
def atomic_directory(out: str | os.PathLike) -> Iterator[pathlib.Path]:
  """Yields an empty temporary directory next to `out`; on success it replaces `out` (which
  may exist), on any error it is deleted and `out` is left as it was."""
  out = pathlib.Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
  try:
    yield tmp
    if out.exists():
      shutil.rmtree(out)
    os.replace(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
