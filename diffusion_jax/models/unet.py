"""The DDPM U-Net (Ho et al. 2020, Appendix B), laid out as in the paper's TensorFlow code."""

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.models.layers import (
  ZERO_ISH_SCALE,
  conv3x3,
  default_init,
  group_norm,
  label_embedding,
  single_head_attention,
  timestep_embedding,
)


def check_unet_config(
  image_size: int,
  ch: int,
  ch_mult: Sequence[int],
  num_groups: int,
  attn_resolutions: Sequence[int],
) -> None:
  """Raises a one-line ValueError saying what to change if the U-Net cannot take this input.

  Args:
    image_size: height (= width) of the input images.
    ch: base channel count.
    ch_mult: channel multiplier per resolution level; each level but the last halves the size.
    num_groups: GroupNorm groups.
    attn_resolutions: feature-map sizes that get self-attention.
  """
  num_halvings = len(ch_mult) - 1
  if image_size % 2**num_halvings:
    raise ValueError(
      f"image_size {image_size} cannot be halved {num_halvings} times by ch_mult "
      f"{tuple(ch_mult)}; use a multiple of {2**num_halvings}"
    )
  # GroupNorms see these counts, or on the up path the sum of two of them (skip concat), which
  # any divisor of both divides too.
  channels = sorted({ch, *(ch * m for m in ch_mult)})
  for c in channels:
    if num_groups < 1 or c % num_groups:
      raise ValueError(
        f"num_groups {num_groups} does not divide channel count {c} (ch {ch} x ch_mult "
        f"{tuple(ch_mult)}); use a divisor of {math.gcd(*channels)}"
      )
  sizes = [image_size // 2**i for i in range(len(ch_mult))]
  for r in attn_resolutions:
    if r not in sizes:
      raise ValueError(
        f"attn_resolutions has {r}, which is not a feature-map size for image_size "
        f"{image_size}; choose from {sizes}"
      )


class ResnetBlock(nn.Module):
  """Pre-activation ResNet block; a timestep embedding, if given, is added between its two convs."""

  out_ch: int
  dropout: float
  num_groups: int
  dtype: Any = jnp.float32  # compute dtype; the parameters are float32

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array, temb_BxE: jax.Array | None, train: bool) -> jax.Array:
    """Returns x + F(x, temb) as [B, H, W, out_ch]; temb None: a block without the embedding
    (and without its projection's parameters), as in the autoencoder."""
    h = nn.silu(group_norm(self.num_groups, self.dtype, "norm1")(x_BxHxWxC))
    h = conv3x3(self.out_ch, self.dtype, name="conv1")(h)
    if temb_BxE is not None:
      temb_proj = nn.Dense(
        self.out_ch, kernel_init=default_init(), dtype=self.dtype, name="temb_proj"
      )
      h += temb_proj(nn.silu(temb_BxE))[:, None, None, :]
    h = nn.silu(group_norm(self.num_groups, self.dtype, "norm2")(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = conv3x3(self.out_ch, self.dtype, scale=ZERO_ISH_SCALE, name="conv2")(h)
    if x_BxHxWxC.shape[-1] != self.out_ch:
      # 1x1 conv ("network in network") so the shortcut matches out_ch.
      nin_shortcut = nn.Dense(
        self.out_ch, kernel_init=default_init(), dtype=self.dtype, name="nin_shortcut"
      )
      x_BxHxWxC = nin_shortcut(x_BxHxWxC)
    return x_BxHxWxC + h


class AttnBlock(nn.Module):
  """Single-head self-attention over all spatial positions, as a residual branch."""

  num_groups: int
  dtype: Any = jnp.float32  # compute dtype; the parameters are float32

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    """Returns x + Attn(GN(x)) as [B, H, W, C]."""
    B, H, W, C = x_BxHxWxC.shape
    h_BxNxC = group_norm(self.num_groups, self.dtype, "norm")(x_BxHxWxC).reshape(B, H * W, C)
    dense = lambda name, scale=1.0: nn.Dense(
      C, kernel_init=default_init(scale), dtype=self.dtype, name=name
    )
    q_BxNxC, k_BxNxC, v_BxNxC = (dense(n)(h_BxNxC) for n in "qkv")
    h_BxNxC = single_head_attention(q_BxNxC, k_BxNxC, v_BxNxC)
    h_BxNxC = dense("proj_out", ZERO_ISH_SCALE)(h_BxNxC)
    return x_BxHxWxC + h_BxNxC.reshape(B, H, W, C)


class Downsample(nn.Module):
  """Halves height and width: stride-2 3x3 conv, or 2x2 average pooling."""

  with_conv: bool
  dtype: Any = jnp.float32  # compute dtype; the parameters are float32

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    """Returns [B, H/2, W/2, C]."""
    if self.with_conv:
      return conv3x3(x_BxHxWxC.shape[-1], self.dtype, stride=2, name="conv")(x_BxHxWxC)
    return nn.avg_pool(x_BxHxWxC, (2, 2), strides=(2, 2))


class Upsample(nn.Module):
  """Doubles height and width: nearest-neighbour, then optionally a 3x3 conv."""

  with_conv: bool
  dtype: Any = jnp.float32  # compute dtype; the parameters are float32

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    """Returns [B, 2H, 2W, C]."""
    h = jnp.repeat(jnp.repeat(x_BxHxWxC, 2, axis=1), 2, axis=2)
    return conv3x3(h.shape[-1], self.dtype, name="conv")(h) if self.with_conv else h


# The blocks rematerialised: the backward pass recomputes their activations instead of keeping
# them. `train` (argument 3, counting self) is static: it decides whether dropout runs.
_RematResnetBlock = nn.remat(ResnetBlock, static_argnums=(3,))
_RematAttnBlock = nn.remat(AttnBlock)


class UNet(nn.Module):
  """The denoiser network of DDPM; defaults are the paper's CIFAR-10 model (35.7M parameters)."""

  ch: int = 128
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.1
  num_groups: int = 32
  resamp_with_conv: bool = True
  outputs_per_channel: int = 1  # 2 with a learned variance: the prediction, then the variance
  # Compute dtype of the convolutions, dense layers and attention: "float32" or "bfloat16". The
  # parameters, GroupNorm, the attention softmax, the timestep sinusoids and the output are float32.
  dtype: str = "float32"
  # Rematerialise every ResnetBlock and AttnBlock (nn.remat): less activation memory for about one
  # more forward pass per step; the parameters and outputs are the same.
  remat: bool = False
  # > 0: class-conditional on labels 0..num_classes-1, label num_classes being the null class;
  # 0: unconditional, with the parameters of the unconditional DDPM U-Net
  num_classes: int = 0

  @nn.compact
  def __call__(
    self,
    x_BxHxWxC: jax.Array,
    t_B: jax.Array,
    train: bool = False,
    y_B: jax.Array | None = None,
  ) -> jax.Array:
    """Predicts the noise in x_t (or x0 or v, as trained; see `parametrization`).

    Args:
      x_BxHxWxC: [B, H, W, C] noisy images x_t, square.
      t_B: [B] timestep indices (int or float).
      train: turns dropout on; then apply needs a 'dropout' rng if dropout > 0.
      y_B: [B] int class labels in 0..num_classes (num_classes: the null class) for a
        conditional network; None: the null class.

    Returns:
      [B, H, W, C * outputs_per_channel] float32: the prediction (e.g. eps), then any variance
      channels.
    """
    _, H, W, C = x_BxHxWxC.shape
    if H != W:
      raise ValueError(f"UNet expects square images, got {H}x{W}; resize or crop them")
    check_unet_config(H, self.ch, self.ch_mult, self.num_groups, self.attn_resolutions)
    dtype = jnp.dtype(self.dtype)
    temb_dense = lambda name: nn.Dense(
      4 * self.ch, kernel_init=default_init(), dtype=dtype, name=name
    )

    temb = temb_dense("temb_dense0")(timestep_embedding(t_B, self.ch))
    temb_BxE = temb_dense("temb_dense1")(nn.silu(temb))
    label_BxE = label_embedding(self.num_classes, 4 * self.ch, y_B, x_BxHxWxC.shape[0])
    temb_BxE = temb_BxE + label_BxE.astype(temb_BxE.dtype)

    resnet_block = _RematResnetBlock if self.remat else ResnetBlock
    attn_block = _RematAttnBlock if self.remat else AttnBlock

    def res(h, out_ch, name):
      block = resnet_block(out_ch, self.dropout, self.num_groups, dtype, name=name)
      return block(h, temb_BxE, train)

    def attn_if_listed(h, name):
      if h.shape[1] in self.attn_resolutions:
        return attn_block(self.num_groups, dtype, name=name)(h)
      return h

    # Down path: every block's output is kept for the skip connections.
    hs = [conv3x3(self.ch, dtype, name="conv_in")(x_BxHxWxC)]
    for i, mult in enumerate(self.ch_mult):
      for j in range(self.num_res_blocks):
        h = res(hs[-1], self.ch * mult, f"down{i}_res{j}")
        hs.append(attn_if_listed(h, f"down{i}_attn{j}"))
      if i != len(self.ch_mult) - 1:
        down = Downsample(self.resamp_with_conv, dtype, name=f"down{i}_downsample")
        hs.append(down(hs[-1]))

    h = hs[-1]
    h = res(h, h.shape[-1], "mid_res0")
    h = attn_block(self.num_groups, dtype, name="mid_attn")(h)
    h = res(h, h.shape[-1], "mid_res1")

    # Up path: one block more per level than going down, to consume the downsample outputs too.
    for i, mult in reversed(list(enumerate(self.ch_mult))):
      for j in range(self.num_res_blocks + 1):
        h = res(jnp.concatenate([h, hs.pop()], axis=-1), self.ch * mult, f"up{i}_res{j}")
        h = attn_if_listed(h, f"up{i}_attn{j}")
      if i != 0:
        h = Upsample(self.resamp_with_conv, dtype, name=f"up{i}_upsample")(h)

    h = nn.silu(group_norm(self.num_groups, dtype, "norm_out")(h))
    out = conv3x3(C * self.outputs_per_channel, dtype, scale=ZERO_ISH_SCALE, name="conv_out")(h)
    # The loss, samplers and likelihoods read the prediction in float32.
    return out.astype(jnp.float32)
