"""Loads the DDPM U-Nets released in the diffusers format (google/ddpm-cifar10-32,
ddpm-celebahq-256, ddpm-church-256, ddpm-bedroom-256, ddpm-cat-256 and their ddpm-ema-* variants)
into our `UNet`.

A diffusers model folder holds `config.json` (a `UNet2DModel` config), the weights
(`diffusion_pytorch_model.safetensors` or `.bin`) and `scheduler_config.json`, at the root or in
`scheduler/`; a pipeline folder keeps the model in `unet/`. The conversion is exact: each config
key is mapped, or checked to have the value our U-Net computes, or refused, so a converted network
computes the same function as the diffusers one (to float32 round-off); `samplers.timesteps` has
diffusers' timestep spacings. epsilon, sample and v_prediction models map to our eps, x0 and v
parametrizations.

  config, params = load_diffusers_unet("ddpm-cifar10-32")
  eps = models.create_model(config).apply({"params": params}, x_t, t)

`training.imported_run.write_run` turns (config, params) into a workdir that sample.py and
evaluate.py read like a trained run (convert_diffusers.py does both).

Sampling as diffusers does, with the same noise the trajectories agree to float32 round-off:
- DDPMScheduler on all T steps (DDPMPipeline's default) is ancestral sampling with the converted
  config's variance and clipping; on S < T steps with timestep_spacing k it is ancestral
  sampling on the respaced chain, `samplers.SamplerSpec("ancestral", steps=S, spacing=k)`. One
  difference: when the smallest index is above 0 (`trailing`), diffusers' last step adds noise of
  variance beta' = 1 - abar_{tau_1} with fixed_large (1e-20 with fixed_small); ours adds none.
- DDIMScheduler is our `ddim` with its step's use_clipped_model_output=True (eps
  re-derived from the clipped x0); DDIMPipeline's default, False, steps with the unclipped eps,
  which differs wherever clipping is active. DDIMScheduler steps from t to t - T // S rather than
  to the next listed timestep, so it agrees with ours for `leading` spacing, and for `trailing`
  when S divides T; `linspace` and the other `trailing` cases differ by design.
- steps_offset other than 0 (not used by the DDPM releases) has no counterpart here.
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

# UNet2DModel's constructor defaults (diffusers 0.42), which apply to the keys a config omits.
_UNET_DEFAULTS = {
  "sample_size": None,
  "in_channels": 3,
  "out_channels": 3,
  "center_input_sample": False,
  "time_embedding_type": "positional",
  "time_embedding_dim": None,
  "freq_shift": 0,
  "flip_sin_to_cos": True,
  "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
  "mid_block_type": "UNetMidBlock2D",
  "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
  "block_out_channels": (224, 448, 672, 896),
  "layers_per_block": 2,
  "mid_block_scale_factor": 1,
  "downsample_padding": 1,
  "downsample_type": "conv",
  "upsample_type": "conv",
  "dropout": 0.0,
  "act_fn": "silu",
  "attention_head_dim": 8,
  "norm_num_groups": 32,
  "attn_norm_num_groups": None,
  "norm_eps": 1e-5,
  "resnet_time_scale_shift": "default",
  "add_attention": True,
  "class_embed_type": None,
  "num_class_embeds": None,
  "num_train_timesteps": None,  # read only by the "learned" time embedding
}

# Keys whose value must be exactly this (defaults above apply): what our U-Net computes. Our
# stride-2 SAME conv pads 0 before and 1 after, as diffusers' Downsample2D does for padding 0.
_UNET_REQUIRED = {
  "center_input_sample": False,
  "time_embedding_type": "positional",
  "freq_shift": 1,  # frequencies 10000^(-k / (half - 1)), ours
  "flip_sin_to_cos": False,  # sines first, ours
  "mid_block_type": "UNetMidBlock2D",
  "mid_block_scale_factor": 1,
  "downsample_padding": 0,
  "downsample_type": "conv",
  "upsample_type": "conv",
  "norm_eps": 1e-6,
  "resnet_time_scale_shift": "default",
  "add_attention": True,
  "class_embed_type": None,
  "num_class_embeds": None,
}

# DDPMScheduler's and DDIMScheduler's constructor defaults; the DDPM-only and DDIM-only keys are
# checked only for their own class.
_SCHEDULER_DEFAULTS = {
  "num_train_timesteps": 1000,
  "beta_start": 0.0001,
  "beta_end": 0.02,
  "beta_schedule": "linear",
  "trained_betas": None,
  "clip_sample": True,
  "prediction_type": "epsilon",
  "thresholding": False,
  "clip_sample_range": 1.0,
  "rescale_betas_zero_snr": False,
  # Sampling-time options of diffusers' own sampling loop, not part of the model: choose the
  # spacing with sample.py --spacing (steps_offset 0 is what `respacing`'s kinds reproduce).
  "timestep_spacing": "leading",
  "steps_offset": 0,
  "dynamic_thresholding_ratio": 0.995,  # read only with thresholding
  "sample_max_value": 1.0,  # read only with thresholding
}
# Keys early diffusers releases wrote into scheduler configs: `tensor_format` and
# `timestep_values` change nothing, `predict_epsilon` became prediction_type (True = "epsilon").
_SCHEDULER_OBSOLETE = {"tensor_format": None, "timestep_values": None, "predict_epsilon": True}
_SCHEDULER_CLASS_DEFAULTS = {
  "DDPMScheduler": {"variance_type": "fixed_small"},
  "DDIMScheduler": {"set_alpha_to_one": True},
}
_SCHEDULER_REQUIRED = {
  "trained_betas": None,
  "thresholding": False,
  "clip_sample_range": 1.0,
  "rescale_betas_zero_snr": False,
  "set_alpha_to_one": True,  # our DDIM ends at abar = 1
}
# diffusers prediction_type -> ours (`parametrization`).
_PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
# diffusers beta_schedule -> ours; each computes the same betas (ours in float64, theirs float32).
_BETA_SCHEDULES = {
  "linear": "linear",
  "scaled_linear": "quad",
  "squaredcos_cap_v2": "cosine",
  "sigmoid": "sigmoid",
}
_VARIANCES = {"fixed_small": "fixedsmall", "fixed_large": "fixedlarge"}

_DOWN_BLOCKS = ("DownBlock2D", "AttnDownBlock2D")


def choose_files(exists: Callable[[str], bool], where: str) -> tuple[str, str, str]:
  """Picks the U-Net config, weight file and scheduler config of a diffusers model or pipeline.

  Args:
    exists: whether a path relative to the model's root (e.g. `unet/config.json`) is a file.
    where: the model's name in error messages (a folder, a Hub name).

  Returns:
    (config, weights, scheduler config) as `/`-separated relative paths; safetensors is preferred.
  """
  model = ""
  if not exists("config.json"):
    model = "unet/"
    if not exists("unet/config.json"):
      raise ValueError(
        f"{where} has no config.json, nor unet/config.json; is it a diffusers model?"
      )
  weights = diffusers_format.choose_weights(exists, model, where)
  # A model folder holds it beside config.json; a pipeline in scheduler/, beside unet/.
  candidates = dict.fromkeys(
    ["scheduler_config.json", f"{model}scheduler_config.json", "scheduler/scheduler_config.json"]
  )
  scheduler = next((p for p in candidates if exists(p)), None)
  if scheduler is None:
    raise ValueError(
      f"{where} has no scheduler_config.json (looked for {', '.join(candidates)}); it gives the "
      "noise schedule"
    )
  return f"{model}config.json", weights, scheduler


def find_files(folder: str) -> tuple[str, str, str]:
  """Locates the U-Net config, its weight file and the scheduler config of a diffusers folder.

  Args:
    folder: a model folder, or a pipeline folder with the model in `unet/`.

  Returns:
    (config.json path, weight file path, scheduler_config.json path); safetensors is preferred.
  """
  local = lambda path: os.path.join(folder, *path.split("/"))
  config, weights, scheduler = choose_files(lambda path: os.path.isfile(local(path)), folder)
  return local(config), local(weights), local(scheduler)


def unet_model_config(unet_config: dict[str, Any]) -> dict[str, Any]:
  """Maps a UNet2DModel config to our config's `model` and `data` fields.

  Args:
    unet_config: the parsed config.json.

  Returns:
    {"model": {...}, "data": {...}} with the fields to set.

  Raises:
    ValueError: one line naming a key whose value our U-Net cannot compute exactly.
  """
  if unet_config.get("_class_name") == "AutoencoderKL":
    raise ValueError(
      "config.json describes an AutoencoderKL, not a U-Net; convert it with diffusers_autoencoder "
      "(convert_diffusers.py --autoencoder)"
    )
  cfg = diffusers_format.checked_config(unet_config, "UNet2DModel", _UNET_DEFAULTS, _UNET_REQUIRED)
  size = cfg["sample_size"]
  if isinstance(size, list | tuple) and len(size) == 2 and size[0] == size[1]:
    size = size[0]
  if not isinstance(size, int):
    raise ValueError(f"UNet2DModel sample_size={size!r} is not supported; give one int (square)")

  ch, ch_mult = diffusers_format.channel_multipliers(cfg, "UNet2DModel")
  channels = [ch * m for m in ch_mult]
  if cfg["time_embedding_dim"] not in (None, 4 * ch):
    raise ValueError(
      f"UNet2DModel time_embedding_dim={cfg['time_embedding_dim']} is not supported; only None "
      f"(4 x block_out_channels[0] = {4 * ch}) is"
    )
  down = [t.removeprefix("UNetRes") for t in cfg["down_block_types"]]  # diffusers strips it too
  up = [t.removeprefix("UNetRes") for t in cfg["up_block_types"]]
  for block in down:
    if block not in _DOWN_BLOCKS:
      raise ValueError(
        f"UNet2DModel down_block_types has {block!r}, which is not supported; use "
        f"{', '.join(_DOWN_BLOCKS)}"
      )
  if len(down) != len(channels):
    raise ValueError(
      f"UNet2DModel down_block_types has {len(down)} blocks but block_out_channels {len(channels)}"
    )
  mirrored = [b.replace("Down", "Up") for b in reversed(down)]
  if up != mirrored:
    raise ValueError(
      f"UNet2DModel up_block_types={cfg['up_block_types']} is not supported; it must mirror "
      f"down_block_types: {mirrored}"
    )
  attn_levels = [i for i, b in enumerate(down) if b.startswith("Attn")]
  head_dim = cfg["attention_head_dim"]
  # The mid block always attends, at the last level's width; every attention must be one head.
  widths = sorted({channels[i] for i in attn_levels} | {channels[-1]})
  if head_dim is not None and any(head_dim != w for w in widths):
    raise ValueError(
      f"UNet2DModel attention_head_dim={head_dim} is not supported; only null (one head) is"
    )
  groups = cfg["norm_num_groups"]
  if not isinstance(groups, int):
    raise ValueError(f"UNet2DModel norm_num_groups={groups!r} is not supported; give an int")
  if cfg["attn_norm_num_groups"] not in (None, groups):
    raise ValueError(
      f"UNet2DModel attn_norm_num_groups={cfg['attn_norm_num_groups']} is not supported; only "
      f"null (norm_num_groups) is"
    )
  return {
    "model": dict(
      name="unet",
      ch=ch,
      ch_mult=ch_mult,
      num_res_blocks=cfg["layers_per_block"],
      attn_resolutions=tuple(size // 2**i for i in attn_levels),
      dropout=float(cfg["dropout"]),
      num_groups=groups,
      resamp_with_conv=True,
    ),
    "data": dict(image_size=size, num_channels=cfg["in_channels"]),
  }


def scheduler_config(sched_config: dict[str, Any]) -> dict[str, Any]:
  """Maps a DDPMScheduler or DDIMScheduler config to our `diffusion`, `sampling` and
  `model.prediction` fields.

  Args:
    sched_config: the parsed scheduler_config.json.

  Returns:
    {"diffusion": {...}, "sampling": {...}, "model": {"prediction": ...}} with the fields to set.

  Raises:
    ValueError: one line naming a key whose value our schedules or samplers do not reproduce.
  """
  cls = sched_config.get("_class_name", "DDPMScheduler")
  if cls not in _SCHEDULER_CLASS_DEFAULTS:
    raise ValueError(
      f"scheduler _class_name={cls!r} is not supported; use {', '.join(_SCHEDULER_CLASS_DEFAULTS)}"
    )
  if sched_config.get("predict_epsilon", True) is not True:
    raise ValueError(f"{cls} predict_epsilon=False is not supported; only epsilon prediction is")
  defaults = {**_SCHEDULER_DEFAULTS, **_SCHEDULER_OBSOLETE, **_SCHEDULER_CLASS_DEFAULTS[cls]}
  cfg = diffusers_format.with_defaults(sched_config, defaults, cls)
  diffusers_format.require(cfg, _SCHEDULER_REQUIRED, cls)
  if cfg["beta_schedule"] not in _BETA_SCHEDULES:
    raise ValueError(
      f"{cls} beta_schedule={cfg['beta_schedule']!r} is not supported; use "
      f"{', '.join(_BETA_SCHEDULES)}"
    )
  if cfg["prediction_type"] not in _PREDICTIONS:
    raise ValueError(
      f"{cls} prediction_type={cfg['prediction_type']!r} is not supported; use "
      f"{', '.join(_PREDICTIONS)}"
    )
  sampling = {"clip_x0": bool(cfg["clip_sample"])}
  if "variance_type" in cfg:
    if cfg["variance_type"] not in _VARIANCES:
      raise ValueError(
        f"{cls} variance_type={cfg['variance_type']!r} is not supported; use "
        f"{', '.join(_VARIANCES)}"
      )
    sampling["variance"] = _VARIANCES[cfg["variance_type"]]
  diffusion = dict(
    schedule=_BETA_SCHEDULES[cfg["beta_schedule"]],
    num_timesteps=int(cfg["num_train_timesteps"]),
    beta_start=float(cfg["beta_start"]),
    beta_end=float(cfg["beta_end"]),
  )
  model = {"prediction": _PREDICTIONS[cfg["prediction_type"]]}
  return {"diffusion": diffusion, "sampling": sampling, "model": model}


def make_config(
  unet_config: dict[str, Any],
  sched_config: dict[str, Any],
  base_config: ml_collections.ConfigDict | None = None,
) -> ml_collections.ConfigDict:
  """Our experiment config for a diffusers U-Net and scheduler, over a base config.

  Args:
    unet_config: the parsed UNet2DModel config.json.
    sched_config: the parsed scheduler_config.json.
    base_config: the config to start from; default configs/default.py's (tfds cifar10 data). Its
      data group names the dataset bits/dim are
      measured on, so for the 256x256 models pass a base whose data matches (e.g.
      configs/church256.py) or set `data` afterwards.

  Returns:
    The config, with model, data.image_size/num_channels, diffusion and sampling set.
  """
  mapped = (unet_model_config(unet_config), scheduler_config(sched_config))
  return diffusers_format.config_over(base_config, *mapped)


def convert_params(
  state_dict: dict[str, np.ndarray], config: ml_collections.ConfigDict
) -> dict[str, Any]:
  """Our U-Net's params from a UNet2DModel state dict, for the config `make_config` gave.

  Every leaf of our model's param tree (from `jax.eval_shape` of its init) takes one tensor, in
  float32 whatever the file's dtype; attention layers may use the current names (to_q, to_k, to_v,
  to_out.0) or the older ones (query, key, value, proj_attn).

  Args:
    state_dict: {diffusers name: array}, e.g. from `weight_files.read_weights`.
    config: our config; its model and data groups fix the tree.

  Returns:
    The params tree for `models.create_model(config).apply({"params": params}, x, t)`.

  Raises:
    ValueError: a tensor is missing, left over, or has the wrong shape (named in the message).
  """
  model = models.create_model(config)
  size = config.data.image_size
  x = jax.ShapeDtypeStruct((1, size, size, config.data.num_channels), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.int32)
  abstract = jax.eval_shape(lambda x, t: model.init(jax.random.key(0), x, t), x, t)["params"]
  num_levels = len(config.model.ch_mult)
  # A leaf's module path is a block (conv_in) or a block and its layer (down0_res1, conv1).
  module_name = lambda keys: diffusers_format.block_prefix(
    keys[0], keys[1] if len(keys) == 2 else None, num_levels
  )
  return diffusers_format.convert_tree(state_dict, abstract, module_name)


def load_diffusers_unet(
  folder: str, base_config: ml_collections.ConfigDict | None = None
) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
  """Our config and U-Net params for a diffusers model or pipeline folder.

  Args:
    folder: holds config.json, the weights and scheduler_config.json (see `find_files`).
    base_config: the config to start from (see `make_config`).

  Returns:
    (config, params): params are float32 NumPy arrays in our U-Net's tree.
  """
  config_path, weights_path, scheduler_path = find_files(folder)
  read = diffusers_format.read_json
  config = make_config(read(config_path), read(scheduler_path), base_config)
  return config, convert_params(weight_files.read_weights(weights_path), config)
