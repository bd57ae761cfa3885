"""Generated images on disk in numbered shards, so a long sampling job resumes where it stopped.

A store is a folder holding manifest.json (the settings that determine the samples: checkpoint,
params, sampler, seed, batch size) and shard_<i>.npz, the uint8 images of batch i, which is drawn
from fold_in(key(seed), i) exactly as `generation.generate` draws it. A shard is written to a
temporary name and renamed, so an interrupted job leaves whole shards only; the next run with the
same settings draws just the missing ones. Asking more samples of a store extends it.
"""

import json
import os
from collections.abc import Iterator

import jax
import numpy as np
import tqdm

from diffusion_jax import images, samplers
from diffusion_jax.evaluation.run_loading import LoadedRun
from diffusion_jax.samplers import generation

MANIFEST = "manifest.json"


class SampleStore:
  """The shards in one folder, for one set of settings."""

  def __init__(self, directory: str, settings: dict):
    """Opens the store in `directory`, creating it, or checks it was made with these settings.

    Args:
      directory: the store's folder.
      settings: JSON-serialisable settings; a store made with other settings is refused.
    """
    self.directory = directory
    self.settings = json.loads(json.dumps(settings))  # as they read back from the manifest
    path = os.path.join(directory, MANIFEST)
    if os.path.exists(path):
      with open(path) as f:
        stored = json.load(f)
      if stored != self.settings:
        changed = sorted(
          k for k in stored.keys() | self.settings.keys() if stored.get(k) != self.settings.get(k)
        )
        raise ValueError(
          f"{directory} holds samples drawn with other settings ({', '.join(changed)} differ); "
          "choose another folder or remove it"
        )
    elif jax.process_index() == 0:
      os.makedirs(directory, exist_ok=True)
      _write_atomically(path, lambda f: f.write(json.dumps(self.settings, indent=2).encode()))

  def shard_path(self, index: int) -> str:
    return os.path.join(self.directory, f"shard_{index:06d}.npz")

  def missing(self, num_shards: int) -> list[int]:
    """The indices below num_shards that have no shard yet."""
    return [i for i in range(num_shards) if not os.path.exists(self.shard_path(i))]

  def write(self, index: int, images_uint8: np.ndarray, nfe: int) -> None:
    """Saves batch `index`: uint8 images [B, H, W, C] and the network evaluations per sample."""
    if jax.process_index() == 0:
      save = lambda f: np.savez(f, images=images_uint8, nfe=np.int64(nfe))  # noqa: E731
      _write_atomically(self.shard_path(index), save)

  def read(self, num_samples: int, num_shards: int) -> Iterator[np.ndarray]:
    """Yields the first num_samples images, shard by shard, as uint8 [b, H, W, C] batches."""
    left = num_samples
    for i in range(num_shards):
      with np.load(self.shard_path(i), allow_pickle=False) as shard:
        batch = shard["images"][:left]
      left -= len(batch)
      yield batch

  def mean_nfe(self, num_shards: int) -> float:
    """Network evaluations per sample, averaged over the shards."""
    nfes = []
    for i in range(num_shards):
      with np.load(self.shard_path(i), allow_pickle=False) as shard:
        nfes.append(int(shard["nfe"]))
    return float(np.mean(nfes))


def fill(
  store: SampleStore,
  run: LoadedRun,
  spec: samplers.SamplerSpec,
  num_samples: int,
  batch_size: int,
  seed: int,
  mesh,
  *,
  progress: bool = True,
  labels: np.ndarray | None = None,
  guidance_scale: float = 0.0,
) -> int:
  """Draws the shards `store` lacks for num_samples images from run's params.

  Args:
    batch_size: samples per shard; must be a multiple of the device count.
    labels: a conditional run's class of each sample (see `generation.sample_batches`).
    guidance_scale: its classifier-free guidance scale.

  Returns:
    the number of shards that hold the num_samples images.
  """
  num_shards = -(-num_samples // batch_size)
  todo = store.missing(num_shards)
  batches = generation.sample_batches(
    run.model,
    run.kind,
    run.params,
    run.sched,
    run.example_shape,
    batch_size,
    jax.random.key(seed),
    mesh,
    spec,
    todo,
    labels=labels,
    guidance_scale=guidance_scale,
  )
  bar = tqdm.tqdm(
    total=num_shards * batch_size,
    initial=(num_shards - len(todo)) * batch_size,
    desc="sampling",
    unit="img",
    disable=not progress or jax.process_index() != 0,
  )
  with bar:
    for i, x0, nfe in batches:
      store.write(i, images.to_uint8(run.to_images(x0)), nfe)
      bar.update(batch_size)
  return num_shards


def _write_atomically(path: str, write) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    write(f)
  os.replace(tmp, path)
