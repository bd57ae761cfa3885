"""Feature statistics of images: of a configured dataset (cached), or of any uint8 image stream."""

import hashlib
import os
from collections.abc import Iterable, Iterator

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from diffusion_jax import data, images
from diffusion_jax.metrics import feature_nets, scores


def stats_from_images(
  image_batches: Iterable[np.ndarray],
  net: feature_nets.FeatureNet,
  *,
  mesh: Mesh | None = None,
  progress: str | None = None,
  metadata: dict | None = None,
) -> tuple[scores.ReferenceStats, np.ndarray]:
  """Feature statistics, features and logits of a stream of uint8 images (e.g. sample shards).

  Args:
    image_batches: uint8 [B, H, W, C] arrays in 0..255.
    net: the feature network.
    mesh: a ('data',) mesh; default sharding.data_mesh().
    progress: shows a progress bar with this description when given.
    metadata: stored in the returned stats' metadata, with net, feature_dim and num_examples.

  Returns:
    (ReferenceStats with float64 mu, sigma and float32 features [N, D], float32 logits [N, K]).
  """
  accumulator = scores.StatsAccumulator()
  features, logits = [], []
  outputs = feature_nets.iterate_features(net, image_batches, mesh=mesh, progress=progress)
  for features_BxD, logits_BxK in outputs:
    accumulator.add(features_BxD)
    features.append(features_BxD)
    logits.append(logits_BxK)
  mu, sigma = accumulator.result()
  metadata = dict(
    metadata or {}, net=net.name, feature_dim=net.feature_dim, num_examples=accumulator.count
  )
  stats = scores.ReferenceStats(mu, sigma, np.concatenate(features), metadata)
  return stats, np.concatenate(logits)


def _dataset_uint8_batches(ds: data.Dataset, batch_size: int, num_examples: int) -> Iterator:
  """The first num_examples images of the dataset in order, back in uint8.

  The pipeline's floats are 8-bit pixels (after any PIL resize) / 127.5 - 1, so
  round((x + 1) * 127.5) recovers every pixel exactly: float32 rounding moves (x + 1) * 127.5 by
  less than 1e-4, far from the 0.5 that would change the rounding.
  """
  seen = 0
  for x in ds.ordered_batches(batch_size):
    x = x[: num_examples - seen]
    seen += len(x)
    yield images.to_uint8(x)
    if seen >= num_examples:
      return


def _dataset_description(data_config: ml_collections.ConfigDict) -> dict:
  """The data settings that decide which images the statistics describe."""
  return dict(
    source=data_config.source,
    name=data_config.name,
    path=os.path.abspath(data_config.path) if data_config.path else "",
    split=data_config.split,
    image_size=data_config.image_size,
    center_crop=bool(data_config.center_crop),
    num_channels=data_config.num_channels,
  )


def default_stats_path(description: dict, cache_dir: str = "") -> str:
  """The cache file for a dataset description (as stored in the metadata) under the cache dir.

  Args:
    description: the data fields plus net and num_examples.
    cache_dir: default $DIFFUSION_JAX_CACHE or ~/.cache/diffusion_jax.

  Returns:
    <cache_dir>/reference_stats/<source>_<name or folder/file name>_<split>_<size>px_..._<net>.npz;
    a short hash of the full description keeps different paths or settings apart.
  """
  d = description
  label = d["name"] if d["source"] in ("tfds", "builtin") else os.path.basename(d["path"])
  digest = hashlib.sha256(repr(sorted(d.items())).encode()).hexdigest()[:8]
  name = (
    f"{d['source']}_{label}_{d['split']}_{d['image_size']}px_{d['num_channels']}ch"
    f"{'_crop' if d['center_crop'] else ''}_{d['num_examples']}_{d['net']}_{digest}.npz"
  )
  return os.path.join(scores.default_cache_dir(cache_dir), "reference_stats", name)


def dataset_reference_stats(
  data_config: ml_collections.ConfigDict,
  net: feature_nets.FeatureNet,
  *,
  num_examples: int | None = None,
  batch_size: int = 256,
  cache_path: str = "",
  cache_dir: str = "",
  mesh: Mesh | None = None,
  overwrite: bool = False,
  progress: bool = True,
) -> scores.ReferenceStats:
  """Feature statistics of a dataset's images, computed once and cached as an .npz.

  The dataset is read in order by data.create_dataset (so images go through the same resizing and
  cropping as in training), turned back into uint8 and passed through the net.

  Args:
    data_config: `config.data` of an image dataset; `split` picks the split.
    net: the feature network.
    num_examples: the first N images (default: all of them).
    batch_size: images per feature-net batch.
    cache_path: the cache file; default default_stats_path(...) under cache_dir.
    cache_dir: default $DIFFUSION_JAX_CACHE or ~/.cache/diffusion_jax.
    mesh: a ('data',) mesh; default sharding.data_mesh().
    overwrite: recompute and replace an existing cache file.
    progress: show a progress bar while computing.

  Returns:
    ReferenceStats with mu, sigma, float32 features and metadata (the data fields, net,
    feature_dim, num_examples). An existing cache whose metadata differ raises ValueError.
  """
  # Every process reads the whole split in the same order; the feature net then runs each batch
  # split over the devices of all processes, and every process gets all the features.
  ds = data.create_dataset(data_config, batch_size, seed=0, process_index=0, process_count=1)
  if not ds.is_image:
    raise ValueError(f"reference statistics need image data; {data_config.name!r} is 2D points")
  if num_examples is not None and num_examples < 2:
    raise ValueError(f"num_examples must be >= 2 for a covariance, got {num_examples}")
  num_examples = min(num_examples or ds.num_examples, ds.num_examples)
  description = dict(
    _dataset_description(data_config),
    net=net.name,
    feature_dim=net.feature_dim,
    num_examples=num_examples,
  )
  path = cache_path or default_stats_path(description, cache_dir)
  cached = os.path.exists(path) and not overwrite
  if jax.process_count() > 1:
    # Computing is collective: unless every process finds the file (caches may be per host), all
    # of them compute, so that none waits alone in the feature net.
    cached = bool(np.all(multihost_utils.process_allgather(np.array(cached))))
  if cached:
    stats = scores.load_stats(path)
    found = {k: stats.metadata.get(k) for k in description}
    if found != description:
      diff = ", ".join(
        f"{k}: {found[k]!r} (wanted {v!r})" for k, v in description.items() if found[k] != v
      )
      raise ValueError(
        f"reference statistics {path} were computed for other settings ({diff}); "
        "pass overwrite=True to recompute them or choose another cache path"
      )
    return stats
  batches = _dataset_uint8_batches(ds, batch_size, num_examples)
  is_main = jax.process_index() == 0
  stats, _ = stats_from_images(
    batches,
    net,
    mesh=mesh,
    progress="reference features" if progress and is_main else None,
    metadata=description,
  )
  if is_main:  # the one writer; the write is atomic, so readers never see half a file
    scores.save_stats(
      path, stats.mu, stats.sigma, stats.features, metadata=stats.metadata, overwrite=True
    )
  return scores.ReferenceStats(stats.mu, stats.sigma, stats.features, stats.metadata, path)
