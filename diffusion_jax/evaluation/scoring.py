"""Sample quality of a run as evaluate.py measures it: FID, Inception Score and KID of its samples,
and bits/dim on a split, with the samples kept in a resumable store and the results in a JSON.

`evaluate_run` draws into a `sample_store.SampleStore`, so an interrupted job resumes, and writes
the results beside the samples (see `metrics.sample_quality` for the metrics themselves).
"""

import dataclasses
import hashlib
import json
import os
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from diffusion_jax import data, samplers, sharding
from diffusion_jax.evaluation import bits_per_dim, run_loading, sample_store
from diffusion_jax.evaluation.run_loading import LoadedRun
from diffusion_jax.metrics import feature_nets, sample_quality, scores
from diffusion_jax.samplers import generation


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
  ref: scores.ReferenceStats | None,
  reference_name: str = "",
  bpd_split: str = "",
  bpd_num_examples: int | None = None,
  overwrite: bool = False,
  guidance_scale: float = 0.0,
) -> tuple[dict, str]:
  """Draws num_samples samples into a resumable store, scores them, and writes a JSON.

  A class-conditional run draws every class in turn (sample i of class i mod K) with
  classifier-free guidance of scale guidance_scale; when the feature network classifies the
  run's classes (`sample_quality.predicted_classes`: the digits classifier on digits, Inception
  with an ImageNet label map on classes named by synset), the results add its accuracy on the
  requested labels, overall and per class.

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
    guidance_scale: a conditional run's guidance scale w.

  Returns:
    (results, path of the JSON written).
  """
  sample_quality.check_image_data(run.config, run.example_shape)
  bpd_split = bpd_split or data.default_split(run.config.data)
  if "bpd" in metrics:
    run_loading.refuse_latent_run(run, "the bpd metric", run_loading.LATENT_BITS)
    data.split_config(run.config.data, bpd_split)  # a bad split fails before sampling
  mesh = sharding.data_mesh()
  batch_size = generation.device_batch_size(batch_size, num_samples, mesh)
  settings = dict(
    step=run.step,
    ema=use_ema,
    sampler=dataclasses.asdict(spec),
    seed=seed,
    batch_size=batch_size,
  )
  labels = None
  if run.num_classes:
    labels = np.arange(num_samples, dtype=np.int32) % run.num_classes
    settings.update(labels="classes in turn", guidance=guidance_scale)
  elif guidance_scale:
    raise ValueError("guidance needs a class-conditional run (model.num_classes > 0)")
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
    num_shards = sample_store.fill(
      store,
      run,
      spec,
      num_samples,
      batch_size,
      seed,
      mesh,
      labels=labels,
      guidance_scale=guidance_scale,
    )
    if jax.process_count() > 1:  # process 0 writes the shards that every process reads next
      multihost_utils.sync_global_devices("evaluation samples written")
    results["sampling_seconds"] = time.perf_counter() - start
    results["network_evals_per_sample"] = store.mean_nfe(num_shards)
    start = time.perf_counter()
    features, logits = feature_nets.compute_features(
      net, store.read(num_samples, num_shards), mesh=mesh, progress=f"{net.name} features"
    )
    results["feature_seconds"] = time.perf_counter() - start
    results.update(feature_net=net.name, reference=reference_name)
    results.update(sample_quality.score(features, logits, ref, sample_metric_names))
    predicted = sample_quality.predicted_classes(net, logits, run.num_classes, run.class_names)
    if labels is not None and predicted is not None:
      results.update(sample_quality.class_accuracy(predicted, labels, run.num_classes))
  if "bpd" in metrics:
    results["bpd"] = bits_per_dim.evaluate_split(
      run, "vlb", bpd_split, batch_size, bpd_num_examples, seed
    )
  if jax.process_index() == 0:
    os.makedirs(directory, exist_ok=True)
    with open(out, "w") as f:
      json.dump(results, f, indent=2)
  return results, out
