"""Turns a released diffusers DDPM model into a workdir that sample.py and evaluate_bpd.py read:

  python convert_diffusers.py --model=google/ddpm-cifar10-32 --workdir=runs/ddpm_cifar10
  python sample.py --workdir=runs/ddpm_cifar10 --sampler=ddim --steps=50 --spacing=leading

or, with --autoencoder, a diffusers AutoencoderKL (Stable Diffusion's VAE, or a pipeline's vae/)
into an autoencoder run, which `training.autoencoder_run.load_autoencoder` opens:

  python convert_diffusers.py --autoencoder --model=stabilityai/sd-vae-ft-mse --workdir=runs/sd_vae

--model is a Hub name (google/ddpm-cifar10-32, google/ddpm-ema-church-256, ...): the files the
conversion reads are downloaded once into the Hugging Face cache, which later runs, and runs with
HF_HUB_OFFLINE=1, read. --model_dir is instead a local copy (a model or pipeline folder). --config
is the base config (default configs/default.py, tfds cifar10): its data group is the dataset
bits/dim are measured on, e.g. --config=configs/church256.py for church.
"""

import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from diffusion_jax.cli import flags as cli_flags
from diffusion_jax.cli import logs
from diffusion_jax.pretrained import diffusers_autoencoder, diffusers_unet, hub
from diffusion_jax.training import imported_run, run_config

_MODEL = flags.DEFINE_string(
  "model", None, "A diffusers model's Hub name, e.g. google/ddpm-cifar10-32 (kept in the HF cache)."
)
_REVISION = flags.DEFINE_string(
  "revision", None, "--model's branch, tag or commit (default: main)."
)
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "A diffusers UNet2DModel or pipeline folder.")
_AUTOENCODER = flags.DEFINE_bool(
  "autoencoder", False, "Convert an AutoencoderKL (a model folder or a pipeline's vae/)."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where to write config.json and checkpoints/.")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Base config file (optional).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace the run already in --workdir.")
flags.mark_flags_as_required(["workdir"])
flags.register_multi_flags_validator(
  ["model", "model_dir"],
  lambda f: (f["model"] is None) != (f["model_dir"] is None),
  "give exactly one of --model (a Hub name) and --model_dir (a local folder)",
)
flags.register_multi_flags_validator(
  ["revision", "model"],
  lambda f: f["revision"] is None or f["model"] is not None,
  "--revision goes with --model (a branch, tag or commit of its Hub repo)",
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logs.quiet_library_logs()
  try:
    imported_run.check_no_run(_WORKDIR.value, _OVERWRITE.value)  # before the (long) load
    vae = diffusers_autoencoder
    if _AUTOENCODER.value:
      choose, load = vae.choose_files, vae.load_diffusers_autoencoder
    else:
      choose, load = diffusers_unet.choose_files, diffusers_unet.load_diffusers_unet
    folder = _MODEL_DIR.value
    if _MODEL.value is not None:
      folder = hub.model_folder(_MODEL.value, revision=_REVISION.value, files=choose)
    config, params = load(folder, _CONFIG.value)
    imported_run.write_run(_WORKDIR.value, config, params, overwrite=_OVERWRITE.value)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  m = config.model
  num_params = sum(p.size for p in jax.tree.leaves(params))
  blocks = f"ch {m.ch}, ch_mult {m.ch_mult}, {m.num_res_blocks} res blocks per level"
  if _AUTOENCODER.value:
    print(
      f"AutoencoderKL: {num_params:,} parameters, {blocks}, f = {2 ** (len(m.ch_mult) - 1)}, "
      f"{m.latent_channels} latent channels, latent scale {m.latent_scale:g}"
    )
  else:
    d, s = config.diffusion, config.sampling
    print(
      f"U-Net: {num_params:,} parameters, {blocks}, attention at {m.attn_resolutions}, "
      f"{config.data.image_size}x{config.data.image_size}x{config.data.num_channels}"
    )
    print(
      f"diffusion: {d.schedule} betas {d.beta_start:g}..{d.beta_end:g}, T = {d.num_timesteps}; "
      f"sampling: variance {s.variance}, clip_x0 {s.clip_x0}; data: {config.data.source} "
      f"{config.data.name}"
    )
  print(f"wrote {_WORKDIR.value}/{run_config.CONFIG_FILENAME} and a checkpoint at step 0")


if __name__ == "__main__":
  cli_flags.run(main)
