"""The run's config, recorded as `<workdir>/config.json`: written once the run starts, read back by
everything that opens the run."""

import json
import os
import tempfile
from typing import Any

import ml_collections

from diffusion_jax.configs import default

CONFIG_FILENAME = "config.json"
CLASSES_FILENAME = "classes.json"  # a class-conditional run's class names, label k at index k


def save_config(
  workdir: str, config: ml_collections.ConfigDict, *, mutable: tuple[str, ...] = ()
) -> None:
  """Writes `config` to `<workdir>/config.json` atomically (call it on one process only).

  Args:
    workdir: the run's directory; created if missing.
    config: the run's config; its values must be JSON types (tuples are written as lists).
    mutable: groups (e.g. "training") and fields (e.g. "data.latent_cache") that may differ from
      an existing config.json, which is then replaced; a change anywhere else is an error.

  Raises:
    ValueError: `<workdir>/config.json` differs outside the `mutable` groups.
  """
  path = os.path.join(workdir, CONFIG_FILENAME)
  new = json.loads(json.dumps(config.to_dict()))
  if os.path.exists(path) and not check_resumable(workdir, config, mutable=mutable):
    return
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


def check_resumable(
  workdir: str, config: ml_collections.ConfigDict, *, mutable: tuple[str, ...] = ()
) -> bool:
  """Whether config differs from `<workdir>/config.json`, if there is one (see `save_config`).

  Raises:
    ValueError: it differs outside the `mutable` groups and fields.
  """
  path = os.path.join(workdir, CONFIG_FILENAME)
  if not os.path.exists(path):
    return False
  # Fields either side lacks (recorded before they existed) count as their defaults.
  old = _with_defaults(_read_config_json(path))
  new = json.loads(json.dumps(config.to_dict()))
  changed = _changed_keys(flatten(old), flatten(_with_defaults(new)))
  frozen = [k for k in changed if not any(k == m or k.startswith(f"{m}.") for m in mutable)]
  if frozen:
    raise ValueError(
      f"{path} holds a different config (changed: {', '.join(frozen)}); use another workdir"
    )
  return bool(changed)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """Reads `<workdir>/config.json` back into a locked ConfigDict.

  JSON has no tuples, so every list comes back as a tuple (configs here use tuples, never lists).

  Args:
    workdir: the run's directory.

  Returns:
    The config, locked so that misspelled fields raise instead of being added; fields the file
    lacks (a run recorded by an older release) take configs/default.py's values.

  Raises:
    FileNotFoundError: the workdir has no config.json.
    ValueError: config.json is not a JSON object (e.g. truncated); the message names the file.
  """
  path = os.path.join(workdir, CONFIG_FILENAME)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{workdir} has no {CONFIG_FILENAME}; is it a train.py workdir?")
  config = ml_collections.ConfigDict(_lists_to_tuples(_with_defaults(_read_config_json(path))))
  config.lock()
  return config


def _with_defaults(stored: dict[str, Any]) -> dict[str, Any]:
  """The stored values over configs/default.py's: a run recorded before a field existed reads as
  having its default."""

  def merge(base, values):
    out = dict(base)
    for key, value in values.items():
      both_dicts = isinstance(value, dict) and isinstance(base.get(key), dict)
      out[key] = merge(base[key], value) if both_dicts and key != "kwargs" else value
    return out

  return merge(json.loads(json.dumps(default.get_config().to_dict())), stored)


def _read_config_json(path: str) -> dict[str, Any]:
  """The JSON object in a config.json; a damaged file is a ValueError that names it."""
  try:
    with open(path) as f:
      values = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is not valid JSON ({e}); the run's config cannot be read") from None
  if not isinstance(values, dict):
    raise ValueError(f"{path} does not hold a JSON object; the run's config cannot be read")
  return values


def _lists_to_tuples(value: Any) -> Any:
  """Turns the lists of a JSON value into tuples, recursively."""
  if isinstance(value, dict):
    return {key: _lists_to_tuples(item) for key, item in value.items()}
  if isinstance(value, list):
    return tuple(_lists_to_tuples(item) for item in value)
  return value


# Fields whose values are dicts of their own, not groups of fields (a custom network's arguments).
OPAQUE_FIELDS = ("model.kwargs",)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  """Flattens a config's nested dicts to dotted keys ('model.ch'), `OPAQUE_FIELDS` left whole."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict) and f"{prefix}{key}" not in OPAQUE_FIELDS:
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
  """Dotted keys added, removed or changed between two flattened configs."""
  keys = old.keys() | new.keys()
  return sorted(k for k in keys if k not in old or k not in new or old[k] != new[k])


def save_class_names(workdir: str, class_names: tuple[str, ...]) -> None:
  """Records a conditional run's class names as `<workdir>/classes.json` (one process only)."""
  path = os.path.join(workdir, CLASSES_FILENAME)
  with open(path + ".tmp", "w") as f:
    json.dump(list(class_names), f)
    f.write("\n")
  os.replace(path + ".tmp", path)


def load_class_names(workdir: str) -> tuple[str, ...]:
  """The class names a conditional run recorded; () for an unconditional run."""
  path = os.path.join(workdir, CLASSES_FILENAME)
  if not os.path.exists(path):
    return ()
  try:
    with open(path) as f:
      names = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"cannot read {path}: {e}") from None
  if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
    raise ValueError(f"{path} must hold a JSON list of class names")
  return tuple(names)
