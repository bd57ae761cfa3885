"""The DDPM paper's analyses of a trained run: python analyze.py <command> --workdir=runs/digits.

Commands:
  progressive      progressive generation (the paper's Fig. 6): progressive.png, the prediction
                   x0_hat along a reverse chain; reverse.png, the chain's states x_t; forward.png,
                   q(x_t | x0) of training data; each about --frames panels titled with t; and
                   forward_reverse.gif, the forward then the reverse process, t on every frame.
  rate_distortion  progressive lossy compression (sec. 4.3, Fig. 5): after each reverse step, the
                   rate (the bound's terms sent so far, bits/dim) and the distortion (RMSE of x0_hat
                   on the [0, 255] scale), over --num_examples of --split; rate_distortion.json
                   and rate_distortion.png. T network calls per example.

On a latent diffusion run (data.autoencoder_run) progressive runs on the latents, of training data
encoded for forward.png, and shows them decoded; rate_distortion refuses it, as its bits and
RMSE are of the images' pixels.

Outputs go to <workdir>/analysis/<command>_step_<N>_seed_<S>/ (or --out).
"""

import json
import os
import sys

import jax
from absl import flags

from diffusion_jax import images
from diffusion_jax.cli import analysis_commands, logs
from diffusion_jax.cli import flags as cli_flags
from diffusion_jax.evaluation import run_loading

COMMANDS = ("progressive", "rate_distortion")

_WORKDIR = flags.DEFINE_string("workdir", None, "A train.py workdir.")
_NUM_SAMPLES = flags.DEFINE_integer(
  "num_samples", 8, "progressive: chains drawn (points for 2D data).", lower_bound=1
)
_FRAMES = flags.DEFINE_integer("frames", 10, "progressive: panels per picture.", lower_bound=2)
_SPLIT = flags.DEFINE_string("split", "train", "rate_distortion: train or test.")
_NUM_EXAMPLES = flags.DEFINE_integer(
  "num_examples", 100, "rate_distortion: examples (default 100).", lower_bound=1
)
_BATCH_SIZE = flags.DEFINE_integer(
  "batch_size", None, "rate_distortion: batch size (default: sampling's).", lower_bound=1
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).", lower_bound=0)
_OUT = flags.DEFINE_string("out", None, "Output folder (default under <workdir>/analysis).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace outputs already in --out.")
_spec_from_flags = cli_flags.define_sampler_flags()
flags.mark_flag_as_required("workdir")


def main(argv):
  logs.quiet_library_logs()
  try:
    if len(argv) != 2 or argv[1] not in COMMANDS:
      raise ValueError(f"give one command: {' | '.join(COMMANDS)} (got {argv[1:]})")
    command = argv[1]
    if _SPLIT.value not in ("train", "test"):
      raise ValueError(f"unknown --split {_SPLIT.value!r}; choose train or test")
    run = run_loading.load_run(_WORKDIR.value, _STEP.value)
    if command == "rate_distortion":
      run_loading.refuse_latent_run(
        run,
        "analyze.py rate_distortion",
        "its rate is bits of the images' discretized likelihood and its distortion an RMSE on "
        "their 0..255 scale; a model of latents gives neither",
      )
    out = _OUT.value or os.path.join(
      _WORKDIR.value, "analysis", f"{command}_step_{run.step:07d}_seed_{_SEED.value}"
    )
    cli_flags.check_output_folder(out, _OVERWRITE.value)
    if command == "progressive":
      spec = _spec_from_flags(run.config.sampling)
      if spec.name == "ode_adaptive":
        raise ValueError("ode_adaptive chooses its own steps; pick a fixed-step --sampler")
      pictures, gif = analysis_commands.progressive_pictures(
        run, spec, _NUM_SAMPLES.value, _FRAMES.value, _SEED.value
      )
    else:
      batch_size = _BATCH_SIZE.value or run.config.sampling.batch_size
      result, picture = analysis_commands.rate_distortion_of(
        run, _SPLIT.value, batch_size, _NUM_EXAMPLES.value, _SEED.value
      )
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  if jax.process_index() != 0:
    return
  paths = []
  if command == "progressive":
    for name, picture in pictures.items():
      paths.append(os.path.join(out, f"{name}.png"))
      images.save_png(paths[-1], picture)
    paths.append(os.path.join(out, "forward_reverse.gif"))
    images.save_gif(paths[-1], gif + [gif[-1]] * 10, duration_ms=200)
  else:
    paths = [os.path.join(out, "rate_distortion.json"), os.path.join(out, "rate_distortion.png")]
    os.makedirs(out, exist_ok=True)
    with open(paths[0], "w") as f:
      json.dump(result, f)
    images.save_png(paths[1], picture)
    print(
      f"rate {result['rate_bpd'][-1]:.4f} bits/dim at distortion 0; "
      f"distortion {result['distortion_rmse'][0]:.2f} at rate {result['rate_bpd'][0]:.4f}"
    )
  for path in paths:
    print(path)


if __name__ == "__main__":
  cli_flags.run(main)
