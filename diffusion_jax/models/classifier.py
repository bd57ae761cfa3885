"""A time-conditioned classifier of noisy images p_phi(y | x_t, t): the U-Net's down path and middle
block, then a pooled linear head (Dhariwal & Nichol 2021, sec. 4.1), for classifier guidance."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.models.layers import default_init, timestep_embedding
from diffusion_jax.models.unet import (
  AttnBlock,
  Downsample,
  ResnetBlock,
  check_unet_config,
  conv3x3,
  group_norm,
)


class NoisyClassifier(nn.Module):
  """Logits of y given x_t and t; the fields are the U-Net's (see `UNet`)."""

  num_classes: int
  ch: int = 32
  ch_mult: Sequence[int] = (1, 2)
  num_res_blocks: int = 1
  attn_resolutions: Sequence[int] = ()
  dropout: float = 0.0
  num_groups: int = 8
  resamp_with_conv: bool = True

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array, t_B: jax.Array, train: bool = False) -> jax.Array:
    """Returns logits [B, num_classes] for noisy images [B, H, W, C] at timesteps t [B]."""
    _, H, W, _ = x_BxHxWxC.shape
    if H != W:
      raise ValueError(f"the classifier expects square images, got {H}x{W}")
    check_unet_config(H, self.ch, self.ch_mult, self.num_groups, self.attn_resolutions)
    temb = timestep_embedding(t_B, self.ch)
    temb = nn.Dense(4 * self.ch, kernel_init=default_init(), name="temb_dense0")(temb)
    temb_BxE = nn.Dense(4 * self.ch, kernel_init=default_init(), name="temb_dense1")(nn.silu(temb))
    h = conv3x3(self.ch, jnp.float32, name="conv_in")(x_BxHxWxC)
    for i, mult in enumerate(self.ch_mult):
      for j in range(self.num_res_blocks):
        block = ResnetBlock(self.ch * mult, self.dropout, self.num_groups, name=f"down{i}_res{j}")
        h = block(h, temb_BxE, train)
        if h.shape[1] in self.attn_resolutions:
          h = AttnBlock(self.num_groups, name=f"down{i}_attn{j}")(h)
      if i != len(self.ch_mult) - 1:
        h = Downsample(self.resamp_with_conv, name=f"down{i}_downsample")(h)
    h = ResnetBlock(h.shape[-1], self.dropout, self.num_groups, name="mid_res0")(h, temb_BxE, train)
    h = nn.silu(group_norm(self.num_groups, jnp.float32, name="norm_out")(h))
    h_BxC = jnp.mean(h, axis=(1, 2))  # global average pooling
    return nn.Dense(self.num_classes, kernel_init=default_init(), name="head")(h_BxC)
