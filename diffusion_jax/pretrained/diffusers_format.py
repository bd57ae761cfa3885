"""What the converters of diffusers models share: the weight files' names, configs read over
diffusers' defaults, and every tensor of a state dict mapped onto one leaf of our parameters.

Our networks name their blocks as the DDPM U-Net does (`conv_in`, `down{i}_res{j}`,
`down{i}_downsample`, `mid_res0`, `mid_attn`, `up{i}_upsample`, `norm_out`, ...), level i counting
from the full resolution; `block_prefix` gives diffusers' name of each.
"""

import json
import re
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from diffusion_jax.configs import default

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")

# Our submodule name -> diffusers', inside a ResNet block and an attention block.
_RES_NAMES = {
  "norm1": "norm1",
  "conv1": "conv1",
  "temb_proj": "time_emb_proj",
  "norm2": "norm2",
  "conv2": "conv2",
  "nin_shortcut": "conv_shortcut",
}
_ATTN_NAMES = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
# Names in hub files written before diffusers renamed its attention block's layers.
_LEGACY_ATTN_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def choose_weights(exists: Callable[[str], bool], model: str, where: str) -> str:
  """The weight file beside `{model}config.json` (`model` is "" or a folder like "unet/"),
  safetensors preferred; `where` names the model in the error."""
  weights = next((model + n for n in WEIGHT_FILES if exists(model + n)), None)
  if weights is None:
    raise ValueError(
      f"{where} has no weights; expected {' or '.join(model + n for n in WEIGHT_FILES)}"
    )
  return weights


def read_json(path: str) -> dict[str, Any]:
  """A config file's JSON object; a file that is not one is a one-line ValueError naming it."""
  try:
    with open(path) as f:
      values = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is not valid JSON ({e})") from None
  if not isinstance(values, dict):
    raise ValueError(f"{path} does not hold a JSON object")
  return values


def with_defaults(cfg: dict[str, Any], defaults: dict[str, Any], what: str) -> dict[str, Any]:
  """cfg over the defaults, refusing keys diffusers would not read (metadata `_...` aside)."""
  unknown = sorted(k for k in cfg if not k.startswith("_") and k not in defaults)
  if unknown:
    raise ValueError(
      f"{what} key {unknown[0]!r} is not supported; supported keys: {', '.join(defaults)}"
    )
  return {**defaults, **{k: v for k, v in cfg.items() if not k.startswith("_")}}


def require(cfg: dict[str, Any], required: dict[str, Any], what: str) -> None:
  """Refuses, naming the key, any value in cfg other than the one `required` gives for it."""
  for key, want in required.items():
    if key in cfg and cfg[key] != want:
      raise ValueError(f"{what} {key}={cfg[key]!r} is not supported; only {want!r} is")


def checked_config(
  config: dict[str, Any], cls: str, defaults: dict[str, Any], required: dict[str, Any]
) -> dict[str, Any]:
  """A diffusers model config over the defaults of its class `cls`, refusing another
  _class_name, keys `cls` does not have, values other than `required`'s, an activation other
  than SiLU, and out_channels other than in_channels."""
  if config.get("_class_name", cls) != cls:
    raise ValueError(
      f"config.json _class_name={config['_class_name']!r} is not supported; only {cls} is"
    )
  cfg = with_defaults(config, defaults, cls)
  require(cfg, required, cls)
  if cfg["act_fn"] not in ("silu", "swish"):  # diffusers maps both names to SiLU
    raise ValueError(f"{cls} act_fn={cfg['act_fn']!r} is not supported; only silu is")
  if cfg["in_channels"] != cfg["out_channels"]:
    raise ValueError(
      f"{cls} out_channels={cfg['out_channels']} is not supported; it must equal "
      f"in_channels={cfg['in_channels']}"
    )
  return cfg


def channel_multipliers(cfg: dict[str, Any], cls: str) -> tuple[int, tuple[int, ...]]:
  """block_out_channels as our (ch, ch_mult): each must be a multiple of the first."""
  channels = list(cfg["block_out_channels"])
  ch = channels[0]
  if any(c % ch for c in channels):
    raise ValueError(
      f"{cls} block_out_channels={channels} is not supported; each must be a multiple of the "
      f"first ({ch})"
    )
  return ch, tuple(c // ch for c in channels)


def config_over(
  base_config: ml_collections.ConfigDict | None, *mapped: dict[str, dict[str, Any]]
) -> ml_collections.ConfigDict:
  """A locked copy of base_config (default: configs/default.py's) with the fields of each mapped
  {group: {field: value}} set."""
  config = ml_collections.ConfigDict((base_config or default.get_config()).to_dict())
  for groups in mapped:
    for group, fields in groups.items():
      config[group].update(fields)
  config.lock()
  return config


def block_prefix(module: str, sub: str | None, num_levels: int) -> str:
  """The diffusers module path of our block `module` (and its submodule `sub`)."""
  if module in ("conv_in", "conv_out"):
    return module
  if module == "norm_out":
    return "conv_norm_out"
  if module.startswith("temb_dense"):
    return f"time_embedding.linear_{int(module[-1]) + 1}"
  m = re.fullmatch(r"(down|up)(\d+)_(res|attn|downsample|upsample)(\d*)", module)
  if m:
    path, level, kind, j = m.groups()
    # diffusers lists its up blocks from the lowest resolution: up_blocks[k] is our level L-1-k.
    k = int(level) if path == "down" else num_levels - 1 - int(level)
    block = f"{path}_blocks.{k}"
  else:
    m = re.fullmatch(r"mid_(res|attn)(\d*)", module)
    kind, j = m.groups()
    block, j = "mid_block", j or "0"
  if kind == "res":
    return f"{block}.resnets.{j}.{_RES_NAMES[sub]}"
  if kind == "attn":
    return f"{block}.attentions.{j}.{_ATTN_NAMES[sub]}"
  return f"{block}.{kind}rs.0.conv"  # downsamplers / upsamplers


def _stored_name(state_dict: dict[str, np.ndarray], name: str) -> str:
  """`name`, or the older name of the same attention layer when the file uses that one."""
  if name in state_dict:
    return name
  m = re.fullmatch(r"(.*\.attentions\.\d+)\.(to_q|to_k|to_v|to_out\.0)\.(weight|bias)", name)
  legacy = m and f"{m[1]}.{_LEGACY_ATTN_NAMES[m[2]]}.{m[3]}"
  if legacy in state_dict:
    return legacy
  raise ValueError(f"the weights have no tensor {name}, which the config needs")


def _to_ours(name: str, w: np.ndarray, ours: tuple[int, ...]) -> np.ndarray:
  """A diffusers tensor in our layout: conv [O, I, kh, kw] -> [kh, kw, I, O]; Linear and 1x1
  conv [O, I(, 1, 1)] -> Dense [I, O]; vectors unchanged. Refuses any other shape."""
  if len(ours) == 4:
    expected = (ours[3], ours[2], ours[0], ours[1])
  elif len(ours) == 2:
    expected = (ours[1], ours[0]) + ((1, 1) if name.endswith("conv_shortcut.weight") else ())
  else:
    expected = ours
  if w.shape != expected:
    raise ValueError(f"tensor {name} has shape {w.shape}, but the config implies {expected}")
  if not np.issubdtype(w.dtype, np.floating) and w.dtype.name != "bfloat16":
    raise ValueError(f"tensor {name} has dtype {w.dtype}; expected floating point weights")
  w = w.astype(np.float32)
  if len(ours) == 4:
    return w.transpose(2, 3, 1, 0)
  if len(ours) == 2:
    return w.reshape(w.shape[:2]).T
  return w


def convert_tree(
  state_dict: dict[str, np.ndarray],
  abstract: Any,
  module_name: Callable[[tuple[str, ...]], str],
) -> Any:
  """Our params from a diffusers state dict: one tensor for every leaf, none left over.

  Attention layers may use the current names (to_q, to_k, to_v, to_out.0) or the older ones
  (query, key, value, proj_attn); every tensor becomes float32, whatever the file's dtype.

  Args:
    state_dict: {diffusers name: array}, e.g. from `weight_files.read_weights`.
    abstract: our params' tree of shapes (jax.eval_shape of the model's init).
    module_name: the diffusers module of a leaf's path without its last key, e.g.
      ("down0_res0", "conv1") -> "down_blocks.0.resnets.0.conv1".

  Returns:
    The params tree, float32 NumPy arrays.

  Raises:
    ValueError: a tensor is missing, left over, or has the wrong shape (named in the message).
  """
  unused = set(state_dict)

  def fill(path, leaf):
    keys = tuple(p.key for p in path)
    suffix = "bias" if keys[-1] == "bias" else "weight"  # kernel and GroupNorm scale
    name = _stored_name(state_dict, f"{module_name(keys[:-1])}.{suffix}")
    unused.discard(name)
    return _to_ours(name, np.asarray(state_dict[name]), leaf.shape)

  params = jax.tree_util.tree_map_with_path(fill, abstract)
  if unused:
    raise ValueError(
      f"the weights hold {len(unused)} tensors the config does not use, e.g. {min(unused)}"
    )
  return params
