"""Bits per dimension of a trained run: python evaluate_bpd.py --workdir=runs/digits [--split=test].

--method=vlb: the DDPM variational bound (eq. 5), T network evaluations per example, with the EMA
params and the config's sampling variance and clipping. For images (discretized decoder) it bounds
-log2 P(x0) per dimension of the 8-bit data; for 2D data (Gaussian decoder) the negative log2
density per dimension in the data's units, which can be negative. Writes the JSON
<workdir>/eval/bpd_step_<N>.json (N in 7 digits), replacing a file only with --overwrite.

--method=ode: the probability-flow ODE log-likelihood (adaptive solver; Hutchinson trace with
Rademacher probes for images after uniform dequantization, exact trace for 2D data).

A latent diffusion run (data.autoencoder_run) is refused: its model is a density of the
autoencoder's latents, whose bits/dim are no likelihood of the images.
"""

import json
import os
import sys

import jax
from absl import app, flags

from diffusion_jax import data
from diffusion_jax.cli import flags as cli_flags
from diffusion_jax.cli import logs
from diffusion_jax.evaluation import bits_per_dim, run_loading

_WORKDIR = flags.DEFINE_string("workdir", None, "A train.py workdir.")
_SPLIT = flags.DEFINE_string("split", "train", "train or test (only tfds data has a test split).")
_NUM_EXAMPLES = flags.DEFINE_integer(
  "num_examples", None, "Examples to evaluate (default: all).", lower_bound=1
)
_BATCH_SIZE = flags.DEFINE_integer(
  "batch_size", None, "Batch size (default: sampling's).", lower_bound=1
)
_METHOD = flags.DEFINE_string("method", "vlb", "vlb (variational bound) or ode (probability flow).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).", lower_bound=0)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the forward-process noise.")
_OUT = flags.DEFINE_string("out", None, "Output JSON (default: <workdir>/eval/bpd_step_<N>.json).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing output file.")
_initialize_devices = cli_flags.define_device_flags()
flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logs.quiet_library_logs()
  method, split = _METHOD.value, _SPLIT.value
  try:
    _initialize_devices()
    # Checked before the (slow) checkpoint restore.
    if method not in bits_per_dim.METHODS:
      raise ValueError(
        f"unknown --method {method!r}; choose one of {', '.join(bits_per_dim.METHODS)}"
      )
    if split not in ("train", "test"):
      raise ValueError(f"unknown --split {split!r}; choose train or test")
    run = run_loading.load_run(_WORKDIR.value, _STEP.value)
    run_loading.refuse_latent_run(
      run, "evaluate_bpd.py", run_loading.LATENT_BITS + " (evaluate.py scores its decoded samples)"
    )
    data.split_config(run.config.data, split)  # this source may lack the split
    out = _OUT.value or os.path.join(_WORKDIR.value, "eval", f"bpd_step_{run.step:07d}.json")
    if os.path.exists(out) and not _OVERWRITE.value:
      raise ValueError(f"{out} exists; pass --overwrite or choose another --out")
    batch_size = _BATCH_SIZE.value or run.config.sampling.batch_size
    result = bits_per_dim.evaluate_split(
      run, method, split, batch_size, _NUM_EXAMPLES.value, _SEED.value
    )
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  if jax.process_index() == 0:  # every process holds the same result; one writes it
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
      json.dump(result, f, indent=2)
  print(
    f"{method}: {result['total_bpd']:.4f} +- {result['total_bpd_stderr']:.4f} bits/dim "
    f"({result['meaning']}) on {result['num_examples']} {split} examples at step {run.step}; "
    f"{result['num_network_evals']} network evaluations -> {out}"
  )


if __name__ == "__main__":
  cli_flags.run(main)
