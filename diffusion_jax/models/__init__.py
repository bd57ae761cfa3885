"""Denoising networks eps_theta(x_t, t) and the config-driven factory."""

import flax.linen as nn
import ml_collections

from diffusion_jax.models.mlp import MLP
from diffusion_jax.models.unet import UNet, check_unet_config

__all__ = ["MLP", "UNet", "create_model"]

_MODEL_NAMES = ("mlp", "unet")


def create_model(config: ml_collections.ConfigDict) -> nn.Module:
  """Builds the denoiser named by config.model.name, checking its settings first.

  Args:
    config: experiment config; reads config.model and config.data.image_size.

  Returns:
    A Linen module called as model.apply(variables, x, t, train=...) with output shaped like x.

  Raises:
    ValueError: one line naming the setting to change.
  """
  m = config.model
  if m.name == "mlp":
    return MLP(hidden_dim=m.hidden_dim, num_layers=m.num_layers, dropout=m.dropout)
  if m.name == "unet":
    check_unet_config(config.data.image_size, m.ch, m.ch_mult, m.num_groups, m.attn_resolutions)
    return UNet(
      ch=m.ch,
      ch_mult=tuple(m.ch_mult),
      num_res_blocks=m.num_res_blocks,
      attn_resolutions=tuple(m.attn_resolutions),
      dropout=m.dropout,
      num_groups=m.num_groups,
      resamp_with_conv=m.resamp_with_conv,
    )
  raise ValueError(f"unknown model.name {m.name!r}; valid names: {', '.join(_MODEL_NAMES)}")
