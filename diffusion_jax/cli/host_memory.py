"""Transparent huge pages for the scripts' host memory, where glibc's malloc can ask for them.

XLA's CPU backend allocates each program's temporaries afresh on every call (300 MB for the
cifar10-layout U-Net's training step at ch 64 and batch 8), and glibc returns allocations that
large to the kernel when they are freed. With 4 KiB pages the kernel then faults in and zeroes
74,000 pages on every step: 120 ms of system time in a 350 ms step on 2 cores. glibc's
`glibc.malloc.hugetlb=1` tunable makes malloc ask for 2 MiB pages instead, and the step took
285 ms (benchmarks/RESULTS.md). glibc reads its tunables once, when a process starts, so a script
restarts itself with the tunable set: the same process id, interpreter options and arguments.
"""

import os
import sys

TUNABLE = "glibc.malloc.hugetlb"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_takes_tunable() -> bool:
  """glibc 2.35 or later (the first with TUNABLE); False for another C library."""
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
  except (AttributeError, ValueError, OSError):
    return False
  return name == "glibc" and tuple(int(p) for p in version.split(".")[:2]) >= (2, 35)


def thp_mode(path: str = THP_MODE_FILE) -> str | None:
  """The kernel's transparent huge page mode (always, madvise or never), or None."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  chosen = [word[1:-1] for word in text.split() if word.startswith("[")]
  return chosen[0] if chosen else None


def tunables_with_huge_pages() -> str | None:
  """GLIBC_TUNABLES with TUNABLE=1 added, where the kernel gives huge pages on request (its mode
  is madvise; 'always' gives them unasked) and glibc can ask; None elsewhere, or where
  GLIBC_TUNABLES names TUNABLE already (GLIBC_TUNABLES=glibc.malloc.hugetlb=0 keeps 4 KiB pages)."""
  tunables = os.environ.get("GLIBC_TUNABLES", "")
  if TUNABLE in tunables or not sys.platform.startswith("linux"):
    return None
  if thp_mode() != "madvise" or not _glibc_takes_tunable():
    return None
  return ":".join(filter(None, [tunables, f"{TUNABLE}=1"]))


def restart_with_huge_pages() -> None:
  """Re-executes this process with tunables_with_huge_pages() as its GLIBC_TUNABLES, or returns
  where that is None."""
  tunables = tunables_with_huge_pages()
  if tunables is None or not sys.executable:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, sys.orig_argv, dict(os.environ, GLIBC_TUNABLES=tunables))
  except OSError:
    return  # unable to restart: run on as is
