"""Every sampler behind one name: `SamplerSpec` says which and how, `sample` draws, `encode` maps
data to latents.

Network calls (NFE) per sample: ancestral, DDIM and DPM-Solver++ use one per step; `ode_euler`
one per step and `ode_heun` two; `ode_adaptive` reports its own count (1 + 6 per attempted step);
`sde` uses steps x (1 + corrector_steps).
"""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import continuous_time, diffusion, guidance, parametrization
from diffusion_jax.samplers import (
  ancestral,
  chain,
  ddim,
  dpm_solver,
  noise,
  probability_flow,
  reverse_sde,
  timesteps,
)
from diffusion_jax.schedules import Schedule

SAMPLERS = (
  "ancestral",
  "ddim",
  "dpm_solver++",
  "ode_euler",
  "ode_heun",
  "ode_adaptive",
  "sde",
)
DISCRETE = ("ancestral", "ddim", "dpm_solver++")  # walk timestep indices; the rest continuous time
ENCODERS = ("ddim", "ode_euler", "ode_heun", "ode_adaptive")  # deterministic, so invertible


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
  """A sampler and its options; hashable, so it can be a static argument of jit."""

  name: str = "ancestral"
  steps: int | None = None  # None: all T steps (ancestral, ddim, sde) or 100 (ode), 20 (dpm)
  # Timestep subsequence for ancestral / ddim / dpm_solver++, one of timesteps.KINDS (uniform |
  # quad | diffusers' leading | trailing | linspace); None: quad for dpm_solver++ (its 2nd-order
  # step overshoots on uniform spacing's long last gap), else uniform.
  spacing: str | None = None
  timesteps: tuple[int, ...] | None = None  # an explicit subsequence; overrides steps and spacing
  eta: float = 0.0  # ddim: 0 deterministic, 1 ancestral on the respaced chain
  variance: str | None = None  # ancestral: fixedlarge | fixedsmall | learned; None: learned for a
  # denoiser with a learned variance, else fixedlarge
  clip_x0: bool | None = None  # clip x0 to [-1, 1]; None: for images (4-D samples), not vectors
  rtol: float = 1e-5  # ode_adaptive
  atol: float = 1e-5  # ode_adaptive
  corrector_steps: int = 0  # sde: Langevin corrector steps per predictor step
  snr: float = 0.16  # sde: corrector signal-to-noise ratio

  def __post_init__(self):
    if self.name not in SAMPLERS:
      raise ValueError(f"unknown sampler {self.name!r}; choose one of {', '.join(SAMPLERS)}")
    if self.steps is not None and self.steps < 1:
      raise ValueError(f"steps must be >= 1, got {self.steps}")
    if self.spacing is not None and self.spacing not in timesteps.KINDS:
      raise ValueError(
        f"unknown spacing {self.spacing!r}; choose one of {', '.join(timesteps.KINDS)}"
      )
    if not 0.0 <= self.eta <= 1.0:
      raise ValueError(f"eta must lie in [0, 1], got {self.eta}")
    if self.variance is not None and self.variance not in ancestral.VARIANCES:
      raise ValueError(
        f"unknown variance {self.variance!r}; choose one of {', '.join(ancestral.VARIANCES)}"
      )
    if self.corrector_steps < 0 or self.snr <= 0 or self.rtol <= 0 or self.atol <= 0:
      raise ValueError("corrector_steps must be >= 0 and snr, rtol, atol > 0")
    if self.timesteps is not None and self.name not in DISCRETE:
      raise ValueError(f"{self.name} runs in continuous time; timesteps are for {DISCRETE}")


def default_steps(spec: SamplerSpec, num_timesteps: int) -> int:
  """The sampler's steps: spec.steps, else all T (ancestral, ddim, sde), 20 (dpm_solver++) or 100
  (the ODE)."""
  if spec.timesteps is not None:
    return len(spec.timesteps)
  if spec.steps:
    steps = spec.steps
  elif spec.name == "dpm_solver++":
    steps = 20
  elif spec.name.startswith("ode_"):
    steps = 100
  else:
    steps = num_timesteps
  if spec.name in DISCRETE and steps > num_timesteps:
    raise ValueError(f"{spec.name} takes at most T = {num_timesteps} steps, got {steps}")
  return steps


def subsequence(spec: SamplerSpec, num_timesteps: int) -> tuple[int, ...]:
  """tau_1 < ... < tau_S that a discrete sampler walks."""
  if spec.timesteps is not None:
    return timesteps.check_timesteps(spec.timesteps, num_timesteps)
  spacing = spec.spacing or ("quad" if spec.name == "dpm_solver++" else "uniform")
  steps = default_steps(spec, num_timesteps)
  return timesteps.timestep_subsequence(num_timesteps, steps, spacing)


def grid(spec: SamplerSpec, sched: Schedule) -> np.ndarray:
  """The sampler's time grid, noisiest first, on the host: int32 (tau_S, ..., tau_1, -1) for the
  discrete samplers, float32 t(s) for s uniform from 1 to 1/T for the continuous ones."""
  if spec.name in DISCRETE:
    return timesteps.discrete_grid(subsequence(spec, sched.num_timesteps))
  return timesteps.continuous_grid(sched.num_timesteps, default_steps(spec, sched.num_timesteps))


def resolved_clip(spec: SamplerSpec, shape: tuple[int, ...]) -> bool:
  """spec.clip_x0, or by default whether the samples are images [B, H, W, C] (data in [-1, 1])."""
  return len(shape) == 4 if spec.clip_x0 is None else spec.clip_x0


def _variance(spec: SamplerSpec, denoiser: parametrization.Denoiser) -> str:
  if spec.variance is not None:
    return spec.variance
  return "learned" if denoiser.learned_variance else "fixedlarge"


def _eps_guided(
  spec: SamplerSpec,
  denoiser: parametrization.Denoiser,
  sched: Schedule,
  gradient: guidance.Gradient | None,
) -> parametrization.Denoiser:
  """The denoiser with classifier guidance's eps shift (Algorithm 2), but for `ancestral`, which
  moves its mean instead (Algorithm 1)."""
  if gradient is None or spec.name == "ancestral":
    return denoiser
  return guidance.eps_guided(denoiser, sched, gradient)


def step_sampler(
  spec: SamplerSpec,
  denoiser: parametrization.Denoiser,
  sched: Schedule,
  times: jax.Array,
  clip_x0: bool,
  sharding=None,
  guidance_gradient: guidance.Gradient | None = None,
) -> chain.StepSampler:
  """The steps of a fixed-step sampler on `times` (any grid of its kind, either direction for the
  deterministic ones), with classifier guidance towards g = guidance_gradient when given."""
  times = jnp.asarray(times)
  denoiser = _eps_guided(spec, denoiser, sched, guidance_gradient)
  if spec.name == "ancestral":
    return ancestral.make_sampler(
      denoiser,
      sched,
      times,
      variance=_variance(spec, denoiser),
      clip_x0=clip_x0,
      sharding=sharding,
      mean_gradient=guidance_gradient,
    )
  if spec.name == "ddim":
    return ddim.make_sampler(
      denoiser, sched, times, eta=spec.eta, clip_x0=clip_x0, sharding=sharding
    )
  if spec.name == "dpm_solver++":
    return dpm_solver.make_sampler(denoiser, sched, times, clip_x0=clip_x0)
  if spec.name in ("ode_euler", "ode_heun"):
    method = spec.name.removeprefix("ode_")
    return probability_flow.make_sampler(denoiser, sched, times, method=method, clip_x0=clip_x0)
  if spec.name == "sde":
    return reverse_sde.make_sampler(
      denoiser,
      sched,
      times,
      corrector_steps=spec.corrector_steps,
      snr=spec.snr,
      clip_x0=clip_x0,
      sharding=sharding,
    )
  raise ValueError(f"{spec.name} chooses its own steps; it has no step function")


class Samples(NamedTuple):
  x: jax.Array  # [B, ...] the samples
  nfe: jax.Array  # network calls per sample, int32
  trajectory: jax.Array | None  # [F, B, ...] when recorded


def start_step(times: jax.Array, num_timesteps: int, strength: float) -> int:
  """The first grid step of a partial chain: the first grid time s = (t + 1) / T <= strength."""
  if not 0.0 < strength <= 1.0:
    raise ValueError(f"strength must lie in (0, 1], got {strength}")
  s = (np.asarray(times, np.float64)[:-1] + 1.0) / num_timesteps
  later = np.nonzero(s <= strength + 1e-6)[0]
  if later.size == 0:
    raise ValueError(f"strength {strength} lies below the grid's last noise level {s[-1]:.4g}")
  return int(later[0])


def sample(
  model: parametrization.Denoiser | parametrization.Network,
  sched: Schedule,
  shape: tuple[int, ...],
  key: jax.Array,
  spec: SamplerSpec | None = None,
  *,
  x_T: jax.Array | None = None,
  image: jax.Array | None = None,
  strength: float = 1.0,
  hook: chain.Hook | None = None,
  trajectory_every: int = 0,
  sharding=None,
  guidance_gradient: guidance.Gradient | None = None,
) -> Samples:
  """Draws samples [*shape] with the sampler `spec` names (default: ancestral, all T steps).

  The start: x_T ~ N(0, I) from split(key)[0], or the given x_T, or `image` noised by q(x_t | x0)
  to the grid's first time at or below `strength` (a fraction of the chain: SDEdit's t0 / T),
  the chain then running from there. The steps draw from split(key)[1] (see `chain`).

  Args:
    model: a `parametrization.Denoiser`, or a plain eps_fn(x, t).
    sched: the schedule the model was trained with (may be traced under jit).
    shape: [B, ...] of the samples.
    key: PRNG key.
    spec: the sampler.
    x_T: optional start state [B, ...] at the grid's first time.
    image: optional image [B, ...] to start part-way down the chain from.
    strength: with `image`, how far up the chain to start, in (0, 1].
    hook: optional hook(x, t, key) -> x after every step (fixed-step samplers).
    trajectory_every: if > 0, also return the start state and the state after every step whose
      index from the clean end is a multiple of it (fixed-step samplers).
    sharding: the batch's sharding, for the noise, when run under jit on a mesh.
    guidance_gradient: classifier guidance's g = s grad log p_t(y | x_t)
      (`guidance.classifier_gradient`): `ancestral` adds sigma^2 g to each step's mean (Dhariwal &
      Nichol 2021, Algorithm 1), the other samplers shift eps by -sigma_t g (Algorithm 2).

  Returns:
    Samples(x, nfe, trajectory or None).
  """
  spec = spec or SamplerSpec()
  denoiser = parametrization.as_denoiser(model)
  if x_T is not None and image is not None:
    raise ValueError("give x_T or an image to start from, not both")
  clip_x0 = resolved_clip(spec, shape)
  init_key, steps_key = jax.random.split(key)
  start_noise = noise.normal(init_key, tuple(shape), sharding)
  if spec.name == "ode_adaptive":
    guided = _eps_guided(spec, denoiser, sched, guidance_gradient)
    return _sample_adaptive(
      spec, guided, sched, start_noise, x_T, image, strength, clip_x0, hook, trajectory_every
    )
  times = grid(spec, sched)
  k0 = 0
  if image is not None:
    k0 = start_step(times, sched.num_timesteps, strength)
    x_start = _noised(sched, image, jnp.asarray(times[k0]), start_noise)
  else:
    x_start = start_noise if x_T is None else x_T
  sampler = step_sampler(spec, denoiser, sched, times, clip_x0, sharding, guidance_gradient)
  result = chain.run_chain(
    sampler, x_start, steps_key, start_step=k0, hook=hook, trajectory_every=trajectory_every
  )
  return Samples(*result)


def _noised(sched: Schedule, image: jax.Array, t: jax.Array, z: jax.Array) -> jax.Array:
  """x_t = alpha_t x0 + sigma_t z at one (int or float) time index t."""
  alpha, sigma = diffusion.noise_level(sched, jnp.full((image.shape[0],), t), image)
  return alpha * image + sigma * z


def _sample_adaptive(
  spec, denoiser, sched, start_noise, x_T, image, strength, clip_x0, hook, every
):
  if hook is not None or every:
    raise ValueError(
      "ode_adaptive chooses its own steps: hooks and trajectories need a fixed-step sampler"
    )
  t_start = jnp.float32(sched.num_timesteps - 1)
  x = start_noise if x_T is None else x_T
  if image is not None:
    if not 0.0 < strength <= 1.0:
      raise ValueError(f"strength must lie in (0, 1], got {strength}")
    t_start = jnp.float32(strength * sched.num_timesteps - 1)
    x = _noised(sched, image, t_start, start_noise)
  t_end = continuous_time.index_of(sched, continuous_time.final_time(sched))
  x, nfe = probability_flow.solve_adaptive(
    denoiser, sched, x, t_start, t_end, rtol=spec.rtol, atol=spec.atol, clip_x0=clip_x0
  )
  return Samples(x, nfe, None)


def encode(
  model: parametrization.Denoiser | parametrization.Network,
  sched: Schedule,
  x0: jax.Array,
  spec: SamplerSpec,
) -> tuple[jax.Array, jax.Array]:
  """Maps data to its latent x_T with a deterministic sampler run upwards (`ENCODERS`); decoding
  that x_T with `sample(..., x_T=...)` and the same spec returns x0 up to the discretization.

  DDIM (eta = 0) walks its grid from clean data up to tau_S; the ODE samplers integrate the
  probability-flow ODE from s_min (the data's time, default 1/T) up to s = 1. Nothing is clipped.

  Returns:
    (x_T [B, ...], NFE as int32).
  """
  denoiser = parametrization.as_denoiser(model)
  if spec.name not in ENCODERS or (spec.name == "ddim" and spec.eta != 0.0):
    raise ValueError(
      f"{spec.name} (eta={spec.eta}) is not deterministic; encode with ddim (eta 0) or an ODE"
    )
  times = grid(spec, sched)[::-1]
  if spec.name == "ode_adaptive":
    return probability_flow.solve_adaptive(
      denoiser, sched, x0, times[0], times[-1], rtol=spec.rtol, atol=spec.atol
    )
  sampler = step_sampler(spec, denoiser, sched, times, clip_x0=False)
  x_T, nfe, _ = chain.run_chain(sampler, x0, jax.random.key(0))
  return x_T, nfe


def spec_from_config(sampling_config, **overrides) -> SamplerSpec:
  """The SamplerSpec a config's `sampling` group describes (its `sampler` field is the name), with
  overrides that are not None taking precedence; steps 0, spacing "" and variance "" mean the
  sampler's defaults."""
  fields = {f.name for f in dataclasses.fields(SamplerSpec)}
  values = {k: v for k, v in sampling_config.items() if k in fields}
  if "sampler" in sampling_config:
    values["name"] = sampling_config["sampler"]
  values.update({k: v for k, v in overrides.items() if v is not None})
  for name in ("steps", "spacing", "variance"):  # 0 / "" in a config: the sampler's default
    values[name] = values.get(name) or None
  return SamplerSpec(**values)
