"""Orbax checkpoints of the training state under `<workdir>/checkpoints`."""

import os
from typing import Any, NamedTuple, TypeVar

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging as absl_logging

State = TypeVar("State")

# Where a trainer moves checkpoints it cannot read, out of the rotation (they are never deleted).
UNREADABLE_DIRNAME = "unreadable_checkpoints"


class CheckpointMismatchError(ValueError):
  """A checkpoint's tree or shapes differ from the model's: another config wrote it."""


class NonFiniteStateError(FloatingPointError):
  """A state with inf or NaN values was about to be saved."""


class Unreadable(NamedTuple):
  """A checkpoint that could not be restored, and why."""

  step: int
  path: str
  reason: str


class Checkpointer:
  """Saves and restores the training state under `<workdir>/checkpoints`, keeping the newest few.

  Orbax writes each step into `<step>.orbax-checkpoint-tmp` and renames it to `<step>` only once
  it is complete, so a run killed mid-save resumes from the last complete step. A read-only
  Checkpointer (sample.py, evaluate.py) never creates, cleans or deletes anything, so it can read a
  run while its trainer writes. States with inf or NaN values are never saved.
  """

  def __init__(self, workdir: str, max_to_keep: int = 3, *, read_only: bool = False):
    """Opens the checkpoint directory of `workdir` (a writer creates it if needed).

    Args:
      workdir: the run's directory; checkpoints go to `<workdir>/checkpoints`.
      max_to_keep: how many of the newest checkpoints a writer keeps; older ones are deleted.
      read_only: open as a reader, which may run beside the run's trainer.
    """
    self.workdir = workdir
    self.directory = os.path.join(workdir, "checkpoints")
    self.read_only = read_only
    self._manager = None
    if read_only and not os.path.isdir(self.directory):
      return  # nothing to read; a read-only manager must not create the directory
    if read_only:
      options = ocp.CheckpointManagerOptions(read_only=True, create=False)
    else:
      options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.LatestN(n=max_to_keep),
        # Leftovers of saves that a killed run never finalized are never restored; reclaim the
        # disk. Only the run's one writer (see workdir_lock) may do this: to a reader they could
        # be the trainer's save in progress.
        cleanup_tmp_directories=True,
      )
    self._manager = ocp.CheckpointManager(
      os.path.abspath(self.directory),
      options=options,
      # Registering the handler up front lets a fresh manager read item metadata before restoring.
      item_handlers=ocp.StandardCheckpointHandler(),
    )

  def latest_step(self) -> int | None:
    """Returns the newest complete step, or None when there is none."""
    steps = self.all_steps()
    return steps[-1] if steps else None

  def all_steps(self) -> list[int]:
    """Returns the complete steps on disk, oldest first."""
    return sorted(self._manager.all_steps()) if self._manager else []

  def step_path(self, step: int) -> str:
    """The folder of one step's checkpoint."""
    return os.path.join(self.directory, str(step))

  def save(self, step: int, state: Any, *, wait: bool = False) -> None:
    """Starts saving `state` as `step` in the background (a step not above the latest is skipped).

    Args:
      step: the training step the state belongs to.
      state: a pytree of jax arrays (e.g. the TrainState); it is copied off device before return.
      wait: block until the checkpoint is finalized on disk.

    Raises:
      NonFiniteStateError: a floating-point leaf of `state` holds inf or NaN; nothing is written.
    """
    if self.read_only:
      raise ValueError(f"{self.directory} was opened read-only")
    if not tree_is_finite(state):
      raise NonFiniteStateError(f"the state of step {step} holds inf or NaN; it was not saved")
    self._manager.save(step, args=ocp.args.StandardSave(state))
    if wait:
      self.wait()

  def restore(self, abstract_state: State, step: int | None = None) -> State:
    """Restores a step, or the newest readable one, into the structure, shapes and shardings given.

    Without `step`, a checkpoint that cannot be read (damaged files, inf/NaN values) is skipped
    with a warning naming it, and the next older one is tried.

    Args:
      abstract_state: the state's tree of `jax.ShapeDtypeStruct`s (from `jax.eval_shape`),
        optionally carrying shardings that the restored arrays will have.
      step: the step to restore; None for the newest readable one.

    Returns:
      The restored state, with the tree type of `abstract_state`.

    Raises:
      FileNotFoundError: there is no complete checkpoint.
      CheckpointMismatchError: the checkpoint's tree or shapes differ from `abstract_state` (e.g.
        it was written with another model config).
      ValueError: `step` is not on disk or cannot be read, or no checkpoint can be read.
    """
    if step is None:
      return self.restore_newest_readable(abstract_state)[0]
    steps = self.all_steps()
    if step not in steps:
      self._require_checkpoints()
      raise ValueError(f"no checkpoint for step {step} in {self.directory}; available: {steps}")
    try:
      return self._restore_step(abstract_state, step)
    except _UnreadableError as e:
      raise ValueError(f"checkpoint {self.step_path(step)} cannot be read: {e}") from None

  def restore_newest_readable(self, abstract_state: State) -> tuple[State, list[Unreadable]]:
    """Restores the newest checkpoint that can be read, skipping damaged ones with a warning.

    Returns:
      (the state, the newer checkpoints that were skipped, newest first).

    Raises:
      FileNotFoundError: there is no complete checkpoint.
      CheckpointMismatchError: a readable checkpoint was written for another model.
      ValueError: no checkpoint can be read; the message names each one and why.
    """
    self._require_checkpoints()
    skipped: list[Unreadable] = []
    for _ in range(_MAX_RELISTS):
      rotated_out = False
      for step in reversed(self.all_steps()):
        if step in {u.step for u in skipped}:
          continue
        try:
          return self._restore_step(abstract_state, step), skipped
        except _UnreadableError as e:
          if not os.path.isdir(self.step_path(step)):
            rotated_out = True  # the run's trainer deleted it meanwhile; newer ones exist
            break
          absl_logging.warning(
            "checkpoint %s cannot be read (%s); trying an older one", self.step_path(step), e
          )
          skipped.append(Unreadable(step, self.step_path(step), str(e)))
      if not rotated_out:
        break
      self.reload()
    self._require_checkpoints()
    details = "; ".join(f"step {u.step} at {u.path}: {u.reason}" for u in skipped)
    raise ValueError(f"no checkpoint in {self.directory} can be read ({details})")

  def _require_checkpoints(self) -> None:
    if not self.all_steps():
      raise FileNotFoundError(f"no checkpoint in {self.directory}; train first")

  def _restore_step(self, abstract_state: State, step: int) -> State:
    """Restores one step; raises _UnreadableError for damage, CheckpointMismatchError for a
    checkpoint of another model."""
    path = self.step_path(step)
    if os.path.isdir(path) and not os.listdir(path):
      raise _UnreadableError("its folder is empty")
    try:
      stored = self._manager.metadata(step).item_metadata.tree
    except Exception as e:  # orbax raises many types for damaged metadata; none is recoverable
      raise _UnreadableError(f"its metadata cannot be read: {_root_cause(e)}") from e
    mismatch = _first_mismatch(_shapes_by_path(stored), _shapes_by_path(abstract_state))
    if mismatch:
      # Orbax's own error is a long traceback about one array; name the culprit in one line.
      raise CheckpointMismatchError(
        f"checkpoint at step {step} does not match the model config: {mismatch}"
      )
    try:
      state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
    except Exception as e:  # TensorStore, orbax and OS errors of truncated or missing files
      raise _UnreadableError(f"its arrays cannot be read: {_root_cause(e)}") from e
    if not tree_is_finite(state):
      raise _UnreadableError("it holds inf or NaN values")
    return state

  def set_aside(self, step: int) -> str:
    """Moves an unreadable checkpoint out of the rotation into `<workdir>/unreadable_checkpoints`.

    A writer that resumed from an older step would otherwise meet the damaged step again when it
    saves that step. Nothing is deleted.

    Returns:
      The checkpoint's new path.
    """
    if self.read_only:
      raise ValueError(f"{self.directory} was opened read-only")
    target_dir = os.path.join(self.workdir, UNREADABLE_DIRNAME)
    os.makedirs(target_dir, exist_ok=True)
    target = os.path.join(target_dir, str(step))
    suffix = 1
    while os.path.exists(target):
      target = os.path.join(target_dir, f"{step}.{suffix}")
      suffix += 1
    os.rename(self.step_path(step), target)
    self.reload()
    return target

  def reload(self) -> None:
    """Lists the steps on disk again (after another process changed them)."""
    if self._manager:
      self._manager.reload()

  def wait(self) -> None:
    """Blocks until pending saves are finalized on disk."""
    if self._manager:
      self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases orbax's resources."""
    if self._manager:
      self._manager.close()


# A reader whose steps keep being rotated out by a fast trainer lists them again at most this often.
_MAX_RELISTS = 5


class _UnreadableError(Exception):
  """A checkpoint's files are damaged or missing, or hold non-finite values."""


def _root_cause(error: BaseException) -> str:
  """The first line of the innermost error behind `error` (orbax wraps TensorStore's, which says
  which file and byte range failed, in a message that can run to hundreds of lines)."""
  while error.__cause__ or error.__context__:
    error = error.__cause__ or error.__context__
  lines = str(error).strip().splitlines()
  return f"{type(error).__name__}: {lines[0][:300] if lines else ''}"


@jax.jit
def _all_finite(leaves: list[jax.Array]) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def tree_is_finite(tree: Any) -> bool:
  """Whether every floating-point leaf of a pytree of arrays is free of inf and NaN."""
  leaves = [
    leaf
    for leaf in jax.tree.leaves(tree)
    if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)  # leaves may be Python numbers
  ]
  return bool(_all_finite(leaves)) if leaves else True


def _shapes_by_path(tree: Any) -> dict[str, tuple[int, ...] | None]:
  """Maps each leaf's path ('opt_state/0/mu/conv/kernel') to its shape."""
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return {
    jax.tree_util.keystr(path, simple=True, separator="/"): (
      tuple(leaf.shape) if hasattr(leaf, "shape") else None
    )
    for path, leaf in leaves
  }


def _first_mismatch(
  stored: dict[str, tuple[int, ...] | None], expected: dict[str, tuple[int, ...] | None]
) -> str | None:
  """Describes the first leaf that is missing, extra or differently shaped, or returns None."""
  for path, shape in expected.items():
    if path not in stored:
      return f"{path} {shape} is not in the checkpoint"
    if stored[path] != shape:
      return f"{path} has shape {stored[path]} in the checkpoint but {shape} in the model"
  for path, shape in stored.items():
    if path not in expected:
      return f"{path} {shape} is in the checkpoint but not in the model"
  return None
