"""Diffusers models by their Hub name (google/ddpm-cifar10-32): the files `diffusers_unet` (or
`diffusers_autoencoder`) reads, downloaded once into the Hugging Face cache and found there
afterwards, with or without a network.

  folder = hub.model_folder("google/ddpm-cifar10-32")
  config, params = diffusers_unet.load_diffusers_unet(folder)
  folder = hub.model_folder("stabilityai/sd-vae-ft-mse", files=diffusers_autoencoder.choose_files)

Only the files the converter reads are fetched: the U-Net config, one weight file (safetensors
where the repo has both) and the scheduler config, from a model repo or a pipeline's `unet/` and
`scheduler/`; for an autoencoder its config and one weight file, from a model repo or `vae/`.
The cache is huggingface_hub's, shared with the other libraries that use it (HF_HUB_CACHE, else
HF_HOME/hub, else ~/.cache/huggingface/hub). With HF_HUB_OFFLINE=1, with `local_files_only`, or
when the Hub cannot be reached, the cache alone answers. huggingface_hub reads these variables
when it is imported: set them before, or pass `cache_dir` and `local_files_only`.
"""

import os
from collections.abc import Callable

import huggingface_hub
from huggingface_hub import constants
from huggingface_hub.utils import (
  HFValidationError,
  RepositoryNotFoundError,
  RevisionNotFoundError,
  validate_repo_id,
)

from diffusion_jax.pretrained import diffusers_unet

# A converter's choice of files: (exists(relative path), model name for errors) -> the relative
# paths it reads, its config first.
FileChoice = Callable[[Callable[[str], bool], str], tuple[str, ...]]
# Where a model's config may lie: in a model repo, or a pipeline's U-Net or autoencoder.
_CONFIGS = ("config.json", "unet/config.json", "vae/config.json")


def model_folder(
  repo_id: str,
  revision: str | None = None,
  cache_dir: str | None = None,
  local_files_only: bool = False,
  files: FileChoice = diffusers_unet.choose_files,
) -> str:
  """The local folder of a diffusers model on the Hub, for `diffusers_unet.load_diffusers_unet`
  (or, with files=diffusers_autoencoder.choose_files, `load_diffusers_autoencoder`).

  Args:
    repo_id: the model's Hub name, e.g. "google/ddpm-cifar10-32" (a model or a pipeline repo).
    revision: a branch, tag or commit hash (default: main).
    cache_dir: the Hub cache (default: huggingface_hub's, from HF_HUB_CACHE or HF_HOME).
    local_files_only: look in the cache only, as HF_HUB_OFFLINE=1 does.
    files: the converter's `choose_files`, which picks the files to fetch.

  Returns:
    The cache's snapshot folder holding the files the converter reads.

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
    return _cached_folder(repo_id, revision, cache_dir, why, files)
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
    why = f"asking the Hub failed ({_one_line(e)})"
    return _cached_folder(repo_id, revision, cache_dir, why, files)
  listing = {sibling.rfilename for sibling in info.siblings or ()}
  chosen = files(listing.__contains__, f"{name} on the Hugging Face Hub")
  try:
    return huggingface_hub.snapshot_download(
      repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=list(chosen)
    )
  except Exception as e:
    raise ValueError(f"downloading {', '.join(chosen)} of {name} failed: {_one_line(e)}") from None


def _cached_folder(
  repo_id: str, revision: str | None, cache_dir: str | None, why: str, files: FileChoice
) -> str:
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
    config = files(lambda p: cached(p) is not None, "the cached copy")[0]
  except ValueError as e:
    if all(cached(path) is None for path in _CONFIGS):
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
