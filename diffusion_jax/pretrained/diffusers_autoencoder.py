"""Loads a diffusers `AutoencoderKL` (Stable Diffusion's VAE: stabilityai/sd-vae-ft-mse, the `vae/`
of a Stable Diffusion pipeline, ...) into our `models.AutoencoderKL`.

A model folder holds `config.json` and `diffusion_pytorch_model.safetensors` (or `.bin`); a
pipeline folder keeps them in `vae/`. As with the U-Net (`diffusers_unet`), every config key is
mapped, checked or refused, and every tensor is mapped by name or refused, so the converted
autoencoder computes diffusers' function to float32 round-off: the posterior's mean and
log-variance (`encode`) and the decoded images (`decode`).

  config, params = load_diffusers_autoencoder("sd-vae-ft-mse")
  vae = models.create_autoencoder(config)
  mean, logvar = vae.apply({"params": params}, x, method="encode")   # x [B, H, W, 3] in [-1, 1]

config.model.latent_scale keeps the config's scaling_factor (0.18215 for Stable Diffusion), the
factor its latents are multiplied by for diffusion.
"""

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffusion_jax import models
from diffusion_jax.pretrained import diffusers_format, weight_files

# AutoencoderKL's constructor defaults (diffusers 0.42), which apply to the keys a config omits.
_DEFAULTS = {
  "in_channels": 3,
  "out_channels": 3,
  "down_block_types": ("DownEncoderBlock2D",),
  "up_block_types": ("UpDecoderBlock2D",),
  "block_out_channels": (64,),
  "layers_per_block": 1,
  "act_fn": "silu",
  "latent_channels": 4,
  "norm_num_groups": 32,
  "sample_size": 32,  # read only by diffusers' tiled encoding and decoding
  "scaling_factor": 0.18215,
  "shift_factor": None,
  "latents_mean": None,
  "latents_std": None,
  "force_upcast": True,  # float16 pipelines run the VAE in float32; ours always computes in it
  "use_quant_conv": True,
  "use_post_quant_conv": True,
  "mid_block_add_attention": True,
}
# Keys whose value must be exactly this: what our autoencoder computes, or the latent
# normalisation it records (a scale alone).
_REQUIRED = {
  "shift_factor": None,
  "latents_mean": None,
  "latents_std": None,
  "use_quant_conv": True,
  "use_post_quant_conv": True,
}


def choose_files(exists: Callable[[str], bool], where: str) -> tuple[str, str]:
  """Picks the AutoencoderKL config and weight file of a diffusers model or pipeline.

  Args:
    exists: whether a path relative to the model's root (e.g. `vae/config.json`) is a file.
    where: the model's name in error messages (a folder, a Hub name).

  Returns:
    (config, weights) as `/`-separated relative paths; safetensors is preferred.
  """
  model = ""
  if not exists("config.json"):
    model = "vae/"
    if not exists("vae/config.json"):
      raise ValueError(f"{where} has no config.json, nor vae/config.json; is it a diffusers model?")
  return f"{model}config.json", diffusers_format.choose_weights(exists, model, where)


def find_files(folder: str) -> tuple[str, str]:
  """The config.json and weight file paths of a model folder, or of a pipeline folder's vae/."""
  local = lambda path: os.path.join(folder, *path.split("/"))
  config, weights = choose_files(lambda path: os.path.isfile(local(path)), folder)
  return local(config), local(weights)


def autoencoder_config(vae_config: dict[str, Any]) -> dict[str, Any]:
  """Maps an AutoencoderKL config to our config's `model` and `data` fields.

  Args:
    vae_config: the parsed config.json.

  Returns:
    {"model": {...}, "data": {"num_channels": ...}} with the fields to set.

  Raises:
    ValueError: one line naming a key whose value our autoencoder cannot compute exactly.
  """
  cfg = diffusers_format.checked_config(vae_config, "AutoencoderKL", _DEFAULTS, _REQUIRED)
  ch, ch_mult = diffusers_format.channel_multipliers(cfg, "AutoencoderKL")
  blocks = {"down_block_types": "DownEncoderBlock2D", "up_block_types": "UpDecoderBlock2D"}
  for key, block in blocks.items():
    if list(cfg[key]) != [block] * len(ch_mult):
      raise ValueError(
        f"AutoencoderKL {key}={list(cfg[key])} is not supported; only {len(ch_mult)} x "
        f"{block} (one per block_out_channels entry) is"
      )
  return {
    "model": dict(
      name="autoencoder_kl",
      ch=ch,
      ch_mult=ch_mult,
      num_res_blocks=cfg["layers_per_block"],
      num_groups=cfg["norm_num_groups"],
      latent_channels=cfg["latent_channels"],
      mid_attention=cfg["mid_block_add_attention"],
      latent_scale=float(cfg["scaling_factor"]),
    ),
    "data": dict(num_channels=cfg["in_channels"]),
  }


def make_config(
  vae_config: dict[str, Any], base_config: ml_collections.ConfigDict | None = None
) -> ml_collections.ConfigDict:
  """Our config for a diffusers AutoencoderKL: base_config (default: configs/default.py's) with
  the model group and data.num_channels set."""
  return diffusers_format.config_over(base_config, autoencoder_config(vae_config))


def convert_params(
  state_dict: dict[str, np.ndarray], config: ml_collections.ConfigDict
) -> dict[str, Any]:
  """Our autoencoder's params from an AutoencoderKL state dict, for the config `make_config` gave.

  Args:
    state_dict: {diffusers name: array}, e.g. from `weight_files.read_weights`.
    config: our config; config.model and data.num_channels fix the tree.

  Returns:
    The params tree (float32 NumPy arrays) for `models.create_autoencoder(config)`.

  Raises:
    ValueError: a tensor is missing, left over, or has the wrong shape (named in the message).
  """
  vae = models.create_autoencoder(config)
  x = jax.ShapeDtypeStruct((1, vae.factor, vae.factor, vae.image_channels), jnp.float32)
  abstract = jax.eval_shape(lambda x: vae.init(jax.random.key(0), x), x)["params"]
  num_levels = len(vae.ch_mult)

  def module_name(keys: tuple[str, ...]) -> str:
    # ("quant_conv",), or ("encoder", block) / ("encoder", block, layer) and the decoder's.
    if len(keys) == 1:
      return keys[0]
    layer = keys[2] if len(keys) == 3 else None
    return f"{keys[0]}.{diffusers_format.block_prefix(keys[1], layer, num_levels)}"

  return diffusers_format.convert_tree(state_dict, abstract, module_name)


def load_diffusers_autoencoder(
  folder: str, base_config: ml_collections.ConfigDict | None = None
) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
  """Our config and autoencoder params for a diffusers AutoencoderKL model or pipeline folder.

  Args:
    folder: holds config.json and the weights, at its root or in vae/ (see `find_files`).
    base_config: the config to start from (see `make_config`).

  Returns:
    (config, params): params are float32 NumPy arrays for `models.create_autoencoder(config)`.
  """
  config_path, weights_path = find_files(folder)
  config = make_config(diffusers_format.read_json(config_path), base_config)
  return config, convert_params(weight_files.read_weights(weights_path), config)
