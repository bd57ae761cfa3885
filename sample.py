"""Samples from a trained run: python sample.py --workdir=runs/cifar10 [--sampler=ddim --steps=50].

Writes <out>/samples.png and <out>/samples.npz (uint8 NHWC images, the format FID tools read; float
points for 2D data), and with --gif an animation of the reverse process. A class-conditional run
takes --labels=3,3,7 (indices or class names) or --per_class=N (a grid with one row per class)
and --guidance=w (classifier-free guidance; default the config's sampling.guidance); samples.npz
then also holds the `labels` drawn. --classifier=<train_classifier.py workdir> adds classifier
guidance of scale --classifier_scale towards the labels, for any run.
"""

import os
import sys

from absl import app, flags

from diffusion_jax.cli import flags as cli_flags
from diffusion_jax.cli import logs, sample_outputs
from diffusion_jax.evaluation import run_loading
from diffusion_jax.training import classifier_loop, run_config

_WORKDIR = flags.DEFINE_string("workdir", None, "A train.py workdir.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 64, "How many samples to draw.", lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer(
  "batch_size", None, "Samples per batch (default: the config's).", lower_bound=1
)
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).", lower_bound=0)
_OUT = flags.DEFINE_string(
  "out", None, "Output folder (default: <workdir>/samples/step_<N>_seed_<S>)."
)
_spec_from_flags = cli_flags.define_sampler_flags()
_GIF = flags.DEFINE_bool(
  "gif", False, "Also write reverse.gif, an animation of the reverse process."
)
_LABELS = flags.DEFINE_list(
  "labels", None, "Conditional runs: the class of each sample (indices or class names)."
)
_PER_CLASS = flags.DEFINE_integer(
  "per_class", None, "Conditional runs: N samples of every class, one grid row each.", lower_bound=1
)
_GUIDANCE = flags.DEFINE_float(
  "guidance",
  None,
  "Conditional runs: classifier-free guidance scale w (default: the config's sampling.guidance).",
  lower_bound=0.0,
)
_CLASSIFIER = flags.DEFINE_string(
  "classifier",
  None,
  "A train_classifier.py workdir: classifier guidance towards the labels (any run).",
)
_CLASSIFIER_SCALE = flags.DEFINE_float(
  "classifier_scale", 1.0, "Classifier guidance scale s.", lower_bound=0.0
)
_RAW = flags.DEFINE_bool("raw_params", False, "Sample from the raw params instead of the EMA.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace outputs already in --out.")
_initialize_devices = cli_flags.define_device_flags()
flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logs.quiet_library_logs()
  try:
    _initialize_devices()
    run = run_loading.load_run(_WORKDIR.value, _STEP.value, use_ema=not _RAW.value)
    out = _OUT.value or os.path.join(
      _WORKDIR.value, "samples", f"step_{run.step:07d}_seed_{_SEED.value}"
    )
    cli_flags.check_output_folder(out, _OVERWRITE.value)
    spec = _spec_from_flags(run.config.sampling)
    batch_size = _BATCH_SIZE.value or run.config.sampling.batch_size
    classifier, classes_of = None, None
    if _CLASSIFIER.value:
      model, params, classifier_config = classifier_loop.load_classifier(_CLASSIFIER.value)
      if classifier_config.diffusion.to_dict() != run.config.diffusion.to_dict():
        raise ValueError(f"{_CLASSIFIER.value} was trained for another diffusion schedule")
      classifier = (model, params)
      classes_of = (model.num_classes, run_config.load_class_names(_CLASSIFIER.value))
    labels = sample_outputs.class_labels(
      run, _LABELS.value, _PER_CLASS.value, _NUM_SAMPLES.value, classes_of
    )
    guidance = run.config.sampling.guidance if _GUIDANCE.value is None else _GUIDANCE.value
    if not run.num_classes and _GUIDANCE.value:
      raise ValueError("--guidance needs a class-conditional run (model.num_classes > 0)")
    paths, nfe = sample_outputs.sample_and_save(
      run,
      out,
      _NUM_SAMPLES.value,
      batch_size,
      _SEED.value,
      spec,
      _GIF.value,
      labels=labels,
      guidance_scale=guidance if run.num_classes else 0.0,
      ncols=_PER_CLASS.value,
      classifier=classifier,
      classifier_scale=_CLASSIFIER_SCALE.value,
    )
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(f"{spec.name}: {nfe:g} network evaluations per sample")
  for path in paths:
    print(path)


if __name__ == "__main__":
  cli_flags.run(main)
