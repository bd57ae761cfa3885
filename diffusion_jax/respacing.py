"""Sampling on a subsequence tau_1 < ... < tau_S of the T timestep indices (DDIM, Song et al. 2021,
sec. 4.2; "respacing", Nichol & Dhariwal 2021, sec. 4).

Indices follow `schedules`: tau_i in 0..T-1 is the paper's step tau_i + 1. Timestep subsequences
are tuples of Python ints, so they can be static arguments under `jax.jit`.

The forward process restricted to tau_1..tau_S is itself a DDPM forward process with
abar'_i = abar_{tau_i}, i.e. beta'_i = 1 - abar_{tau_i} / abar_{tau_{i-1}} (abar_{tau_0} = 1).
`respace` builds that chain's `Schedule` and `respaced_eps_fn` lets a network trained on the full
chain run on it, so ancestral sampling on a subsequence needs no new sampler:

  sched_S, taus = respace(sched, timestep_subsequence(T, S))
  x0 = sampling.sample(respaced_eps_fn(eps_fn, taus), sched_S, shape, key, variance=...)

`ddim` and `dpm_solver` take the subsequence itself and read abar_{tau_i} from the original
schedule (`step_pairs`), so they also run with a traced schedule.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import schedules
from diffusion_jax.sampling import EpsFn

KINDS = ("uniform", "quad", "leading", "trailing", "linspace")


def timestep_subsequence(
  num_timesteps: int, num_steps: int, kind: str = "uniform"
) -> tuple[int, ...]:
  """S = num_steps indices tau_1 < ... < tau_S of 0..T-1.

  `uniform` and `quad` span the chain, tau_1 = 0 and tau_S = T - 1 (S = 1 gives (T - 1,)).
  `uniform`: tau_i = floor((i - 1) (T - 1) / (S - 1) + 1/2), evenly spaced with a gap of
  (T - 1) / (S - 1) rounded half up. `quad`: tau_i = max(floor(c (i - 1)^2 + 1/2), i - 1) with
  c = (T - 1) / (S - 1)^2, the DDIM paper's quadratic spacing (dense at low noise); the DDIM code
  stops at 0.8 T, this one spans the whole chain so that x_T ~ N(0, I) is right, and the `i - 1`
  floor keeps the small early gaps >= 1.

  `leading`, `trailing` and `linspace` are diffusers' `timestep_spacing` options (with
  steps_offset 0, as in the released DDPM models), so that its schedulers' steps can be
  reproduced exactly. `leading` (diffusers' default): tau_i = (i - 1) floor(T / S), from 0 to
  (S - 1) floor(T / S) <= T - 1, so sampling starts below the chain's last noise level (S = 1
  gives (0,)). `trailing`: the values of
  np.arange(T, 0, -T / S), i.e. T - k T / S for k = 0..S-1 in floating point, rounded half to
  even, minus 1; it ends at T - 1 (np.arange gives one more value, which rounds to index -1, for
  some T and S such as T = 15, S = 13; diffusers then steps to it, we keep the S intended ones).
  `linspace`: np.linspace(0, T - 1, S) rounded half to even, like `uniform` but for ties.

  Args:
    num_timesteps: T.
    num_steps: S, 1 <= S <= T.
    kind: one of KINDS.

  Returns:
    tau_1..tau_S as a tuple of ints.
  """
  if not 1 <= num_steps <= num_timesteps:
    raise ValueError(f"num_steps must be in [1, {num_timesteps}], got {num_steps}")
  if kind not in KINDS:
    raise ValueError(f"unknown spacing {kind!r}; choose one of {', '.join(KINDS)}")
  if kind == "leading":
    taus = np.arange(num_steps) * (num_timesteps // num_steps)
  elif kind == "trailing":
    taus = np.round(np.arange(num_timesteps, 0, -num_timesteps / num_steps))[:num_steps][::-1] - 1
  elif kind == "linspace":
    taus = np.round(np.linspace(0, num_timesteps - 1, num_steps))
  elif num_steps == 1:
    taus = np.array([num_timesteps - 1])
  else:
    i = np.arange(num_steps, dtype=np.float64)  # i - 1 for i = 1..S
    if kind == "uniform":
      taus = np.floor(i * (num_timesteps - 1) / (num_steps - 1) + 0.5)
    else:
      taus = np.maximum(np.floor((num_timesteps - 1) * (i / (num_steps - 1)) ** 2 + 0.5), i)
  return check_timesteps(taus.astype(np.int64), num_timesteps)


def check_timesteps(timesteps: Sequence[int], num_timesteps: int) -> tuple[int, ...]:
  """Validates a strictly increasing subsequence of 0..T-1.

  Args:
    timesteps: tau_1..tau_S as a list, tuple or int array [S].
    num_timesteps: T.

  Returns:
    the subsequence as a tuple of S ints.
  """
  taus = np.asarray(timesteps)
  if taus.ndim != 1 or taus.size == 0 or not np.issubdtype(taus.dtype, np.integer):
    raise ValueError(f"timesteps must be a non-empty 1-D sequence of ints, got {timesteps!r}")
  if taus[0] < 0 or taus[-1] >= num_timesteps or np.any(np.diff(taus) <= 0):
    raise ValueError(f"timesteps must increase strictly within [0, {num_timesteps - 1}]")
  return tuple(int(t) for t in taus)


def respace(
  sched: schedules.Schedule, timesteps: Sequence[int]
) -> tuple[schedules.Schedule, tuple[int, ...]]:
  """The schedule of the chain on tau_1..tau_S, built by `make_schedule` from its betas.

  beta'_i = 1 - abar_{tau_i} / abar_{tau_{i-1}} = 1 - prod_{j = tau_{i-1}+1}^{tau_i} (1 - beta_j)
  (0-based indices, tau_0 = -1), computed in float64 from the float32 betas of `sched`. With every
  index the betas come back exactly and the derived coefficients to about an ulp (the float64
  betas behind `sched` are lost to its float32 rounding). `sched` must be concrete (not traced).

  Returns:
    (schedule with S steps, tau_1..tau_S as a tuple of ints).
  """
  taus = check_timesteps(timesteps, sched.num_timesteps)
  with np.errstate(divide="ignore"):  # `jsd` ends at beta_T = 1: log(0) = -inf gives beta' = 1
    log_alphas = np.log1p(-np.asarray(sched.betas, np.float64))  # log(1 - beta_j), [T]
  starts = np.array((-1,) + taus[:-1]) + 1  # tau_{i-1} + 1
  log_gaps = np.add.reduceat(log_alphas[: taus[-1] + 1], starts)  # sum over each gap, [S]
  return schedules.make_schedule(-np.expm1(log_gaps)), taus


def respaced_eps_fn(eps_fn: EpsFn, timesteps: Sequence[int]) -> EpsFn:
  """Runs `eps_fn`, trained on the full chain, on the respaced one.

  Returns:
    eps_fn'(x [B, ...], i [B]) = eps_fn(x, tau_i), i in 0..S-1 the respaced chain's index.
  """
  taus_S = jnp.asarray(timesteps, jnp.int32)
  return lambda x, i_B: eps_fn(x, taus_S[i_B])


def step_pairs(
  coef_T: jax.Array, timesteps: Sequence[int], clean: float
) -> tuple[jax.Array, jax.Array]:
  """A coefficient at the start and the end of each step tau_i -> tau_{i-1} of a subsequence.

  Args:
    coef_T: a per-timestep coefficient of a Schedule, [T].
    timesteps: tau_1..tau_S.
    clean: the coefficient's value at abar = 1, the end of the last step (tau_1 -> x0).

  Returns:
    (coef[tau_i], coef[tau_{i-1}]), each [S], the latter `clean` at i = 1.
  """
  at_S = coef_T[jnp.asarray(timesteps, jnp.int32)]
  return at_S, jnp.concatenate([jnp.full((1,), clean, at_S.dtype), at_S[:-1]])
