"""Inpainting: generate the unknown region of an image (or vector) consistently with a known one.

`mask` is 1 where the data is known and 0 where it is to be generated, broadcastable to the data.

The replacement method (Song et al. 2021, app. I; Lugmayr et al. 2022, eq. 8): after every reverse
step to time s, the known region is overwritten by a fresh draw of q(x_s | x0_known), so the chain
only generates the unknown region. It is inexact: the known region's noise is drawn without regard
to what the chain has generated, and the generated part only sees the known part through the
network's next reading.

RePaint (Lugmayr et al. 2022, Algorithm 1 and sec. 4.2) harmonises the two by resampling: after
reaching a grid point it jumps back up `jump_length` grid steps with the forward process
q(x_t | x_s) (`diffusion.q_sample_from`) and walks down again, `resample` passes over every segment
in all. With resample = 1 it is the replacement method.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import diffusion, parametrization
from diffusion_jax.samplers import SamplerSpec, grid, registry
from diffusion_jax.samplers.noise import normal
from diffusion_jax.schedules import Schedule


class Inpainted(NamedTuple):
  x: jax.Array  # [B, ...] the inpainted data (the known region equals the input)
  nfe: jax.Array  # network calls per sample, int32


def replacement_hook(sched: Schedule, known: jax.Array, mask: jax.Array, sharding=None):
  """hook(x, t, key): the known region set to a fresh x_t ~ q(x_t | known) (known itself at t = -1,
  clean data), the unknown region left as the chain made it."""

  def hook(x: jax.Array, t: jax.Array, key: jax.Array) -> jax.Array:
    alpha, sigma = diffusion.noise_level(sched, jnp.full((x.shape[0],), t), x)
    noised_known = alpha * known + sigma * normal(key, x.shape, sharding)
    return mask * noised_known + (1.0 - mask) * x

  return hook


def repaint_path(num_steps: int, jump_length: int, resample: int) -> np.ndarray:
  """The grid points RePaint visits, from 0 (the noisiest) to num_steps (clean data).

  Walking down, on arriving at a point m steps from the clean end with m = 1, 1 + j, 1 + 2j, ...
  <= num_steps - j, it jumps back up j = jump_length points, `resample` - 1 times per point; each
  segment of j steps is so walked `resample` times. Jumps never start from clean data (RePaint's
  t > 1), and j = 1 is its Algorithm 1 with U = resample.
  """
  if jump_length < 1 or resample < 1:
    raise ValueError(f"jump_length and resample must be >= 1, got {jump_length}, {resample}")
  jumps_left = {m: resample - 1 for m in range(1, num_steps - jump_length + 1, jump_length)}
  m, path = num_steps, [0]
  while m > 0:
    m -= 1
    path.append(num_steps - m)
    if jumps_left.get(m, 0) > 0:
      jumps_left[m] -= 1
      m += jump_length
      path.append(num_steps - m)
  return np.asarray(path, np.int32)


def inpaint(
  model: parametrization.Denoiser | parametrization.Network,
  sched: Schedule,
  known: jax.Array,
  mask: jax.Array,
  key: jax.Array,
  spec: SamplerSpec | None = None,
  *,
  jump_length: int = 1,
  resample: int = 1,
  sharding=None,
) -> Inpainted:
  """Fills the region where mask == 0 with any fixed-step sampler; RePaint when resample > 1.

  Args:
    model: a `parametrization.Denoiser`, or a plain eps_fn(x, t).
    sched: the schedule the model was trained with.
    known: [B, ...] data whose masked (mask == 1) part is kept.
    mask: 1 where known, 0 where generated; broadcastable to `known`.
    key: PRNG key; x_T from split(key)[0], move i of the path from fold_in(split(key)[1], i).
    spec: the sampler (default: ancestral over all T steps); `ode_adaptive` has no fixed steps.
    jump_length: RePaint's jump back, in grid steps.
    resample: passes over every segment; 1 is the replacement method.
    sharding: the batch's sharding, for the noise, when run under jit on a mesh.

  Returns:
    Inpainted(x, nfe).
  """
  spec = spec or SamplerSpec()
  denoiser = parametrization.as_denoiser(model)
  mask = jnp.broadcast_to(jnp.asarray(mask, known.dtype), known.shape)
  times = grid(spec, sched)
  sampler = registry.step_sampler(
    spec, denoiser, sched, times, registry.resolved_clip(spec, known.shape), sharding
  )
  path = repaint_path(sampler.num_steps, jump_length, resample)
  hook = replacement_hook(sched, known, mask, sharding)
  init_key, moves_key = jax.random.split(key)
  times = sampler.times

  def down(carry, src, dst, move_key):
    x, aux = sampler.step(carry, src, move_key)
    return hook(x, times[dst], jax.random.fold_in(move_key, 1)), aux

  def up(carry, src, dst, move_key):
    z = normal(move_key, known.shape, sharding)
    x = diffusion.q_sample_from(sched, carry[0], times[src], times[dst], z)
    return x, sampler.init_aux(x)  # a multistep solver restarts after a jump

  def body(carry, move):
    i, src, dst = move
    move_key = jax.random.fold_in(moves_key, i)
    return jax.lax.cond(dst > src, down, up, carry, src, dst, move_key), None

  x_T = normal(init_key, known.shape, sharding)
  moves = (jnp.arange(len(path) - 1), jnp.asarray(path[:-1]), jnp.asarray(path[1:]))
  (x, _), _ = jax.lax.scan(body, (x_T, sampler.init_aux(x_T)), moves)
  num_down = int(np.sum(np.diff(path) > 0))
  return Inpainted(x, jnp.int32(sampler.nfe_per_step * num_down))
