"""One writer per workdir: a second one is refused at once, and a killed writer leaves no lock."""

import os
import select
import signal
import subprocess
import sys
import textwrap

import pytest

from diffusion_jax.training import workdir_lock
from tests.scripts import ROOT

_HOLD_LOCK = textwrap.dedent(
  """
  import sys, time
  from diffusion_jax.training import workdir_lock
  lock = workdir_lock.WorkdirLock(sys.argv[1], "train.py")
  lock.acquire()
  print("locked", flush=True)
  time.sleep(600)
  """
)


def test_second_writer_is_refused_and_a_killed_writer_leaves_no_lock(tmp_path):
  workdir = str(tmp_path / "run")
  holder = subprocess.Popen(
    [sys.executable, "-c", _HOLD_LOCK, workdir], cwd=ROOT, stdout=subprocess.PIPE, text=True
  )
  try:
    ready, _, _ = select.select([holder.stdout], [], [], 60)
    assert ready and holder.stdout.readline().strip() == "locked"
    with pytest.raises(ValueError, match=rf"is being written by train.py \(pid {holder.pid}\)"):
      workdir_lock.WorkdirLock(workdir, "train.py").acquire()
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  with workdir_lock.WorkdirLock(workdir, "train.py") as lock:  # the kill released it
    assert f"pid {os.getpid()}" in open(lock.path).read()
  with workdir_lock.WorkdirLock(workdir, "train.py"):  # and so did leaving the block
    pass
