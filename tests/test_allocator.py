"""The `jaxpt` command re-executes itself with glibc's huge-page tunable (jaxpt/cli/allocator.py)."""

import os
import subprocess
import sys
import textwrap

from jaxpt.cli import allocator

# Runs the command's entry point as the console script does (main() with no argv), then
# reports whether a 64 MiB block from malloc is backed by transparent huge pages.
PROBE = textwrap.dedent("""
    import ctypes, os, sys
    print("start", os.getpid(), os.environ.get("GLIBC_TUNABLES"), flush=True)
    sys.argv = ["jaxpt", "--help"]
    from jaxpt import cli
    cli.main()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    n = 64 << 20
    block = libc.malloc(n)
    ctypes.memset(block, 1, n)
    huge = [l.split()[1] for l in open("/proc/self/smaps_rollup") if l.startswith("AnonHuge")]
    print("huge_kib", huge[0], flush=True)
""")


def _probe(**env_changes):
  env = {k: v for k, v in os.environ.items()
         if k not in ("GLIBC_TUNABLES", allocator.GUARD, allocator.OPT_OUT)}
  env.update(env_changes)
  out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                       timeout=120, check=True).stdout
  starts = [line.split(maxsplit=2) for line in out.splitlines() if line.startswith("start")]
  huge = [int(line.split()[1]) for line in out.splitlines() if line.startswith("huge_kib")]
  return starts, huge[0]


def test_the_command_reexecutes_itself_with_huge_pages_where_the_kernel_advises_them():
  starts, huge_kib = _probe()
  if allocator.tuned_environment(
      {}, thp_mode=allocator._thp_mode(), glibc_ok=allocator._glibc_at_least(2, 35)) is None:
    # A host without madvise-mode huge pages or an older glibc: the command runs as it is.
    assert len(starts) == 1
    return
  assert len(starts) == 2, starts  # the process started, then re-executed once
  assert starts[0][1] == starts[1][1]  # the same process id: exec, not a child
  assert starts[0][2] == "None"
  assert starts[1][2] == f"{allocator.TUNABLE}=1"
  assert huge_kib >= 32 * 1024  # glibc advised the large block as huge pages


def test_opting_out_leaves_the_allocator_as_it_is():
  starts, huge_kib = _probe(**{allocator.OPT_OUT: "0"})
  assert len(starts) == 1
  if allocator._thp_mode() == "madvise":
    assert huge_kib == 0  # without the tunable, malloc's block is in 4 KiB pages


def test_tuned_environment_keeps_the_users_tunables():
  tuned = allocator.tuned_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "A": "b"},
                                      thp_mode="madvise", glibc_ok=True)
  assert tuned["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
  assert tuned["A"] == "b" and tuned[allocator.GUARD] == "1"
  # Already named, opted out, already re-executed, or nothing to gain: unchanged.
  for environ, mode, ok in [({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "madvise", True),
                            ({allocator.OPT_OUT: "0"}, "madvise", True),
                            ({allocator.GUARD: "1"}, "madvise", True),
                            ({}, "always", True), ({}, "never", True), ({}, None, True),
                            ({}, "madvise", False)]:
    assert allocator.tuned_environment(environ, thp_mode=mode, glibc_ok=ok) is None


def test_thp_mode_reads_the_bracketed_word(tmp_path):
  path = tmp_path / "enabled"
  path.write_text("always [madvise] never\n")
  assert allocator._thp_mode(str(path)) == "madvise"
  assert allocator._thp_mode(str(tmp_path / "missing")) is None


def test_untuned_environment_drops_only_the_huge_page_tunable():
  env = allocator.untuned_environment(
      {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1",
       allocator.GUARD: "1", "A": "b"})
  assert env == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "A": "b", allocator.OPT_OUT: "0"}
  assert "GLIBC_TUNABLES" not in allocator.untuned_environment(
      {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"})
