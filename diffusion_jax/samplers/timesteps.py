"""The time grids samplers walk: subsequences of the T timestep indices, and continuous-time grids.

Discrete samplers walk a subsequence tau_1 < ... < tau_S of 0..T-1 (DDIM, Song et al. 2021, sec.
4.2; "respacing", Nichol & Dhariwal 2021, sec. 4) from tau_S down to clean data; their grid is
(tau_S, ..., tau_1, -1), -1 standing for clean data. The forward process restricted to the
subsequence is itself a DDPM forward process, beta'_i = 1 - abar_{tau_i} / abar_{tau_{i-1}}, whose
steps `diffusion.step_posterior` gives for any two indices. Indices follow `schedules`: tau_i is the
paper's step tau_i + 1. Subsequences are tuples of Python ints.

Continuous-time samplers walk a float32 grid of t(s) = s T - 1 for s uniform from 1 down to s_min
(default 1/T, the first discrete step, t = 0); see `continuous_time`.
"""

from collections.abc import Sequence

import numpy as np

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


def discrete_grid(timesteps: Sequence[int]) -> np.ndarray:
  """The grid (tau_S, ..., tau_1, -1) of a subsequence, int32 [S + 1]; -1 is clean data.

  Grids are host arrays, known when a sampler is built (also under jit), e.g. to find where a
  partial chain starts.
  """
  return np.asarray((*reversed(timesteps), -1), np.int32)


def continuous_grid(num_timesteps: int, num_steps: int, s_min: float | None = None) -> np.ndarray:
  """t(s) = s T - 1 at num_steps + 1 times s uniform from 1 down to s_min (default 1/T), float32."""
  s_end = 1.0 / num_timesteps if s_min is None else s_min
  s = np.linspace(1.0, s_end, num_steps + 1, dtype=np.float64)
  return (s * num_timesteps - 1.0).astype(np.float32)
