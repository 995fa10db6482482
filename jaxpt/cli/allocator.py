"""Backs the host allocator's large blocks with transparent huge pages (Linux, glibc >= 2.35).

XLA:CPU allocates each execution's temporaries as one block (407 MiB for `embedded_modern`'s
train step) through `posix_memalign`; glibc serves a block that large with a fresh `mmap` and
returns it with `munmap` when the step ends, so every step faults the whole block back in,
4 KiB at a time: a quarter of a 2-core pretraining run's CPU went to the kernel's page-fault
path. Where the kernel's transparent huge pages are in `madvise` mode (the default of most
distributions), glibc's `glibc.malloc.hugetlb=1` tunable advises those blocks as huge pages,
so they fault in 2 MiB at a time. The tunable is read when the process starts, so the
`jaxpt` command re-executes itself once with it set (the same process id, argv and
environment otherwise). `JAXPT_HUGE_PAGES=0` turns this off; a `GLIBC_TUNABLES` that
already names `glibc.malloc.hugetlb` is left as it is. Code that imports jaxpt as a library
can start Python with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` for the same effect.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT = "JAXPT_HUGE_PAGES"
GUARD = "_JAXPT_REEXECUTED"
THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_at_least(major: int, minor: int) -> bool:
  name, version = platform.libc_ver()
  if name != "glibc" or not version:
    return False
  try:
    have = tuple(int(p) for p in version.split(".")[:2])
  except ValueError:
    return False
  return have >= (major, minor)


def _thp_mode(path: str = THP_MODE) -> str | None:
  """'always', 'madvise' or 'never' (the bracketed word of the sysfs file); None if absent."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find("["), text.find("]")
  return text[start + 1:end] if 0 <= start < end else None


def tuned_environment(environ: dict[str, str], *, thp_mode: str | None,
                      glibc_ok: bool) -> dict[str, str] | None:
  """The environment to re-execute with, or None when there is nothing to change."""
  if (environ.get(OPT_OUT, "1") == "0" or GUARD in environ or not glibc_ok
      or thp_mode != "madvise"):
    return None
  current = environ.get("GLIBC_TUNABLES", "")
  if TUNABLE in current:
    return None
  env = dict(environ)
  env["GLIBC_TUNABLES"] = f"{current}:{TUNABLE}=1" if current else f"{TUNABLE}=1"
  env[GUARD] = "1"  # the re-executed process does not try again, whatever glibc kept
  return env


def tuned_here(environ: dict[str, str]) -> dict[str, str] | None:
  """`tuned_environment` for this host's kernel and C library."""
  if sys.platform != "linux":
    return None
  return tuned_environment(environ, thp_mode=_thp_mode(), glibc_ok=_glibc_at_least(2, 35))


def untuned_environment(environ: dict[str, str]) -> dict[str, str]:
  """`environ` without the tunable, and opted out: what a process runs with by default."""
  env = {k: v for k, v in environ.items() if k != GUARD}
  kept = [t for t in env.pop("GLIBC_TUNABLES", "").split(":") if t and not t.startswith(TUNABLE)]
  if kept:
    env["GLIBC_TUNABLES"] = ":".join(kept)
  env[OPT_OUT] = "0"
  return env


def reexec_with_huge_pages() -> None:
  """Replaces this process with itself under the tuned environment, when that changes it."""
  if not getattr(sys, "orig_argv", None):
    return
  env = tuned_here(dict(os.environ))
  if env is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
  except OSError:
    return  # carry on untuned rather than fail
