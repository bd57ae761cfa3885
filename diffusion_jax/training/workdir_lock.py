"""One writer per workdir: an OS file lock that is released when its process ends, however it ends.

train.py and convert_diffusers.py hold it while they write a run; readers (sample.py, evaluate.py)
never take it. `flock` locks belong to the open file, so a SIGKILLed writer leaves no stale lock.
"""

import fcntl
import os

LOCK_FILENAME = ".writer.lock"


class WorkdirLock:
  """An exclusive, non-blocking lock on `<workdir>/.writer.lock`; use it as a context manager."""

  def __init__(self, workdir: str, holder: str):
    """Prepares the lock.

    Args:
      workdir: the run's directory; created if missing when the lock is taken.
      holder: what takes it (e.g. "train.py"), written into the lock file for the error message
        a second writer gets.
    """
    self.path = os.path.join(workdir, LOCK_FILENAME)
    self._holder = holder
    self._file = None

  def acquire(self) -> None:
    """Takes the lock at once or raises.

    Raises:
      ValueError: another process holds it; the message names that process.
    """
    os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
    lock_file = open(self.path, "a+")
    try:
      fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      lock_file.seek(0)
      owner = lock_file.read().strip() or "another process"
      lock_file.close()
      raise ValueError(
        f"{os.path.dirname(self.path)} is being written by {owner}; one writer per workdir "
        "(reading it with sample.py or evaluate.py is fine)"
      ) from None
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(f"{self._holder} (pid {os.getpid()})\n")
    lock_file.flush()
    self._file = lock_file

  def release(self) -> None:
    """Releases the lock (closing the file releases it); the file stays, harmlessly."""
    if self._file is not None:
      self._file.close()
      self._file = None

  def __enter__(self) -> "WorkdirLock":
    self.acquire()
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()
