"""Pieces shared by the networks (the denoisers and the noisy classifier): the timestep and class
label embeddings, the initializer, the 3x3 convolution, GroupNorm and attention."""

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# What `dtype` of the U-Net and the MLP may name: their convolutions, dense layers and attention
# run in it, with float32 parameters.
COMPUTE_DTYPES = ("float32", "bfloat16")

# The original code's stand-in for a zero init (variance_scaling rejects scale 0): layers that
# end a residual branch start near zero, so each block begins as the identity.
ZERO_ISH_SCALE = 1e-10
GN_EPSILON = 1e-6  # tf.contrib.layers.group_norm's, which the original uses


def default_init(scale: float = 1.0) -> jax.nn.initializers.Initializer:
  """The DDPM code's initializer: variance_scaling(scale, 'fan_avg', 'uniform').

  Args:
    scale: variance scale; ZERO_ISH_SCALE for layers that should start near zero.

  Returns:
    An initializer for Dense kernels [in, out] and Conv kernels [kh, kw, in, out].
  """
  return jax.nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


def timestep_embedding(t: jax.Array, dim: int) -> jax.Array:
  """Sinusoidal timestep embedding (Vaswani et al. 2017, §3.5), as in the DDPM code.

  Args:
    t: [B] timesteps, integer or float; cast to float32.
    dim: embedding size, at least 4; an odd size gets a zero last column.

  Returns:
    emb_BxD: [B, dim] float32, the sines of t * freqs followed by their cosines.
  """
  if dim < 4:
    raise ValueError(f"timestep embedding dim must be at least 4, got {dim}")
  half = dim // 2
  # Geometric frequencies from 1 down to 1/10000 (the original divides by half - 1).
  freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
  args_BxH = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
  emb_BxD = jnp.concatenate([jnp.sin(args_BxH), jnp.cos(args_BxH)], axis=-1)
  return jnp.pad(emb_BxD, ((0, 0), (0, dim % 2)))


def label_embedding(num_classes: int, dim: int, y_B: jax.Array | None, batch: int) -> jax.Array:
  """A learned embedding of class labels, added to the timestep embedding (as in ADM, Dhariwal &
  Nichol 2021); call it inside a compact module, where it creates the parameter `label_emb`.

  Args:
    num_classes: K; 0 for an unconditional network, which gets no parameter and a zero embedding.
    dim: embedding size.
    y_B: [B] int labels in 0..K, K being the null class of classifier-free guidance (Ho & Salimans
      2022); None: the null class for every example.
    batch: B.

  Returns:
    [B, dim] float32 (zeros without classes).
  """
  if num_classes == 0:
    if y_B is not None:
      raise ValueError("the network is unconditional (num_classes=0) but was given class labels")
    return jnp.zeros((batch, dim), jnp.float32)
  if y_B is None:
    y_B = jnp.full((batch,), num_classes, jnp.int32)
  if y_B.shape != (batch,) or not jnp.issubdtype(y_B.dtype, jnp.integer):
    raise ValueError(f"class labels must be int [{batch}], got {y_B.dtype} {y_B.shape}")
  # K + 1 rows: the null class is the last; Embed's default init is N(0, 1) per entry.
  return nn.Embed(num_classes + 1, dim, name="label_emb")(y_B)


class GroupNorm(nn.Module):
  """Group normalization (Wu & He 2018) over [B, ..., C], with the parameters of `nn.GroupNorm`.

  The same maths and parameters ('scale', 'bias', each [C]) as flax's GroupNorm with its default
  one-pass variance E[x^2] - E[x]^2, arranged to be cheap on CPUs: both moments come from
  per-channel sums over positions (one pass; the channel axis stays innermost, so it vectorizes),
  and the groups combine those [B, C] sums. Normalization is then one multiply-add per element
  with a [B, C] scale, and its gradient costs one more reduction pass, where the group-wise
  reductions of the textbook form take several. Statistics are float32 whatever x's dtype.
  """

  num_groups: int
  epsilon: float = GN_EPSILON

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Returns GN(x) * scale + bias, of x's shape, in float32 (the caller casts it)."""
    B, C = x.shape[0], x.shape[-1]
    G = self.num_groups
    if C % G:
      raise ValueError(f"GroupNorm: {G} groups do not divide {C} channels")
    scale_C = self.param("scale", nn.initializers.ones, (C,), jnp.float32)
    bias_C = self.param("bias", nn.initializers.zeros, (C,), jnp.float32)
    x_BxNxC = x.reshape(B, -1, C).astype(jnp.float32)
    count = x_BxNxC.shape[1] * (C // G)
    sum_BxGxK = jnp.sum(x_BxNxC, axis=1).reshape(B, G, C // G)
    sum_sq_BxGxK = jnp.sum(jnp.square(x_BxNxC), axis=1).reshape(B, G, C // G)
    mean_BxG = jnp.sum(sum_BxGxK, axis=-1) / count
    var_BxG = jnp.maximum(jnp.sum(sum_sq_BxGxK, axis=-1) / count - jnp.square(mean_BxG), 0.0)
    mean_BxC = jnp.repeat(mean_BxG, C // G, axis=1)
    mul_BxC = jnp.repeat(jax.lax.rsqrt(var_BxG + self.epsilon), C // G, axis=1) * scale_C[None, :]
    y_BxNxC = (x_BxNxC - mean_BxC[:, None, :]) * mul_BxC[:, None, :] + bias_C[None, None, :]
    return y_BxNxC.reshape(x.shape)


def group_norm(num_groups: int, dtype: Any, name: str) -> Callable[[jax.Array], jax.Array]:
  """GroupNorm in float32 (statistics, normalisation and affine map: in bfloat16, x - mean would
  lose the small deviations it rescales), its output cast to the compute dtype."""
  norm = GroupNorm(num_groups=num_groups, name=name)
  return lambda x: norm(x).astype(dtype)


def single_head_attention(q_BxNxC: jax.Array, k_BxNxC: jax.Array, v_BxNxC: jax.Array) -> jax.Array:
  """softmax(q k^T / sqrt(C)) v over the N positions, with float32 logits and softmax whatever the
  inputs' dtype; the result is in v's dtype.

  On CPUs as two einsums around a softmax over the innermost axis: XLA's CPU backend runs that
  about 1.5x faster (fwd + bwd) than jax.nn.dot_product_attention's [B, N, heads, C] arrangement,
  where the softmax gradient's reduction is strided. Elsewhere through dot_product_attention,
  JAX's entry point for fused attention kernels.
  """
  if jax.default_backend() != "cpu":
    return jax.nn.dot_product_attention(
      q_BxNxC[:, :, None], k_BxNxC[:, :, None], v_BxNxC[:, :, None]
    )[:, :, 0]
  logits_BxNxN = jnp.einsum(
    "bqc,bkc->bqk", q_BxNxC, k_BxNxC, preferred_element_type=jnp.float32
  ) * (1.0 / math.sqrt(q_BxNxC.shape[-1]))
  weights_BxNxN = jax.nn.softmax(logits_BxNxN, axis=-1).astype(v_BxNxC.dtype)
  return jnp.einsum("bqk,bkc->bqc", weights_BxNxN, v_BxNxC)


def conv3x3(
  features: int, dtype: Any, stride: int = 1, scale: float = 1.0, name: str | None = None
) -> nn.Conv:
  """A 3x3 'SAME' convolution with the DDPM initializer (`default_init(scale)`)."""
  return nn.Conv(
    features,
    (3, 3),
    strides=stride,
    padding="SAME",
    kernel_init=default_init(scale),
    dtype=dtype,
    name=name,
  )
