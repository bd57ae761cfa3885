"""Interpolation between two data points through the diffusion model.

`stochastic` is the DDPM paper's (sec. 4.3, Fig. 8): encode both with q(x_t | x0) at t = strength T
with shared noise, interpolate linearly, and decode with the reverse process. With shared noise the
linear blend of the two x_t is the same blend of the inputs noised once, so every frame is SDEdit of
(1 - lam) x_a + lam x_b from one key: the same start noise and the same reverse noise for all lam.

`deterministic` encodes both to x_T with a deterministic sampler (DDIM, eta = 0, or the
probability-flow ODE; `samplers.encode`), interpolates spherically (the latents are nearly
Gaussian, so their norms are kept; Song et al. 2021, sec. 5.3), and decodes with the same sampler.
"""

import jax
import jax.numpy as jnp

from diffusion_jax import parametrization
from diffusion_jax.samplers import SamplerSpec, encode, sample
from diffusion_jax.schedules import Schedule


def slerp(a: jax.Array, b: jax.Array, lam: jax.Array) -> jax.Array:
  """Spherical interpolation of each example of a and b [B, ...] at fraction lam (a scalar).

  sin((1 - lam) theta) / sin(theta) a + sin(lam theta) / sin(theta) b, theta the angle between the
  flattened examples; linear where they are parallel (theta ~ 0).
  """
  a_flat, b_flat = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
  cos = jnp.sum(a_flat * b_flat, 1) / (
    jnp.linalg.norm(a_flat, axis=1) * jnp.linalg.norm(b_flat, axis=1)
  )
  theta = jnp.arccos(jnp.clip(cos, -1.0, 1.0))
  sin = jnp.sin(theta)
  parallel = sin < 1e-6
  safe_sin = jnp.where(parallel, 1.0, sin)
  w_a = jnp.where(parallel, 1.0 - lam, jnp.sin((1.0 - lam) * theta) / safe_sin)
  w_b = jnp.where(parallel, lam, jnp.sin(lam * theta) / safe_sin)
  shape = (a.shape[0],) + (1,) * (a.ndim - 1)
  return w_a.reshape(shape) * a + w_b.reshape(shape) * b


def fractions(num_frames: int) -> jax.Array:
  """lam = 0, 1 / (F - 1), ..., 1 for F >= 2 frames."""
  if num_frames < 2:
    raise ValueError(f"an interpolation needs at least 2 frames, got {num_frames}")
  return jnp.linspace(0.0, 1.0, num_frames)


def stochastic(
  model: parametrization.Denoiser | parametrization.Network,
  sched: Schedule,
  x_a: jax.Array,
  x_b: jax.Array,
  key: jax.Array,
  spec: SamplerSpec | None = None,
  *,
  num_frames: int = 8,
  strength: float = 0.5,
) -> jax.Array:
  """The paper's interpolation: frames [F, B, ...] from x_a (lam = 0) to x_b (lam = 1) [B, ...].

  Args:
    model: a `parametrization.Denoiser`, or a plain eps_fn(x, t).
    sched: the schedule the model was trained with.
    x_a, x_b: [B, ...] the pairs' two ends.
    key: PRNG key, shared by every frame.
    spec: the sampler (default: ancestral, as in the paper).
    num_frames: F >= 2.
    strength: t / T of the encoding (the paper's t = 500 of 1000 is 0.5).
  """

  def frame(lam):
    blend = (1.0 - lam) * x_a + lam * x_b
    return sample(model, sched, x_a.shape, key, spec, image=blend, strength=strength).x

  return jax.lax.map(frame, fractions(num_frames))


def deterministic(
  model: parametrization.Denoiser | parametrization.Network,
  sched: Schedule,
  x_a: jax.Array,
  x_b: jax.Array,
  spec: SamplerSpec,
  *,
  num_frames: int = 8,
) -> jax.Array:
  """Latent-space interpolation: frames [F, B, ...] decoded from slerp(encode(x_a), encode(x_b)).

  Args:
    model: a `parametrization.Denoiser`, or a plain eps_fn(x, t).
    sched: the schedule the model was trained with.
    x_a, x_b: [B, ...] the pairs' two ends.
    spec: a deterministic sampler (`samplers.ENCODERS`; DDIM with eta = 0).
    num_frames: F >= 2.
  """
  latents, _ = encode(model, sched, jnp.concatenate([x_a, x_b]), spec)
  z_a, z_b = jnp.split(latents, 2)
  key = jax.random.key(0)  # unused by deterministic steps

  def frame(lam):
    return sample(model, sched, x_a.shape, key, spec, x_T=slerp(z_a, z_b, lam)).x

  return jax.lax.map(frame, fractions(num_frames))
