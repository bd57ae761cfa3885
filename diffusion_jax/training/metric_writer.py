"""Metric logging to TensorBoard event files and a plain `metrics.jsonl`, without TensorFlow."""

import json
import os
import uuid
from typing import Any

import numpy as np
import tensorboardX

JSONL_FILENAME = "metrics.jsonl"


class MetricWriter:
  """Writes scalars to TensorBoard and `<logdir>/metrics.jsonl`, and images to TensorBoard.

  Each `write_scalars` call appends one line `{"step": ..., "<name>": <float>, ...}` to the JSONL
  file, which survives restarts. A run resumed from a checkpoint at step s first drops the rows
  (and TensorBoard events) logged after s by the interrupted run, which it is about to log again,
  so each step has one row.
  """

  def __init__(self, logdir: str, *, enabled: bool = True, resume_step: int | None = None):
    """Opens the writers, or nothing at all when disabled.

    Args:
      logdir: directory of the event files and metrics.jsonl; created if missing.
      enabled: False makes every method a no-op (for processes other than the first).
      resume_step: the step a resumed run restarts from; later rows are dropped.
    """
    self._tb = None
    self._jsonl = None
    if not enabled:
      return
    os.makedirs(logdir, exist_ok=True)
    jsonl_path = os.path.join(logdir, JSONL_FILENAME)
    if resume_step is not None:
      _drop_rows_after(jsonl_path, resume_step)
    # tensorboardX names event files by the second; a restart within it would truncate the last.
    suffix = f".{os.getpid()}.{uuid.uuid4().hex[:8]}"
    self._tb = tensorboardX.SummaryWriter(
      logdir,
      filename_suffix=suffix,
      # TensorBoard then hides the older files' events from this step on.
      purge_step=None if resume_step is None else resume_step + 1,
    )
    # Line-buffered so scripts reading the file during training see whole, current lines.
    self._jsonl = open(jsonl_path, "a", buffering=1)

  def write_scalars(self, step: int, scalars: dict[str, Any]) -> None:
    """Logs scalars (Python, numpy or jax numbers) at `step`.

    Args:
      step: the training step.
      scalars: name -> scalar value; values are converted to Python floats.
    """
    if self._tb is None:
      return
    step = int(step)
    values = {name: float(value) for name, value in scalars.items()}
    for name, value in values.items():
      self._tb.add_scalar(name, value, step)
    self._jsonl.write(json.dumps({"step": step, **values}) + "\n")

  def write_images(self, step: int, images: dict[str, np.ndarray]) -> None:
    """Logs uint8 images at `step`.

    Args:
      step: the training step.
      images: name -> uint8 array, [H, W, C] or a batch [N, H, W, C] (tiled into a grid by
        tensorboardX), with C in {1, 3, 4}.
    """
    if self._tb is None:
      return
    for name, image in images.items():
      image = np.asarray(image)
      # tensorboardX would read any other dtype as floats in [0, 1].
      if image.dtype != np.uint8 or image.ndim not in (3, 4):
        raise ValueError(
          f"image {name!r} must be uint8 [H, W, C] or [N, H, W, C], got {image.dtype} {image.shape}"
        )
      self._tb.add_image(name, image, step, dataformats="HWC" if image.ndim == 3 else "NHWC")

  def flush(self) -> None:
    """Pushes metrics.jsonl and the event file to disk.

    tensorboardX queues events for a background thread, so ones written just now may land a
    moment later; `close` waits for all of them.
    """
    if self._tb is None:
      return
    self._tb.flush()
    self._jsonl.flush()

  def close(self) -> None:
    """Flushes and closes the files; the writer must not be used afterwards."""
    if self._tb is None:
      return
    self._tb.close()
    self._jsonl.close()


def _drop_rows_after(path: str, step: int) -> None:
  """Rewrites a metrics.jsonl without its rows past `step` (atomically; untouched if none).

  A line cut short by a kill is dropped too, so the file stays valid JSON lines.
  """
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  kept = []
  for line in lines:
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(row, dict) and row.get("step", 0) <= step:
      kept.append(line if line.endswith("\n") else line + "\n")
  if kept == lines:
    return
  tmp_path = f"{path}.{os.getpid()}.tmp"
  with open(tmp_path, "w") as f:
    f.writelines(kept)
  os.replace(tmp_path, path)
