"""Sample quality of a run: FID, Inception Score and KID of its samples, and bits/dim on a split.

The features come from a `feature_nets.FeatureNet`: the FID Inception network for the numbers the
literature reports, or the digits classifier, which runs anywhere. Reference statistics are either
a stats file (mu, sigma; e.g. the standard CIFAR-10 training-set file) or computed from a split
of the run's dataset and cached (see `reference_stats`).

`evaluate_run` is the full evaluation evaluate.py runs: samples go to a `sample_store.SampleStore`
so an interrupted job resumes, and the results to a JSON file beside them. `quick_scores` is the
light, in-memory version train.py logs every config.eval.every_steps steps.
"""

import dataclasses
import hashlib
import json
import os
import time

import jax
import ml_collections
import numpy as np

from diffusion_jax import (
  bpd_evaluation,
  feature_nets,
  generation,
  images,
  reference_stats,
  sample_metrics,
  sample_store,
  samplers,
  sharding,
)
from diffusion_jax.run_loading import LoadedRun

METRICS = ("fid", "is", "kid", "bpd")


def parse_metrics(names: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
  """Validates metric names given as a list or comma-separated string."""
  if isinstance(names, str):
    names = [n for n in names.split(",") if n]
  names = tuple(n.strip().lower() for n in names)
  unknown = [n for n in names if n not in METRICS]
  if unknown or not names:
    raise ValueError(f"unknown metrics {unknown or names}; choose from {', '.join(METRICS)}")
  return names


def check_image_data(config: ml_collections.ConfigDict, example_shape: tuple[int, ...]) -> None:
  if len(example_shape) != 3:
    raise ValueError(
      f"sample-quality metrics need images; {config.data.name} is {example_shape[-1]}-D points "
      "(benchmarks/samplers_table.py compares samplers on 2D data)"
    )


def load_reference(
  config: ml_collections.ConfigDict,
  net: feature_nets.FeatureNet,
  *,
  stats_path: str = "",
  split: str = "train",
  cache_dir: str = "",
  batch_size: int = 256,
  mesh=None,
) -> sample_metrics.ReferenceStats:
  """The reference statistics: read from stats_path, else computed from `split` and cached."""
  if stats_path:
    ref = sample_metrics.load_stats(stats_path)
  else:
    data_config = bpd_evaluation.split_config(config.data, split)
    ref = reference_stats.dataset_reference_stats(
      data_config, net, batch_size=batch_size, cache_dir=cache_dir, mesh=mesh
    )
  if ref.mu.shape != (net.feature_dim,):
    raise ValueError(
      f"reference statistics have {ref.mu.shape[0]}-d features but {net.name} gives "
      f"{net.feature_dim}-d ones; use statistics computed with the same feature network"
    )
  return ref


def score(
  features: np.ndarray,
  logits: np.ndarray,
  ref: sample_metrics.ReferenceStats,
  metrics: tuple[str, ...],
) -> dict:
  """FID, IS and KID (those listed in `metrics`) of samples' features and logits."""
  out = {}
  if "fid" in metrics:
    mu, sigma = sample_metrics.feature_statistics(features)
    out["fid"] = sample_metrics.frechet_distance(mu, sigma, ref.mu, ref.sigma)
  if "is" in metrics:
    out["is"], out["is_std"] = sample_metrics.inception_score(logits)
  if "kid" in metrics:
    ref_features = ref.require_features("KID")
    out["kid"], out["kid_std"] = sample_metrics.kernel_inception_distance(features, ref_features)
  return {k: float(v) for k, v in out.items()}


def quick_scores(
  config: ml_collections.ConfigDict,
  model,
  params,
  sched,
  example_shape: tuple[int, ...],
  key: jax.Array,
  mesh,
  net: feature_nets.FeatureNet,
  ref: sample_metrics.ReferenceStats,
) -> dict:
  """config.eval.num_samples samples from params, in memory, scored by config.eval.metrics.

  The sampler is config.sampling's, with config.eval.sampler / steps overriding it when set.
  """
  spec = eval_sampler_spec(config)
  metrics = tuple(m for m in parse_metrics(config.eval.metrics) if m != "bpd")
  samples, _ = generation.generate(
    model,
    params,
    sched,
    example_shape,
    config.eval.num_samples,
    config.sampling.batch_size,
    key,
    mesh,
    spec,
    progress=False,
  )
  features, logits = feature_nets.compute_features(
    net, _batches(images.to_uint8(samples), config.sampling.batch_size), mesh=mesh
  )
  return score(features, logits, ref, metrics)


def eval_sampler_spec(config: ml_collections.ConfigDict) -> samplers.SamplerSpec:
  """config.sampling's sampler, with config.eval.sampler and config.eval.steps when set."""
  return samplers.spec_from_config(
    config.sampling, name=config.eval.sampler or None, steps=config.eval.steps or None
  )


def store_dir(workdir: str, step: int, settings: dict) -> str:
  """<workdir>/eval/step_<N>/<sampler>_<digest of the settings>."""
  digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
  return os.path.join(
    workdir, "eval", f"step_{step:07d}", f"{settings['sampler']['name']}_{digest}"
  )


def evaluate_run(
  run: LoadedRun,
  workdir: str,
  spec: samplers.SamplerSpec,
  *,
  num_samples: int,
  batch_size: int,
  seed: int,
  use_ema: bool,
  metrics: tuple[str, ...],
  net: feature_nets.FeatureNet | None,
  ref: sample_metrics.ReferenceStats | None,
  reference_name: str = "",
  bpd_split: str = "",
  bpd_num_examples: int | None = None,
  overwrite: bool = False,
) -> tuple[dict, str]:
  """Draws num_samples samples into a resumable store, scores them, and writes a JSON.

  Args:
    run: the loaded run (its params are the ones `use_ema` says).
    workdir: the run's workdir; outputs go under <workdir>/eval/step_<N>/.
    spec: the sampler.
    num_samples: samples to draw and score.
    batch_size: samples per batch (rounded up to a multiple of the device count).
    seed: sampling seed.
    use_ema: whether run.params are the EMA params (recorded).
    metrics: from METRICS; fid/is/kid need `net` and `ref`.
    net: the feature network.
    ref: reference statistics.
    reference_name: where the reference came from, for the JSON.
    bpd_split: split for bits/dim (default: test for tfds data, else train).
    bpd_num_examples: examples for bits/dim (default: the whole split).
    overwrite: replace an existing results file.

  Returns:
    (results, path of the JSON written).
  """
  check_image_data(run.config, run.example_shape)
  bpd_split = bpd_split or bpd_evaluation.default_split(run.config.data)
  if "bpd" in metrics:
    bpd_evaluation.split_config(run.config.data, bpd_split)  # a bad split fails before sampling
  mesh = sharding.data_mesh()
  batch_size = generation.device_batch_size(batch_size, num_samples, mesh)
  settings = dict(
    step=run.step,
    ema=use_ema,
    sampler=dataclasses.asdict(spec),
    seed=seed,
    batch_size=batch_size,
  )
  directory = store_dir(workdir, run.step, settings)
  suffix = f"_{net.name}" if net is not None and set(metrics) & {"fid", "is", "kid"} else ""
  out = os.path.join(directory, f"results_n{num_samples}{suffix}.json")
  if os.path.exists(out) and not overwrite:
    raise ValueError(f"{out} exists; pass --overwrite to evaluate again")
  results = dict(settings, num_samples=num_samples, metrics=list(metrics))
  sample_metric_names = tuple(m for m in metrics if m != "bpd")
  if sample_metric_names:
    store = sample_store.SampleStore(os.path.join(directory, "samples"), settings)
    start = time.perf_counter()
    num_shards = sample_store.fill(store, run, spec, num_samples, batch_size, seed, mesh)
    results["sampling_seconds"] = time.perf_counter() - start
    results["network_evals_per_sample"] = store.mean_nfe(num_shards)
    start = time.perf_counter()
    features, logits = feature_nets.compute_features(
      net, store.read(num_samples, num_shards), mesh=mesh, progress=f"{net.name} features"
    )
    results["feature_seconds"] = time.perf_counter() - start
    results.update(feature_net=net.name, reference=reference_name)
    results.update(score(features, logits, ref, sample_metric_names))
  if "bpd" in metrics:
    results["bpd"] = bpd_evaluation.evaluate_split(
      run, "vlb", bpd_split, batch_size, bpd_num_examples, seed
    )
  if jax.process_index() == 0:
    os.makedirs(directory, exist_ok=True)
    with open(out, "w") as f:
      json.dump(results, f, indent=2)
  return results, out


def _batches(array: np.ndarray, batch_size: int):
  for start in range(0, len(array), batch_size):
    yield array[start : start + batch_size]
