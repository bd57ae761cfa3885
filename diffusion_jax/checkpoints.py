"""Orbax checkpoints of the training state under `<workdir>/checkpoints`, and the run's config."""

import json
import logging
import os
import tempfile
from typing import Any, TypeVar

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging as absl_logging

State = TypeVar("State")

CONFIG_FILENAME = "config.json"


class Checkpointer:
  """Saves and restores the training state under `<workdir>/checkpoints`, keeping the newest few.

  Orbax writes each step into `<step>.orbax-checkpoint-tmp` and renames it to `<step>` only once
  it is complete, so a run killed mid-save resumes from the last complete step.
  """

  def __init__(self, workdir: str, max_to_keep: int = 3):
    """Opens (creating if needed) the checkpoint directory of `workdir`.

    Args:
      workdir: the run's directory; checkpoints go to `<workdir>/checkpoints`.
      max_to_keep: how many of the newest checkpoints survive; older ones are deleted.
    """
    self.directory = os.path.join(workdir, "checkpoints")
    options = ocp.CheckpointManagerOptions(
      preservation_policy=ocp.checkpoint_managers.LatestN(n=max_to_keep),
      # Leftovers of saves that a killed run never finalized are never restored; reclaim the disk.
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
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """Returns the complete steps on disk, oldest first."""
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, *, wait: bool = False) -> None:
    """Starts saving `state` as `step` in the background (a step not above the latest is skipped).

    Args:
      step: the training step the state belongs to.
      state: a pytree of jax arrays (e.g. the TrainState); it is copied off device before return.
      wait: block until the checkpoint is finalized on disk.
    """
    self._manager.save(step, args=ocp.args.StandardSave(state))
    if wait:
      self.wait()

  def restore(self, abstract_state: State, step: int | None = None) -> State:
    """Restores a step (default: the latest) into the structure, shapes and shardings given.

    Args:
      abstract_state: the state's tree of `jax.ShapeDtypeStruct`s (from `jax.eval_shape`),
        optionally carrying shardings that the restored arrays will have.
      step: the step to restore; None for the latest.

    Returns:
      The restored state, with the tree type of `abstract_state`.

    Raises:
      FileNotFoundError: there is no complete checkpoint.
      ValueError: `step` is not on disk, or the checkpoint's tree or shapes differ from
        `abstract_state` (e.g. it was written with another model config).
    """
    steps = self.all_steps()
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {self.directory}; train first")
    if step is None:
      step = steps[-1]
    elif step not in steps:
      raise ValueError(f"no checkpoint for step {step} in {self.directory}; available: {steps}")
    stored = self._manager.metadata(step).item_metadata.tree
    mismatch = _first_mismatch(_shapes_by_path(stored), _shapes_by_path(abstract_state))
    if mismatch:
      # Orbax's own error is a long traceback about one array; name the culprit in one line.
      raise ValueError(f"checkpoint at step {step} does not match the model config: {mismatch}")
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

  def wait(self) -> None:
    """Blocks until pending saves are finalized on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases orbax's resources."""
    self._manager.close()


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


def save_config(
  workdir: str, config: ml_collections.ConfigDict, *, mutable: tuple[str, ...] = ()
) -> None:
  """Writes `config` to `<workdir>/config.json` atomically (call it on one process only).

  Args:
    workdir: the run's directory; created if missing.
    config: the run's config; its values must be JSON types (tuples are written as lists).
    mutable: top-level groups (e.g. "training") that may differ from an existing config.json,
      which is then replaced; a change anywhere else is an error.

  Raises:
    ValueError: `<workdir>/config.json` differs outside the `mutable` groups.
  """
  path = os.path.join(workdir, CONFIG_FILENAME)
  new = json.loads(json.dumps(config.to_dict()))
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    changed = _changed_keys(_flatten(old), _flatten(new))
    if not changed:
      return
    frozen = [k for k in changed if k.split(".")[0] not in mutable]
    if frozen:
      raise ValueError(
        f"{path} holds a different config (changed: {', '.join(frozen)}); use another workdir"
      )
  os.makedirs(workdir, exist_ok=True)
  # Write beside the target and rename, so a crash never leaves a half-written config.json.
  fd, tmp_path = tempfile.mkstemp(dir=workdir, prefix=f".{CONFIG_FILENAME}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(new, f, indent=2, sort_keys=True)
      f.write("\n")
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp_path, 0o644)  # mkstemp makes it private; a config is for everyone to read
    os.replace(tmp_path, path)
  except BaseException:
    os.unlink(tmp_path)
    raise


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """Reads `<workdir>/config.json` back into a locked ConfigDict.

  JSON has no tuples, so every list comes back as a tuple (configs here use tuples, never lists).

  Args:
    workdir: the run's directory.

  Returns:
    The config, locked so that misspelled fields raise instead of being added.
  """
  with open(os.path.join(workdir, CONFIG_FILENAME)) as f:
    config = ml_collections.ConfigDict(_lists_to_tuples(json.load(f)))
  config.lock()
  return config


def _lists_to_tuples(value: Any) -> Any:
  """Turns the lists of a JSON value into tuples, recursively."""
  if isinstance(value, dict):
    return {key: _lists_to_tuples(item) for key, item in value.items()}
  if isinstance(value, list):
    return tuple(_lists_to_tuples(item) for item in value)
  return value


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  """Flattens nested dicts to dotted keys ('model.ch')."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
  """Dotted keys added, removed or changed between two flattened configs."""
  keys = old.keys() | new.keys()
  return sorted(k for k in keys if k not in old or k not in new or old[k] != new[k])


def quiet_orbax_logs() -> None:
  """Drops orbax's INFO lines from absl's log handler, which would bury the progress bar."""
  handler = absl_logging.get_absl_handler()
  handler.addFilter(lambda r: r.levelno >= logging.WARNING or "orbax" not in r.pathname)
