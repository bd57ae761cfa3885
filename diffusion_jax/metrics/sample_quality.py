"""Sample quality of a model: FID, Inception Score and KID of its samples against reference
statistics, in memory (train.py's quick evaluation; evaluate.py stores its samples, see
`evaluation.scoring`).

The features come from a `feature_nets.FeatureNet`: the FID Inception network for the numbers the
literature reports, or the digits classifier, which runs anywhere. Reference statistics are either
a stats file (mu, sigma; e.g. the standard CIFAR-10 training-set file) or computed from a split
of the run's dataset and cached (see `reference_stats`).
"""

from collections.abc import Callable

import jax
import ml_collections
import numpy as np

from diffusion_jax import data, images, models, samplers
from diffusion_jax.metrics import feature_nets, reference_stats, scores
from diffusion_jax.samplers import generation

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
) -> scores.ReferenceStats:
  """The reference statistics: read from stats_path, else computed from `split` and cached."""
  if stats_path:
    ref = scores.load_stats(stats_path)
  else:
    data_config = data.split_config(config.data, split)
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
  ref: scores.ReferenceStats,
  metrics: tuple[str, ...],
) -> dict:
  """FID, IS and KID (those listed in `metrics`) of samples' features and logits."""
  out = {}
  if "fid" in metrics:
    mu, sigma = scores.feature_statistics(features)
    out["fid"] = scores.frechet_distance(mu, sigma, ref.mu, ref.sigma)
  if "is" in metrics:
    out["is"], out["is_std"] = scores.inception_score(logits)
  if "kid" in metrics:
    ref_features = ref.require_features("KID")
    out["kid"], out["kid_std"] = scores.kernel_inception_distance(features, ref_features)
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
  ref: scores.ReferenceStats,
  class_names: tuple[str, ...] = (),
  *,
  to_images: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict:
  """config.eval.num_samples samples from params, in memory, scored by config.eval.metrics;
  to_images takes the samples to images first (latent diffusion's decoder).

  The sampler is config.sampling's, with config.eval.sampler / steps overriding it when set. A
  class-conditional model draws its classes in turn (named class_names) with guidance
  config.sampling.guidance, and where the feature network classifies them
  (`predicted_classes`) the scores add its `accuracy`.
  """
  spec = eval_sampler_spec(config)
  metrics = tuple(m for m in parse_metrics(config.eval.metrics) if m != "bpd")
  num_classes = models.num_classes_of(model)
  labels = None
  if num_classes:
    labels = np.arange(config.eval.num_samples, dtype=np.int32) % num_classes
  samples, _ = generation.generate(
    model,
    models.parametrization_of(config.model),
    params,
    sched,
    example_shape,
    config.eval.num_samples,
    config.sampling.batch_size,
    key,
    mesh,
    spec,
    progress=False,
    labels=labels,
    guidance_scale=config.sampling.guidance if num_classes else 0.0,
  )
  if to_images is not None:
    samples = to_images(samples)
  features, logits = feature_nets.compute_features(
    net, _batches(images.to_uint8(samples), config.sampling.batch_size), mesh=mesh
  )
  results = score(features, logits, ref, metrics)
  predicted = predicted_classes(net, logits, num_classes, class_names)
  if labels is not None and predicted is not None:
    results["accuracy"] = class_accuracy(predicted, labels, num_classes)["accuracy"]
  return results


def predicted_classes(
  net: feature_nets.FeatureNet,
  logits_NxL: np.ndarray,
  num_classes: int,
  class_names: tuple[str, ...] = (),
) -> np.ndarray | None:
  """The feature network's top-1 class of each sample as a run's label, int [N] (-1: a class the
  run lacks), or None where the network does not classify the run's K classes.

  A network without class names classifies a run of as many classes as it has logits, in order
  (the digits classifier on digits). One with names (Inception with an ImageNet label map)
  classifies a run whose class names are all among them (ImageNet synsets); its top-1 is then
  taken over every named output, the 1000 ImageNet classes.
  """
  if not net.class_names:
    return np.argmax(logits_NxL, axis=1) if net.num_classes == num_classes else None
  named = [j for j, name in enumerate(net.class_names) if name]
  label_of = {name: k for k, name in enumerate(class_names)}
  if not class_names or not label_of.keys() <= {net.class_names[j] for j in named}:
    return None
  top_N = np.asarray(named)[np.argmax(logits_NxL[:, named], axis=1)]
  return np.array([label_of.get(net.class_names[j], -1) for j in top_N], np.int32)


def class_accuracy(predicted_N: np.ndarray, labels_N: np.ndarray, num_classes: int) -> dict:
  """How often the predicted class is the requested one: `accuracy` overall and
  `per_class_accuracy` [num_classes] (NaN for a class with no samples)."""
  correct = predicted_N == labels_N
  per_class = [
    float(correct[labels_N == k].mean()) if np.any(labels_N == k) else float("nan")
    for k in range(num_classes)
  ]
  return {"accuracy": float(correct.mean()), "per_class_accuracy": per_class}


def eval_sampler_spec(config: ml_collections.ConfigDict) -> samplers.SamplerSpec:
  """config.sampling's sampler, with config.eval.sampler and config.eval.steps when set."""
  return samplers.spec_from_config(
    config.sampling, name=config.eval.sampler or None, steps=config.eval.steps or None
  )


def _batches(array: np.ndarray, batch_size: int):
  for start in range(0, len(array), batch_size):
    yield array[start : start + batch_size]
