"""What the entry scripts print: the project's own lines, not the libraries' chatter."""

import logging
import sys

from absl import logging as absl_logging


def quiet_library_logs() -> None:
  """Keeps the scripts' stderr to this project's lines, warnings and errors.

  The libraries' INFO lines (JAX probing for TPU and GPU backends, orbax's progress) and orbax's
  warnings about the files it inspects would bury the progress bar and the project's own messages.
  After a failed read of a damaged checkpoint, TensorStore's reads still in flight report to
  orbax's finished event loop; Python would print each as a traceback, though nothing is wrong.
  Likewise asyncio's "Task exception was never retrieved" for orbax's reads that failed alongside
  the one it reported (the scripts run no asyncio code of their own).
  """

  def keep(record: logging.LogRecord) -> bool:
    if record.name == "asyncio" and record.getMessage().startswith("Task exception was never"):
      return False
    if "orbax" in record.pathname:
      return record.levelno >= logging.ERROR
    return record.levelno >= logging.WARNING or record.name == "absl"

  absl_logging.get_absl_handler().addFilter(keep)
  report_unraisable = sys.unraisablehook

  def drop_late_reads(unraisable) -> None:
    if not (
      unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed"
    ):
      report_unraisable(unraisable)

  sys.unraisablehook = drop_late_reads
