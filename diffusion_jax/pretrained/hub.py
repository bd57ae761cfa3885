"""Diffusers models by their Hub name (google/ddpm-cifar10-32): the files `diffusers_unet` reads,
downloaded once into the Hugging Face cache and found there afterwards, with or without a network.

  folder = hub.model_folder("google/ddpm-cifar10-32")
  config, params = diffusers_unet.load_diffusers_unet(folder)

Only the files the converter reads are fetched: the U-Net config, one weight file (safetensors
where the repo has both) and the scheduler config, from a model repo or a pipeline's `unet/` and
`scheduler/`. The cache is huggingface_hub's, shared with the other libraries that use it
(HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub). With HF_HUB_OFFLINE=1, with
`local_files_only`, or when the Hub cannot be reached, the cache alone answers. huggingface_hub
reads these variables when it is imported: set them before, or pass `cache_dir` and
`local_files_only`.
"""

import os

import huggingface_hub
from huggingface_hub import constants
from huggingface_hub.utils import (
  HFValidationError,
  RepositoryNotFoundError,
  RevisionNotFoundError,
  validate_repo_id,
)

from diffusion_jax.pretrained import diffusers_unet


def model_folder(
  repo_id: str,
  revision: str | None = None,
  cache_dir: str | None = None,
  local_files_only: bool = False,
) -> str:
  """The local folder of a diffusers model on the Hub, for `diffusers_unet.load_diffusers_unet`.

  Args:
    repo_id: the model's Hub name, e.g. "google/ddpm-cifar10-32" (a model or a pipeline repo).
    revision: a branch, tag or commit hash (default: main).
    cache_dir: the Hub cache (default: huggingface_hub's, from HF_HUB_CACHE or HF_HOME).
    local_files_only: look in the cache only, as HF_HUB_OFFLINE=1 does.

  Returns:
    The cache's snapshot folder holding the U-Net config, its weights and the scheduler config.

  Raises:
    ValueError: in one line: a malformed name, no such repo or revision, a repo without those
      files, a failed download, or a model not in the cache when the Hub is not or cannot be asked.
  """
  try:
    validate_repo_id(repo_id)
  except HFValidationError:
    raise ValueError(
      f"{repo_id!r} is not a Hub model name (owner/name, e.g. google/ddpm-cifar10-32)"
    ) from None
  if constants.HF_HUB_OFFLINE or local_files_only:
    why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "local_files_only is set"
    return _cached_folder(repo_id, revision, cache_dir, why)
  name = _name(repo_id, revision)
  try:
    # model_info lists the files in one request; list_repo_files would retry a dead network for
    # half a minute before the cache is looked at.
    info = huggingface_hub.HfApi().model_info(repo_id, revision=revision)
  except RevisionNotFoundError:
    raise ValueError(f"{repo_id} has no revision {revision!r} on the Hugging Face Hub") from None
  except RepositoryNotFoundError:  # also what a private or gated repo answers without access
    raise ValueError(
      f"{repo_id}: no such model on the Hugging Face Hub, or not one this machine may read "
      "(private and gated models need a token in HF_TOKEN)"
    ) from None
  except Exception as e:  # no route, a timeout, the Hub down: whichever, the cache may answer
    return _cached_folder(repo_id, revision, cache_dir, f"asking the Hub failed ({_one_line(e)})")
  listing = {sibling.rfilename for sibling in info.siblings or ()}
  files = diffusers_unet.choose_files(listing.__contains__, f"{name} on the Hugging Face Hub")
  try:
    return huggingface_hub.snapshot_download(
      repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=list(files)
    )
  except Exception as e:
    raise ValueError(f"downloading {', '.join(files)} of {name} failed: {_one_line(e)}") from None


def _cached_folder(repo_id: str, revision: str | None, cache_dir: str | None, why: str) -> str:
  """The cache's snapshot folder of repo_id with every file the converter reads, else ValueError."""

  def cached(path: str) -> str | None:
    found = huggingface_hub.try_to_load_from_cache(
      repo_id, path, cache_dir=cache_dir, revision=revision
    )
    # Besides a path or None it may return a marker: the Hub said the file does not exist.
    return found if isinstance(found, str) else None

  name = _name(repo_id, revision)
  cache = f"Hugging Face cache {cache_dir or constants.HF_HUB_CACHE}"
  advice = (
    "run once with network access to download it, or convert a downloaded folder (--model_dir)"
  )
  try:
    config, _, _ = diffusers_unet.choose_files(lambda p: cached(p) is not None, "the cached copy")
  except ValueError as e:
    if cached("config.json") is None and cached("unet/config.json") is None:
      raise ValueError(f"{name} is not cached ({cache}) and {why}; {advice}") from None
    raise ValueError(f"{name} is only partly cached ({cache}): {e}; {why}; {advice}") from None
  folder = cached(config)
  for _ in config.split("/"):  # up from the file to the snapshot's root
    folder = os.path.dirname(folder)
  return folder


def _name(repo_id: str, revision: str | None) -> str:
  return repo_id if revision is None else f"{repo_id} at revision {revision}"


def _one_line(error: Exception) -> str:
  """The error's class and first line: huggingface_hub's messages run over several lines."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
