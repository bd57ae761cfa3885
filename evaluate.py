"""FID / IS / KID (and bits/dim) of a run: python evaluate.py --workdir=runs/cifar10.

Draws --num_samples samples (default 50,000, as FIDs in the literature use) from the checkpoint's
EMA params with any sampler, into <workdir>/eval/step_<N>/<sampler>_<digest>/samples/ in shards, so
a stopped job resumes where it was; scores them against reference statistics and writes
results_n<num_samples>_<feature net>.json beside the samples. Defaults come from the run's
config.eval: e.g. --feature_net=inception needs --inception_weights (pytorch-fid's weights file).
A class-conditional run draws every class in turn with --guidance (default: the config's
sampling.guidance) and, where the feature network classifies the run's classes (digits; or
ImageNet synsets with --inception_label_map), also reports the classifier's accuracy on the
requested labels, overall and per class.
"""

import json
import sys

from absl import app, flags

from diffusion_jax.cli import flags as cli_flags
from diffusion_jax.cli import logs
from diffusion_jax.evaluation import run_loading, scoring
from diffusion_jax.metrics import feature_nets, sample_quality

_WORKDIR = flags.DEFINE_string("workdir", None, "A train.py (or convert_diffusers.py) workdir.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).", lower_bound=0)
_RAW = flags.DEFINE_bool("raw_params", False, "Evaluate the raw params instead of the EMA.")
_NUM_SAMPLES = flags.DEFINE_integer(
  "num_samples", 50_000, "Samples to draw and score.", lower_bound=1
)
_BATCH_SIZE = flags.DEFINE_integer(
  "batch_size", None, "Samples per batch (default: the config's).", lower_bound=1
)
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_spec_from_flags = cli_flags.define_sampler_flags()
_METRICS = flags.DEFINE_list("metrics", None, "fid,is,kid,bpd (default: config.eval.metrics).")
_FEATURE_NET = flags.DEFINE_enum(
  "feature_net", None, list(feature_nets.FEATURE_NETS), "Default: config.eval.feature_net."
)
_INCEPTION = flags.DEFINE_string(
  "inception_weights", None, "pt_inception-2015-12-05-6726825d.pth (see README)."
)
_LABEL_MAP = flags.DEFINE_string(
  "inception_label_map",
  None,
  "imagenet_2012_challenge_label_map_proto.pbtxt: Inception's accuracy on synset-named classes.",
)
_REF_STATS = flags.DEFINE_string(
  "ref_stats", None, "Reference stats .npz (mu, sigma); default: computed from --ref_split."
)
_REF_SPLIT = flags.DEFINE_string("ref_split", None, "Dataset split for reference statistics.")
_CACHE_DIR = flags.DEFINE_string(
  "cache_dir", None, "Where reference statistics and the digits classifier are cached."
)
_BPD_SPLIT = flags.DEFINE_string(
  "bpd_split",
  "",
  "Split for bits/dim (with --metrics=bpd); default test for tfds data, else train.",
)
_BPD_EXAMPLES = flags.DEFINE_integer(
  "bpd_num_examples", None, "Examples for bits/dim.", lower_bound=1
)
_GUIDANCE = flags.DEFINE_float(
  "guidance",
  None,
  "Conditional runs: classifier-free guidance scale (default: the config's sampling.guidance).",
  lower_bound=0.0,
)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing results file.")
_initialize_devices = cli_flags.define_device_flags()
flags.mark_flag_as_required("workdir")


def _or(flag, default):
  return default if flag.value is None else flag.value


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logs.quiet_library_logs()
  try:
    _initialize_devices()
    run = run_loading.load_run(_WORKDIR.value, _STEP.value, use_ema=not _RAW.value)
    ev = run.config.eval
    metrics = sample_quality.parse_metrics(_or(_METRICS, ev.metrics))
    sample_quality.check_image_data(run.config, run.example_shape)
    spec = _spec_from_flags(run.config.sampling)
    batch_size = _or(_BATCH_SIZE, run.config.sampling.batch_size)
    net = ref = None
    ref_name = ""
    if set(metrics) - {"bpd"}:
      net = feature_nets.create_feature_net(
        _or(_FEATURE_NET, ev.feature_net),
        inception_weights=_or(_INCEPTION, ev.inception_weights),
        inception_label_map=_or(_LABEL_MAP, ev.inception_label_map),
        cache_dir=_or(_CACHE_DIR, ""),
      )
      ref_stats, ref_split = _or(_REF_STATS, ev.ref_stats), _or(_REF_SPLIT, ev.ref_split)
      ref = sample_quality.load_reference(
        run.config,
        net,
        stats_path=ref_stats,
        split=ref_split,
        cache_dir=_or(_CACHE_DIR, ""),
        batch_size=batch_size,
      )
      ref_name = ref_stats or f"{run.config.data.name} {ref_split} split"
    results, out = scoring.evaluate_run(
      run,
      _WORKDIR.value,
      spec,
      num_samples=_NUM_SAMPLES.value,
      batch_size=batch_size,
      seed=_SEED.value,
      use_ema=not _RAW.value,
      metrics=metrics,
      net=net,
      ref=ref,
      reference_name=ref_name,
      bpd_split=_BPD_SPLIT.value,
      bpd_num_examples=_BPD_EXAMPLES.value,
      overwrite=_OVERWRITE.value,
      guidance_scale=_or(_GUIDANCE, run.config.sampling.guidance if run.num_classes else 0.0),
    )
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  names = ("fid", "is", "is_std", "kid", "kid_std", "accuracy")
  summary = {k: results[k] for k in names if k in results}
  if "bpd" in results:
    summary["bpd"] = results["bpd"]["total_bpd"]
  print(json.dumps(summary))
  print(out)


if __name__ == "__main__":
  cli_flags.run(main)
