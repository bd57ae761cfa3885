"""Edits images with a trained run: python edit.py <command> --workdir=runs/digits --data_index=0,1.

Commands:
  sdedit       noise each input to t0 = --strength T and denoise it (SDEdit): input, x_t0 and
               --variants edits per row.
  inpaint      generate the --mask region (left | right | top | bottom | center, or a PNG whose
               white pixels are generated) and keep the rest; --resample > 1 is RePaint, with jumps
               back of --jump_length steps. Input, the kept part and --variants results per row.
  interpolate  frames between two inputs: --method=stochastic (the DDPM paper's: both noised to
               --strength with shared noise, blended, denoised) or deterministic (DDIM/ODE latents,
               slerp, decoded; a stochastic --sampler is replaced by DDIM, 50 steps unless
               --steps); writes a strip and a GIF.

Inputs are PNG/JPEG files of the run's size and channels (--images=a.png,b.png) or training
examples (--data_index=3,10). On a class-conditional run, sdedit and inpaint take --label (and
--guidance) to edit towards a class; without it they use the null class. Outputs go to
<workdir>/edits/<command>_step_<N>_seed_<S>/: the picture (<command>.png), the results as uint8
arrays (<command>.npz) and, for interpolate, a GIF.

A latent diffusion run (data.autoencoder_run) takes and gives images too: the inputs are encoded,
edited as latents and decoded. inpaint keeps a latent cell where all pixels of its patch are kept,
and the results take the kept pixels from the inputs exactly.
"""

import os
import sys

import numpy as np
from absl import flags

from diffusion_jax import figures, images, samplers
from diffusion_jax.cli import edit_commands, logs, sample_outputs
from diffusion_jax.cli import flags as cli_flags
from diffusion_jax.evaluation import run_loading

COMMANDS = ("sdedit", "inpaint", "interpolate")

_WORKDIR = flags.DEFINE_string("workdir", None, "A train.py workdir.")
_IMAGES = flags.DEFINE_list("images", None, "PNG/JPEG files to edit, of the run's size.")
_DATA_INDEX = flags.DEFINE_list("data_index", None, "Training examples to edit, by index.")
_STRENGTH = flags.DEFINE_float(
  "strength", 0.5, "sdedit, interpolate (stochastic): t0 / T.", lower_bound=0.0, upper_bound=1.0
)
_VARIANTS = flags.DEFINE_integer(
  "variants", 4, "sdedit, inpaint: results per input.", lower_bound=1
)
_MASK = flags.DEFINE_string("mask", "left", "inpaint: the region to generate (preset or PNG).")
_RESAMPLE = flags.DEFINE_integer(
  "resample", 1, "inpaint: passes over each segment (1: replacement; > 1: RePaint).", lower_bound=1
)
_JUMP = flags.DEFINE_integer("jump_length", 1, "inpaint: RePaint's jump back.", lower_bound=1)
_METHOD = flags.DEFINE_enum(
  "method", "stochastic", ["stochastic", "deterministic"], "interpolate: how."
)
_FRAMES = flags.DEFINE_integer("frames", 8, "interpolate: frames.", lower_bound=2)
_LABEL = flags.DEFINE_string(
  "label", None, "sdedit, inpaint on a conditional run: the class to edit towards (index or name)."
)
_GUIDANCE = flags.DEFINE_float(
  "guidance", 0.0, "With --label: classifier-free guidance scale w.", lower_bound=0.0
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).", lower_bound=0)
_OUT = flags.DEFINE_string("out", None, "Output folder (default under <workdir>/edits).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace outputs already in --out.")
_spec_from_flags = cli_flags.define_sampler_flags()
flags.mark_flag_as_required("workdir")


def _edit(command: str, run) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
  """(the picture, the results [N, H, W, C] in [-1, 1], GIF frames or [])."""
  x = edit_commands.input_images(run, _IMAGES.value, _DATA_INDEX.value)
  spec = _spec_from_flags(run.config.sampling)
  label = None
  if _LABEL.value is not None:
    if command == "interpolate":
      raise ValueError("--label is for sdedit and inpaint")
    label = int(sample_outputs.class_labels(run, [_LABEL.value], None, 1)[0])
  elif _GUIDANCE.value:
    raise ValueError("--guidance needs --label")
  conditioning = dict(label=label, guidance=_GUIDANCE.value)
  if command == "sdedit":
    rows, results = edit_commands.sdedit_rows(
      run, x, spec, _STRENGTH.value, _VARIANTS.value, _SEED.value, **conditioning
    )
    titles = ["input", f"t0={_STRENGTH.value:g}T"] + ["edit"] * _VARIANTS.value
    return edit_commands.rows_picture(rows, titles), results, []
  if command == "inpaint":
    keep = edit_commands.known_mask(_MASK.value, run.data_shape)
    rows, results = edit_commands.inpaint_rows(
      run,
      x,
      keep,
      spec,
      _VARIANTS.value,
      _SEED.value,
      resample=_RESAMPLE.value,
      jump_length=_JUMP.value,
      **conditioning,
    )
    titles = ["input", "kept"] + ["result"] * _VARIANTS.value
    return edit_commands.rows_picture(rows, titles), results, []
  if _METHOD.value == "deterministic" and spec.name not in samplers.ENCODERS:
    spec = samplers.SamplerSpec("ddim", steps=spec.steps or 50)  # a sampler that can encode
  frames = edit_commands.interpolation_frames(
    run, x, spec, _METHOD.value, _FRAMES.value, _STRENGTH.value, _SEED.value
  )
  panels = [images.preview_picture(f[None]) for f in frames]
  titled = [figures.titled(p, f"{i / (len(frames) - 1):.2f}") for i, p in enumerate(panels)]
  return figures.strip(titled), frames, [figures.as_rgb(p) for p in panels]


def main(argv):
  logs.quiet_library_logs()
  try:
    if len(argv) != 2 or argv[1] not in COMMANDS:
      raise ValueError(f"give one command: {' | '.join(COMMANDS)} (got {argv[1:]})")
    command = argv[1]
    run = run_loading.load_run(_WORKDIR.value, _STEP.value)
    out = _OUT.value or os.path.join(
      _WORKDIR.value, "edits", f"{command}_step_{run.step:07d}_seed_{_SEED.value}"
    )
    cli_flags.check_output_folder(out, _OVERWRITE.value)
    picture, results, gif_frames = _edit(command, run)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  paths = [os.path.join(out, f"{command}.png"), os.path.join(out, f"{command}.npz")]
  images.save_png(paths[0], picture)
  images.save_samples_npz(paths[1], images.to_uint8(results))
  if gif_frames:
    paths.append(os.path.join(out, f"{command}.gif"))
    images.save_gif(paths[-1], gif_frames + gif_frames[::-1], duration_ms=150)
  for path in paths:
    print(path)


if __name__ == "__main__":
  cli_flags.run(main)
