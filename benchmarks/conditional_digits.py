"""Classifier accuracy and FID of a class-conditional digits run at several guidance scales.

python benchmarks/conditional_digits.py --workdir=runs/digits_cond --guidance=0,1,3
python benchmarks/conditional_digits.py --workdir=runs/digits_cond \
  --classifier=runs/digits_classifier --classifier_scale=0,1,3,10

Draws --per_class samples of every digit with the run's sampler (DDIM, 50 steps, for
configs/digits_cond.py) and classifier-free guidance w, then reports the accuracy of the digits
classifier (the feature network of config.eval) on the requested labels, per class and overall,
and the FID of all samples against the training digits in that classifier's features. With
--classifier, the rows are instead the run's unconditional model (its null class) with classifier
guidance of each scale s by that train_classifier.py run.
"""

import jax
import numpy as np
from absl import app, flags

from diffusion_jax import guidance, images, models, samplers, sharding
from diffusion_jax.evaluation import run_loading
from diffusion_jax.metrics import feature_nets, sample_quality
from diffusion_jax.samplers import generation
from diffusion_jax.training import classifier_loop

_WORKDIR = flags.DEFINE_string("workdir", None, "A conditional digits workdir.")
_GUIDANCE = flags.DEFINE_list("guidance", ["0", "1", "3"], "Guidance scales w.")
_PER_CLASS = flags.DEFINE_integer("per_class", 100, "Samples of each class.", lower_bound=1)
_CLASSIFIER = flags.DEFINE_string("classifier", None, "A train_classifier.py workdir.")
_CLASSIFIER_SCALE = flags.DEFINE_list("classifier_scale", ["0", "1", "3"], "Scales s.")
flags.mark_flag_as_required("workdir")


def main(argv):
  del argv
  run = run_loading.load_run(_WORKDIR.value)
  if not run.num_classes:
    raise app.UsageError(f"{_WORKDIR.value} is not a class-conditional run")
  mesh = sharding.data_mesh()
  net = feature_nets.create_feature_net("digits")
  ref = sample_quality.load_reference(run.config, net, mesh=mesh)
  labels = np.repeat(np.arange(run.num_classes, dtype=np.int32), _PER_CLASS.value)
  spec = samplers.spec_from_config(run.config.sampling)
  print(f"{run.step} steps; {spec.name}, {samplers.grid(spec, run.sched).shape[0] - 1} steps")
  if _CLASSIFIER.value:
    draw = _classifier_guided_draw(run, spec, labels)
    scales = [float(g) for g in _CLASSIFIER_SCALE.value]
    print("| classifier scale s | accuracy | FID | per-class accuracy |")
  else:
    draw = lambda w: generation.generate(
      run.model,
      run.kind,
      run.params,
      run.sched,
      run.example_shape,
      len(labels),
      run.config.sampling.batch_size,
      jax.random.key(0),
      mesh,
      spec,
      labels=labels,
      guidance_scale=w,
      progress=False,
    )[0]
    scales = [float(g) for g in _GUIDANCE.value]
    print("| w | accuracy | FID | per-class accuracy |")
  print("| --- | --- | --- | --- |")
  for w in scales:
    uint8 = images.to_uint8(np.asarray(draw(w)))
    batches = [uint8[i : i + 500] for i in range(0, len(uint8), 500)]
    features, logits = feature_nets.compute_features(net, batches, mesh=mesh)
    predicted = sample_quality.predicted_classes(net, logits, run.num_classes)
    accuracy = sample_quality.class_accuracy(predicted, labels, run.num_classes)
    fid = sample_quality.score(features, logits, ref, ("fid",))["fid"]
    cells = " ".join(f"{a:.2f}" for a in accuracy["per_class_accuracy"])
    print(f"| {w:g} | {accuracy['accuracy']:.3f} | {fid:.2f} | {cells} |")


def _classifier_guided_draw(run, spec, labels):
  """fn(s) -> samples of the run's null-class model guided towards labels by the classifier."""
  model, params, _ = classifier_loop.load_classifier(_CLASSIFIER.value)
  log_prob = models.classifier_log_prob(model, params)
  batch = run.config.sampling.batch_size

  @jax.jit
  def one_batch(y, key, scale):
    unconditional = models.denoiser(run.model, run.params, run.kind)
    gradient = guidance.classifier_gradient(log_prob, y, scale)
    shape = (len(y), *run.example_shape)
    return samplers.sample(unconditional, run.sched, shape, key, spec, guidance_gradient=gradient).x

  def draw(scale):
    parts = [
      one_batch(labels[i : i + batch], jax.random.fold_in(jax.random.key(0), i), scale)
      for i in range(0, len(labels), batch)
    ]
    return np.concatenate(parts)

  return draw


if __name__ == "__main__":
  app.run(main)
