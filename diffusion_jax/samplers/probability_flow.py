"""The probability-flow ODE (Song et al. 2021, eq. 13) as a sampler and as a deterministic encoder.

The ODE runs between s = 1 and s_min (default 1/T, the knot of the first discrete step, t = 0) on
a grid uniform in s, integrated in lambda = log alpha-bar(s), where dx/dlambda = (x + score) / 2
has no jumps at the schedule's knots (`continuous_time.pf_ode_drift_log_alpha_bar`); a step from
s_i to s_{i+1} spans exactly int beta ds. Fixed steps (`euler`, `heun`) are steps of the common
driver; `adaptive` (Dormand-Prince 5(4), `ode_solvers.adaptive`) picks its own steps in one
while_loop. Run upwards from s_min to 1 the same ODE encodes data into its latent x(1).
"""

import jax
import jax.numpy as jnp

from diffusion_jax import continuous_time, ode_solvers, parametrization
from diffusion_jax.samplers.chain import StepSampler
from diffusion_jax.schedules import Schedule

FIXED_STEP_METHODS = ("euler", "heun")


def eps_fn(
  denoiser: parametrization.Denoiser, sched: Schedule, clip_x0: bool
) -> continuous_time.EpsFn:
  """The denoiser as eps_fn(x, t), reading eps from the clipped x0 when clip_x0 is set."""

  def fn(x, t):
    denoised = denoiser(sched, x, t)
    return (denoised.clip_x0() if clip_x0 else denoised).eps

  return fn


def drift(
  denoiser: parametrization.Denoiser, sched: Schedule, clip_x0: bool = False
) -> ode_solvers.Drift:
  """dx/dlambda(x, lambda) of the probability-flow ODE for this denoiser."""
  fn = eps_fn(denoiser, sched, clip_x0)
  return lambda x, lam: continuous_time.pf_ode_drift_log_alpha_bar(fn, sched, x, lam)


def make_sampler(
  denoiser: parametrization.Denoiser,
  sched: Schedule,
  times: jax.Array,
  *,
  method: str = "heun",
  clip_x0: bool = False,
) -> StepSampler:
  """Fixed steps of the ODE along the float32 grid `times` (see `timesteps.continuous_grid`);
  decreasing times sample, increasing ones encode.

  Args:
    denoiser: the model; it is read at fractional timesteps.
    sched: the schedule it was trained with.
    times: t(s) = s T - 1 at the grid's times.
    method: `euler` (1 network call a step) or `heun` (2).
    clip_x0: clip x0 to [-1, 1] inside the drift (for data in [-1, 1]).
  """
  if method not in FIXED_STEP_METHODS:
    raise ValueError(f"unknown method {method!r}; choose one of {', '.join(FIXED_STEP_METHODS)}")
  f = drift(denoiser, sched, clip_x0)
  lam = continuous_time.log_alpha_bar(sched, continuous_time.time_of(sched, times))
  one_step = ode_solvers.euler_step if method == "euler" else ode_solvers.heun_step

  def step(carry, k, key):
    x, aux = carry
    return one_step(f, x, lam[k], lam[k + 1]), aux

  return StepSampler(times=times, step=step, nfe_per_step=1 if method == "euler" else 2)


def solve_adaptive(
  denoiser: parametrization.Denoiser,
  sched: Schedule,
  x: jax.Array,
  t_start: float,
  t_end: float,
  *,
  rtol: float = 1e-5,
  atol: float = 1e-5,
  clip_x0: bool = False,
) -> tuple[jax.Array, jax.Array]:
  """Integrates the ODE from time index t_start to t_end with Dormand-Prince 5(4).

  Returns:
    (x at t_end, NFE as int32).
  """
  lam_start, lam_end = (
    continuous_time.log_alpha_bar(sched, continuous_time.time_of(sched, jnp.float32(t)))
    for t in (t_start, t_end)
  )
  f = drift(denoiser, sched, clip_x0)
  return ode_solvers.adaptive(f, x, lam_start, lam_end, rtol=rtol, atol=atol)
