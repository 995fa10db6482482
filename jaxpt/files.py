"""Directories that appear whole or not at all: built in a temporary sibling, then renamed."""

from __future__ import annotations

import contextlib
import glob
import os
import pathlib
import shutil
import tempfile
from typing import Iterator


@contextlib.contextmanager
def atomic_directory(out: str | os.PathLike) -> Iterator[pathlib.Path]:
  """Yields an empty temporary directory next to `out`; on success it replaces `out` (which
  may exist), on any error it is deleted and `out` is left as it was.

  The temporary name holds the creator's pid (`.NAME-PID-xxxx`); one left by a process that
  no longer runs (killed: nothing could delete it) is removed here. Pids are this host's, so
  on a directory shared between hosts a live writer elsewhere could look dead: one writer per
  output there."""
  out = pathlib.Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  remove_stale(out)
  tmp = pathlib.Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-{os.getpid()}-"))
  try:
    yield tmp
    if out.exists():
      shutil.rmtree(out)
    os.replace(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # someone else's process
    return True
  return True


def remove_stale(out: pathlib.Path) -> list[pathlib.Path]:
  """Deletes the temporary siblings of `out` whose creating process is gone."""
  removed = []
  for path in out.parent.glob(f".{glob.escape(out.name)}-*-*"):
    pid = path.name[len(out.name) + 2:].split("-", 1)[0]
    if pid.isdigit() and path.is_dir() and not _alive(int(pid)):
      shutil.rmtree(path, ignore_errors=True)
      removed.append(path)
  return removed
