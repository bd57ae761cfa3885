"""A latent diffusion run's training data encoded once (data.latent_cache): the posterior means of
q(z|x) of every training example, and of its mirror image when data.random_flip, so that training
steps run without the encoder.

The folder holds cache.json (what was encoded: the data, the classes, the autoencoder run and a
digest of its params) and shards of consecutive examples, latents_<k>.npy (float32 [n, h, w, c],
or [n, 2, h, w, c]: the image's and its mirror's) and, for labeled data, labels_<k>.npy. Each file
is written under a temporary name and renamed when complete, so an interrupted build leaves whole
shards only and the next run encodes the missing ones. Latents are stored unscaled: one cache
serves any data.latent_scale. With several processes each encodes its share of the missing shards;
the folder must then be on a filesystem they all see (as the workdir is).
"""

import hashlib
import json
import os
import socket

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from diffusion_jax import data
from diffusion_jax.training import latent_space

SHARD_SIZE = 2048  # examples per shard: the unit of resuming
MANIFEST = "cache.json"


def scaled_latents(scale: jax.Array, z: jax.Array, flip_B: jax.Array | None) -> jax.Array:
  """`step.make_train_steps`' latents_of for a batch of cached means z: scale * z, taking the
  mirror image's latents ([B, 2, h, w, c] holds both) where flip_B is true."""
  if flip_B is not None:
    z = jnp.where(flip_B[:, None, None, None], z[:, 1], z[:, 0])
  return scale * z


def cached_dataset(
  config: ml_collections.ConfigDict,
  space: latent_space.LatentSpace,
  global_batch_size: int,
  *,
  labeled: bool = False,
) -> data.Dataset:
  """The run's training batches as cached latents, the cache built first where it is incomplete;
  batch s holds the same examples as the image dataset's batch s (same seed, same order)."""
  manifest = build(config, space, labeled=labeled, batch_size=global_batch_size)
  examples = cached_examples(config.data.latent_cache, manifest)
  return data.Dataset(
    examples, global_batch_size, config.seed, jax.process_index(), jax.process_count()
  )


def build(
  config: ml_collections.ConfigDict,
  space: latent_space.LatentSpace,
  *,
  labeled: bool = False,
  batch_size: int = 64,
  shard_size: int = SHARD_SIZE,
) -> dict:
  """Encodes the shards missing from config.data.latent_cache and returns its manifest.

  Raises:
    ValueError: one line: the folder holds a cache of other data or another autoencoder, or
      shards are still missing after every process has written its share.
  """
  folder = config.data.latent_cache
  examples = data.create_examples(config.data, config.seed, labeled)
  manifest = _manifest(config, space, examples, shard_size)
  _check_or_write_manifest(folder, manifest)
  num_shards = -(-examples.num_examples // shard_size)
  # Shares by index, not by what is on disk: processes that look at different moments agree.
  mine = [
    k
    for k in range(jax.process_index(), num_shards, jax.process_count())
    if not os.path.exists(_latents_path(folder, k))
  ]
  count = sum(len(_shard_indices(k, manifest)) for k in mine)
  # One device's copy of the params: each process encodes its own shards, a different number of
  # programs on each, which a program spanning the processes' devices must not be.
  local_params = jax.tree.map(
    lambda a: a.addressable_data(0) if isinstance(a, jax.Array) else a, space.params
  )
  with tqdm.tqdm(total=count, desc="encode latents", unit="image", disable=not mine) as bar:
    for k in mine:
      indices = _shard_indices(k, manifest)
      if labeled:
        x, labels = examples.load_labeled(indices)
        _save_atomically(_labels_path(folder, k), labels)
      else:
        x = examples.load(indices)
      z = _posterior_means(space.vae, local_params, x, batch_size)
      if manifest["mirrored"]:
        mirrored = _posterior_means(space.vae, local_params, x[:, :, ::-1], batch_size)
        z = np.stack([z, mirrored], axis=1)
      _save_atomically(_latents_path(folder, k), z)
      bar.update(len(indices))
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("latent cache written")
  absent = [k for k in range(num_shards) if not os.path.exists(_latents_path(folder, k))]
  if absent:
    raise ValueError(
      f"data.latent_cache {folder} misses shard {absent[0]} after every process wrote its share; "
      "it must be on a filesystem all processes see"
    )
  return manifest


def cached_examples(folder: str, manifest: dict) -> data.Examples:
  """The cached latents of a complete cache as examples, [2,] h, w, c each, memory-mapped."""
  shard_size, total = manifest["shard_size"], manifest["num_examples"]
  num_shards = -(-total // shard_size)
  shards = [np.load(_latents_path(folder, k), mmap_mode="r") for k in range(num_shards)]
  shape = shards[0].shape[1:]

  def load(indices: np.ndarray) -> np.ndarray:
    shard, offset = np.divmod(np.asarray(indices), shard_size)
    out = np.empty((len(shard), *shape), np.float32)
    for k in np.unique(shard):
      here = shard == k
      out[here] = shards[k][offset[here]]
    return out

  class_names = tuple(manifest["class_names"])
  load_labeled = None
  if class_names:
    labels = np.concatenate([np.load(_labels_path(folder, k)) for k in range(num_shards)])
    load_labeled = lambda indices: (load(indices), labels[indices])
  return data.Examples(load, total, shape, False, load_labeled, class_names)


def _manifest(
  config: ml_collections.ConfigDict,
  space: latent_space.LatentSpace,
  examples: data.Examples,
  shard_size: int,
) -> dict:
  """What the cache holds; a cache whose manifest differs holds other latents."""
  fields = ("source", "name", "path", "split", "image_size", "center_crop", "num_channels")
  return {
    "data": {field: config.data[field] for field in fields},
    "class_names": list(examples.class_names),
    "mirrored": bool(config.data.random_flip),
    "autoencoder_run": config.data.autoencoder_run,
    "autoencoder_sha256": _params_digest(space.params),
    "num_examples": examples.num_examples,
    "latent_shape": list(space.latent_shape(examples.example_shape)),
    "shard_size": shard_size,
  }


def _params_digest(params: dict) -> str:
  """SHA-256 of the params' names, shapes and bytes: a retrained autoencoder has another."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]:
    leaf = np.ascontiguousarray(leaf)
    digest.update(f"{jax.tree_util.keystr(path)}{leaf.shape}{leaf.dtype}".encode())
    digest.update(leaf.tobytes())
  return digest.hexdigest()


def _check_or_write_manifest(folder: str, manifest: dict) -> None:
  """Process 0 writes the manifest where there is none; then every process compares it."""
  path = os.path.join(folder, MANIFEST)
  if jax.process_index() == 0 and not os.path.exists(path):
    os.makedirs(folder, exist_ok=True)
    _save_atomically(path, json.dumps(manifest, indent=2, sort_keys=True).encode())
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("latent cache manifest")
  with open(path) as f:
    found = json.load(f)
  differ = sorted(k for k in manifest.keys() | found.keys() if manifest.get(k) != found.get(k))
  if differ:
    raise ValueError(
      f"data.latent_cache {folder} holds the latents of other data or another autoencoder "
      f"({', '.join(differ)} differ); give another folder or delete this one"
    )


def _shard_indices(k: int, manifest: dict) -> np.ndarray:
  size = manifest["shard_size"]
  return np.arange(k * size, min((k + 1) * size, manifest["num_examples"]))


def _posterior_means(vae, params: dict, x: np.ndarray, batch_size: int) -> np.ndarray:
  """The posterior means of x [n, H, W, C], batch_size at a time."""
  return latent_space.in_batches(
    lambda batch: latent_space.posterior_mean(vae, params, batch), x, batch_size
  )


def _latents_path(folder: str, k: int) -> str:
  return os.path.join(folder, f"latents_{k:05d}.npy")


def _labels_path(folder: str, k: int) -> str:
  return os.path.join(folder, f"labels_{k:05d}.npy")


def _save_atomically(path: str, content: np.ndarray | bytes) -> None:
  """Writes an array (.npy) or bytes beside path, then renames it: path is whole or absent."""
  # Named by host and process, so that two writers never share a temporary file.
  tmp = f"{path}.{socket.gethostname()}.{os.getpid()}.tmp"
  try:
    with open(tmp, "wb") as f:
      if isinstance(content, bytes):
        f.write(content)
      else:
        np.save(f, content)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
