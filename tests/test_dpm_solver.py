"""DPM-Solver++(2M) against exact Gaussian-mixture oracles, DDIM and a fine-step reference.

Schedule and mixtures are those of `test_ddim` (linear, T = 1000), with quad-spaced timesteps:
with uniform spacing the step into tau_1 = 0 is several times longer in lambda than the one
before, and the second-order extrapolation overshoots (component stds up to 70% / 21% too wide at
10 / 25 steps, measured).
"""

import functools

import jax
import numpy as np
import pytest

from diffusion_jax import samplers
from diffusion_jax.samplers import timesteps as timestep_grids
from tests.test_ddim import EPS, MIXES, SCHED, N, T, assert_reproduces_mixture, jit_ddim


def dpm_sample(eps_fn, sched, shape, key, *, timesteps, clip_x0, x_T=None):
  spec = samplers.SamplerSpec("dpm_solver++", timesteps=timesteps, clip_x0=clip_x0)
  return samplers.sample(eps_fn, sched, shape, key, spec, x_T=x_T).x


jit_dpm = jax.jit(dpm_sample, static_argnums=(0, 2), static_argnames=("timesteps", "clip_x0"))
KEY = jax.random.key(8)


def _quad(steps):
  return timestep_grids.timestep_subsequence(T, steps, "quad")


@functools.cache
def _dpm_samples(name, steps):
  dim = MIXES[name].dim
  x = jit_dpm(EPS[name], SCHED, (N, dim), KEY, timesteps=_quad(steps), clip_x0=False)
  return np.asarray(x, np.float64)


@pytest.mark.parametrize("name", ["d2", "d16"])
@pytest.mark.parametrize(
  "steps, std_tol, mean_tol", [(10, 0.15, 0.4), (15, 0.10, 0.15), (25, 0.05, 0.15)]
)
def test_dpm_solver_reproduces_the_mixture(name, steps, std_tol, mean_tol):
  """Allowances from the discretisation error measured at N = 2^18 (2D) / 2^16 (16D): component
  stds +4% to +12% at 10 steps, +6% to +7% at 15, +2% to +3.5% at 25; means off by 0.33 std_k at
  10 steps (2D, the narrow component), <= 0.06 std_k from 15; shares by <= 0.009."""
  assert_reproduces_mixture(_dpm_samples(name, steps), name, std_tol=std_tol, mean_tol=mean_tol)


def test_error_falls_faster_with_steps_than_ddim():
  """Both solve the same ODE from the same x_T; the reference is DPM-Solver++ with all 1000 steps
  (DDIM with 1000 steps differs from it by 0.002 RMS). RMS path error at 10 / 15 / 25 steps,
  measured: DPM-Solver++ 0.11 / 0.05 / 0.025, DDIM 0.22 / 0.16 / 0.11: each DPM-Solver++ error is
  below DDIM's, and it falls faster (second against first order)."""
  ref = np.asarray(
    jit_dpm(EPS["d2"], SCHED, (N, 2), KEY, timesteps=tuple(range(T)), clip_x0=False), np.float64
  )

  def rms(x):
    return float(np.sqrt(np.mean(np.sum((np.asarray(x, np.float64) - ref) ** 2, axis=1))))

  steps = (10, 15, 25)
  dpm = np.array([rms(_dpm_samples("d2", s)) for s in steps])
  ddim = np.array(
    [
      rms(jit_ddim(EPS["d2"], SCHED, (N, 2), KEY, timesteps=_quad(s), eta=0.0, clip_x0=False))
      for s in steps
    ]
  )
  assert np.all(np.diff(dpm) < 0) and np.all(np.diff(ddim) < 0), (dpm, ddim)
  assert np.all(dpm < ddim), (dpm, ddim)
  assert dpm[0] / dpm[-1] > ddim[0] / ddim[-1], (dpm, ddim)


def test_two_timesteps_are_a_ddim_step_then_x0():
  """With tau = (0, 999) there is a first-order step (DPM-Solver++(1) is DDIM eta = 0, also when x0
  is clipped: DDIM re-derives eps from the clipped x0) and the final x0_hat at index 0."""
  taus, shape = (0, T - 1), (1024, 2)
  want = jit_ddim(EPS["gauss"], SCHED, shape, KEY, timesteps=taus, eta=0.0, clip_x0=True)
  got = jit_dpm(EPS["gauss"], SCHED, shape, KEY, timesteps=taus, clip_x0=True)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
  assert np.all(np.abs(np.asarray(got)) <= 1.0) and np.mean(np.asarray(got)[:, 1] == -1.0) > 0.1


def test_deterministic_and_x_T_is_drawn_from_split_key():
  x = _dpm_samples("d2", 10)
  x_T = jax.random.normal(jax.random.split(KEY)[0], (N, 2))
  run = functools.partial(jit_dpm, EPS["d2"], SCHED, (N, 2), timesteps=_quad(10), clip_x0=False)
  np.testing.assert_array_equal(run(KEY), x)
  for key in (KEY, jax.random.key(0)):  # with x_T given, the key plays no part
    np.testing.assert_array_equal(run(key, x_T=x_T), x)
