"""Every sampler behind one name: `SamplerSpec` says which and how, `run` draws and counts NFE.

Network calls (NFE) per sample: ancestral, DDIM and DPM-Solver++ use one per step; `ode_euler`
one per step and `ode_heun` two; `ode_adaptive` reports its own count (1 + 6 per attempted step);
`sde` uses steps x (1 + corrector_steps).
"""

import dataclasses

import jax
import jax.numpy as jnp

from diffusion_jax import ddim, dpm_solver, ode_samplers, respacing, sampling, sde_samplers
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


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
  """A sampler and its options; hashable, so it can be a static argument of jit."""

  name: str = "ancestral"
  steps: int | None = None  # None: all T steps (ancestral, ddim, sde) or 100 (ode), 20 (dpm)
  # Timestep subsequence for ancestral / ddim / dpm_solver++, one of respacing.KINDS (uniform |
  # quad | diffusers' leading | trailing | linspace); None: quad for dpm_solver++ (its 2nd-order
  # step overshoots on uniform spacing's long last gap), else uniform.
  spacing: str | None = None
  eta: float = 0.0  # ddim: 0 deterministic, 1 ancestral on the respaced chain
  variance: str = "fixedlarge"  # ancestral
  clip_x0: bool = True  # ancestral, ddim, dpm_solver++
  rtol: float = 1e-5  # ode_adaptive
  atol: float = 1e-5  # ode_adaptive
  corrector_steps: int = 0  # sde: Langevin corrector steps per predictor step
  snr: float = 0.16  # sde: corrector signal-to-noise ratio

  def __post_init__(self):
    if self.name not in SAMPLERS:
      raise ValueError(f"unknown sampler {self.name!r}; choose one of {', '.join(SAMPLERS)}")
    if self.steps is not None and self.steps < 1:
      raise ValueError(f"steps must be >= 1, got {self.steps}")
    if not 0.0 <= self.eta <= 1.0:
      raise ValueError(f"eta must lie in [0, 1], got {self.eta}")


def _steps(spec: SamplerSpec, num_timesteps: int, default: int) -> int:
  steps = spec.steps or default
  if spec.name in ("ancestral", "ddim", "dpm_solver++") and steps > num_timesteps:
    raise ValueError(f"{spec.name} takes at most T = {num_timesteps} steps, got {steps}")
  return steps


def run(
  spec: SamplerSpec,
  eps_fn: sampling.EpsFn,
  sched: Schedule,
  shape: tuple[int, ...],
  key: jax.Array,
  *,
  sharding=None,
) -> tuple[jax.Array, jax.Array]:
  """Draws samples [*shape] with the sampler `spec` names.

  Returns:
    (x0, nfe): the samples, and the network evaluations each one took (an int32 scalar).
  """
  T = sched.num_timesteps
  if spec.name in ("ancestral", "ddim", "dpm_solver++"):
    default = 20 if spec.name == "dpm_solver++" else T
    steps = _steps(spec, T, default)
    spacing = spec.spacing or ("quad" if spec.name == "dpm_solver++" else "uniform")
    timesteps = respacing.timestep_subsequence(T, steps, spacing)
    nfe = jnp.int32(steps)
    if spec.name == "ancestral":
      respaced, timesteps = respacing.respace(sched, timesteps)
      x0 = sampling.sample(
        respacing.respaced_eps_fn(eps_fn, timesteps),
        respaced,
        shape,
        key,
        variance=spec.variance,
        clip_x0=spec.clip_x0,
        sharding=sharding,
      )
    elif spec.name == "ddim":
      x0 = ddim.ddim_sample(
        eps_fn,
        sched,
        shape,
        key,
        timesteps=timesteps,
        eta=spec.eta,
        clip_x0=spec.clip_x0,
        sharding=sharding,
      )
    else:
      x0 = dpm_solver.dpm_solver_sample(
        eps_fn, sched, shape, key, timesteps=timesteps, clip_x0=spec.clip_x0, sharding=sharding
      )
    return x0, nfe
  if spec.name.startswith("ode_"):
    method = spec.name.removeprefix("ode_")
    return ode_samplers.sample(
      eps_fn,
      sched,
      shape,
      key,
      method=method,
      num_steps=spec.steps or 100,
      rtol=spec.rtol,
      atol=spec.atol,
    )
  steps = spec.steps or T
  x0 = sde_samplers.sample(
    eps_fn, sched, shape, key, num_steps=steps, corrector_steps=spec.corrector_steps, snr=spec.snr
  )
  return x0, jnp.int32(steps * (1 + spec.corrector_steps))


def spec_from_config(sampling_config, **overrides) -> SamplerSpec:
  """The SamplerSpec a config's `sampling` group describes (its `sampler` field is the name), with
  overrides that are not None taking precedence; steps 0 means the sampler's default."""
  fields = {f.name for f in dataclasses.fields(SamplerSpec)}
  values = {k: v for k, v in sampling_config.items() if k in fields}
  if "sampler" in sampling_config:
    values["name"] = sampling_config["sampler"]
  values.update({k: v for k, v in overrides.items() if v is not None})
  for name in ("steps", "spacing"):  # 0 / "" in a config: the sampler's default
    values[name] = values.get(name) or None
  return SamplerSpec(**values)
