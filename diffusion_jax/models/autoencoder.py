"""The KL-regularised autoencoder of latent diffusion (Rombach et al. 2022, sec. 3.1), laid out as
Stable Diffusion's VAE (diffusers' AutoencoderKL), from the U-Net's blocks without the timestep.

The encoder halves the image len(ch_mult) - 1 times (f = 2^(len(ch_mult) - 1)) through
num_res_blocks ResNet blocks per level, then a middle of ResNet, self-attention and ResNet blocks,
and outputs the mean and log-variance of q(z|x), c = latent_channels each (`latents`). The decoder
mirrors it with num_res_blocks + 1 blocks per level. Level i has ch * ch_mult[i] channels: Stable
Diffusion's VAE is ch 128, ch_mult (1, 2, 4, 4), num_res_blocks 2, c = 4, f = 8.

  vae = AutoencoderKL(ch=32, ch_mult=(1, 2, 2), latent_channels=4, image_channels=3)
  params = vae.init(key, x)["params"]                               # x [B, H, W, 3]
  mean, logvar = vae.apply({"params": params}, x, method="encode")  # [B, H/4, W/4, 4] each
  x_rec = vae.apply({"params": params}, mean, method="decode")      # [B, H, W, 3]
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax import latents
from diffusion_jax.models.layers import conv3x3, default_init, group_norm
from diffusion_jax.models.unet import (
  AttnBlock,
  Downsample,
  ResnetBlock,
  Upsample,
  check_unet_config,
)


def _middle(h: jax.Array, num_groups: int, attention: bool, dtype: jnp.dtype) -> jax.Array:
  """The middle of the encoder and the decoder: ResNet, self-attention, ResNet, at h's width;
  called inside a compact method, whose module the blocks join."""
  res = lambda h, name: ResnetBlock(h.shape[-1], 0.0, num_groups, dtype, name=name)(h, None, False)
  h = res(h, "mid_res0")
  if attention:
    h = AttnBlock(num_groups, dtype, name="mid_attn")(h)
  return res(h, "mid_res1")


class _Blocks(nn.Module):
  """The fields the encoder and the decoder share, `AutoencoderKL`'s."""

  ch: int
  ch_mult: Sequence[int]
  num_res_blocks: int
  num_groups: int
  mid_attention: bool
  dtype: str


class Encoder(_Blocks):
  """Images to the moments of q(z|x)."""

  latent_channels: int

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    """Returns [B, H/f, W/f, 2c]: the mean's channels, then the log-variance's (unclipped)."""
    dtype = jnp.dtype(self.dtype)
    h = conv3x3(self.ch, dtype, name="conv_in")(x_BxHxWxC)
    for i, mult in enumerate(self.ch_mult):
      for j in range(self.num_res_blocks):
        block = ResnetBlock(self.ch * mult, 0.0, self.num_groups, dtype, name=f"down{i}_res{j}")
        h = block(h, None, False)
      if i != len(self.ch_mult) - 1:
        h = Downsample(True, dtype, name=f"down{i}_downsample")(h)
    h = _middle(h, self.num_groups, self.mid_attention, dtype)
    h = nn.silu(group_norm(self.num_groups, dtype, "norm_out")(h))
    return conv3x3(2 * self.latent_channels, dtype, name="conv_out")(h)


class Decoder(_Blocks):
  """Latents to images."""

  image_channels: int

  @nn.compact
  def __call__(self, z_BxhxwxC: jax.Array) -> jax.Array:
    """Returns [B, h * f, w * f, image_channels]."""
    dtype = jnp.dtype(self.dtype)
    h = conv3x3(self.ch * self.ch_mult[-1], dtype, name="conv_in")(z_BxhxwxC)
    h = _middle(h, self.num_groups, self.mid_attention, dtype)
    for i, mult in reversed(list(enumerate(self.ch_mult))):
      for j in range(self.num_res_blocks + 1):
        block = ResnetBlock(self.ch * mult, 0.0, self.num_groups, dtype, name=f"up{i}_res{j}")
        h = block(h, None, False)
      if i != 0:
        h = Upsample(True, dtype, name=f"up{i}_upsample")(h)
    h = nn.silu(group_norm(self.num_groups, dtype, "norm_out")(h))
    return conv3x3(self.image_channels, dtype, name="conv_out")(h)


class AutoencoderKL(nn.Module):
  """Encoder, 1x1 quant_conv, q(z|x), 1x1 post_quant_conv, decoder; defaults: Stable Diffusion's
  VAE (83.7M parameters). GroupNorm epsilon is 1e-6, as there."""

  ch: int = 128
  ch_mult: Sequence[int] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  num_groups: int = 32  # GroupNorm groups; must divide every ch * ch_mult[i]
  latent_channels: int = 4
  image_channels: int = 3
  mid_attention: bool = True  # self-attention in the middle of the encoder and the decoder
  # Compute dtype of the convolutions and attention: "float32" or "bfloat16"; the parameters,
  # GroupNorm, the posterior's moments and the decoded images are float32.
  dtype: str = "float32"

  def setup(self):
    blocks = dict(
      ch=self.ch,
      ch_mult=tuple(self.ch_mult),
      num_res_blocks=self.num_res_blocks,
      num_groups=self.num_groups,
      mid_attention=self.mid_attention,
      dtype=self.dtype,
    )
    self.encoder = Encoder(latent_channels=self.latent_channels, **blocks)
    self.decoder = Decoder(image_channels=self.image_channels, **blocks)
    conv1x1 = lambda features: nn.Conv(
      features, (1, 1), kernel_init=default_init(), dtype=jnp.dtype(self.dtype)
    )
    self.quant_conv = conv1x1(2 * self.latent_channels)
    self.post_quant_conv = conv1x1(self.latent_channels)

  @property
  def factor(self) -> int:
    """f: how many times smaller than the image the latent is along each side."""
    return 2 ** (len(self.ch_mult) - 1)

  def encode(self, x_BxHxWxC: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The posterior q(z|x) of images.

    Args:
      x_BxHxWxC: [B, H, W, image_channels] images in [-1, 1]; H and W multiples of f.

    Returns:
      (mean, logvar), each [B, H/f, W/f, latent_channels] float32; logvar clipped to
      [latents.LOGVAR_MIN, latents.LOGVAR_MAX].
    """
    _, H, W, C = x_BxHxWxC.shape
    if C != self.image_channels:
      raise ValueError(f"the autoencoder takes {self.image_channels}-channel images, got {C}")
    for size in (H, W):
      check_unet_config(size, self.ch, self.ch_mult, self.num_groups, ())
    moments = self.quant_conv(self.encoder(x_BxHxWxC)).astype(jnp.float32)
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return mean, latents.clip_logvar(logvar)

  def decode(self, z_BxhxwxC: jax.Array) -> jax.Array:
    """Images [B, h * f, w * f, image_channels] float32 from latents [B, h, w, latent_channels]."""
    return self.decoder(self.post_quant_conv(z_BxhxwxC)).astype(jnp.float32)

  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    """The reconstruction through the posterior's mean (its mode): decode(encode(x).mean)."""
    mean, _ = self.encode(x_BxHxWxC)
    return self.decode(mean)
