"""Running the command-line scripts in a subprocess, as a user would, and checking their errors."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(
  script: str, *args: str, check: bool = False, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
  """Runs `python <script> <args>` from the repository root; with check, a failure raises.

  env: variables set for the script on top of this process's environment.
  """
  proc = subprocess.run(
    [sys.executable, script, *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
    env=None if env is None else {**os.environ, **env},
  )
  if check and proc.returncode != 0:
    raise AssertionError(f"{script} failed:\n{proc.stderr[-3000:]}")
  return proc


def assert_fails_cleanly(proc: subprocess.CompletedProcess, message: str) -> None:
  """A non-zero exit with exactly one `error: ` line, which contains message, and no traceback."""
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and message in errors[0], proc.stderr[-3000:]
