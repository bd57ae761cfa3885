"""Timestep subsequences and grids, and the steps of a respaced chain (`diffusion.step_posterior`).

The schedule is DDPM's linear one with T = 1000; indices t = 0..T-1 stand for the paper's t + 1.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import diffusion, oracles, samplers, schedules
from diffusion_jax.samplers import timesteps as timestep_grids

T = 1000
BETAS = schedules.get_beta_schedule("linear", T)
SCHED = schedules.make_schedule(BETAS)
MIX = oracles.GaussianMixture(
  weights=jnp.array([0.25, 0.75]),
  means=jnp.array([[-1.0, -0.5], [1.0, 0.5]]),
  variances=jnp.array([0.04, 0.09]),
)
EPS_FN = oracles.eps_fn_for(MIX, SCHED)


# --- subsequences ---------------------------------------------------------------------------------


def test_subsequences_by_hand():
  assert timestep_grids.timestep_subsequence(T, 10) == tuple(range(0, 1000, 111))
  assert timestep_grids.timestep_subsequence(T, 4) == (0, 333, 666, 999)
  # quad, c = 999 / 16: 0, 62.4, 249.8, 561.9, 999; T = 10, S = 8, c = 9 / 49: the floor i - 1
  # lifts 0, 0.2, 0.7, 1.7, 2.9, 4.6, 6.6, 9 to distinct indices.
  assert timestep_grids.timestep_subsequence(T, 5, "quad") == (0, 62, 250, 562, 999)
  assert timestep_grids.timestep_subsequence(10, 8, "quad") == (0, 1, 2, 3, 4, 5, 7, 9)
  assert timestep_grids.timestep_subsequence(T, 1) == timestep_grids.timestep_subsequence(
    T, 1, "quad"
  )
  assert timestep_grids.timestep_subsequence(T, 1) == (999,)
  for kind in timestep_grids.KINDS:
    assert timestep_grids.timestep_subsequence(T, T, kind) == tuple(range(T))


@pytest.mark.parametrize("kind", ["uniform", "quad"])
def test_subsequences_are_valid_for_every_length(kind):
  """Every T <= 120 and S <= T: S strictly increasing indices from 0 to T - 1, spaced as documented:
  uniform gaps within 1 of (T - 1) / (S - 1); quad indices within 1/2 of c (i - 1)^2 unless lifted
  to i - 1."""
  for n in range(1, 121):
    for s in range(1, n + 1):
      taus = np.array(timestep_grids.timestep_subsequence(n, s, kind))
      assert len(taus) == s and taus[-1] == n - 1 and np.all(np.diff(taus) > 0), (n, s)
      if s == 1:
        continue
      assert taus[0] == 0
      i = np.arange(s)
      if kind == "uniform":
        assert np.all(np.abs(np.diff(taus) - (n - 1) / (s - 1)) < 1), (n, s)
      else:
        target = (n - 1) * (i / (s - 1)) ** 2
        assert np.all((np.abs(taus - target) <= 0.5) | ((taus == i) & (target < i))), (n, s)


def _round_exact(numerator: int, denominator: int) -> set[int]:
  """round(n / d) for n, d >= 0; both neighbours at a tie, which floating point may break
  either way."""
  q, r = divmod(numerator, denominator)
  if 2 * r == denominator:
    return {q, q + 1}
  return {q + (2 * r > denominator)}


@pytest.mark.parametrize("kind", ["leading", "trailing", "linspace"])
def test_diffusers_spacings_for_every_length(kind):
  """Every T <= 120 and S <= T, against exact integer arithmetic: `leading` tau_i = (i - 1)
  floor(T / S); `trailing` tau_{S-k} = round(T (S - k) / S) - 1, k = 0..S-1; `linspace` tau_i =
  round((i - 1)(T - 1) / (S - 1)), S = 1 giving 0."""
  for n in range(1, 121):
    for s in range(1, n + 1):
      taus = timestep_grids.timestep_subsequence(n, s, kind)
      assert len(taus) == s, (n, s)
      for i, tau in enumerate(taus):  # i = 0..S-1 is the paper's i - 1
        if kind == "leading":
          assert tau == i * (n // s), (n, s)
        elif kind == "trailing":
          assert tau + 1 in _round_exact(n * (i + 1), s), (n, s)
        else:
          assert tau in (_round_exact(i * (n - 1), s - 1) if s > 1 else {0}), (n, s)


def test_diffusers_spacings_match_diffusers_timesteps():
  """diffusers' `scheduler.timesteps` (noisiest first) for each spacing at several (T, S), from
  tests/fixtures/diffusers_tiny. For trailing, np.arange gives diffusers one index too many at
  some (T, S), -1, which it would then step to; we keep the S intended ones."""
  path = os.path.join(os.path.dirname(__file__), "fixtures", "diffusers_tiny", "timesteps.json")
  with open(path) as f:
    cases = json.load(f)
  assert {c["spacing"] for c in cases} == {"leading", "trailing", "linspace"}
  for case in cases:
    theirs = case["timesteps"]
    if len(theirs) == case["S"] + 1:
      assert case["spacing"] == "trailing" and theirs[-1] == -1
      theirs = theirs[:-1]
    ours = timestep_grids.timestep_subsequence(case["T"], case["S"], case["spacing"])
    assert ours == tuple(reversed(theirs)), case


@pytest.mark.parametrize(
  "timesteps", [[], [5, 5], [7, 3], [-1, 4], [0, T], [0.0, 1.0], [[0, 1]]], ids=str
)
def test_bad_timesteps_are_rejected(timesteps):
  with pytest.raises(ValueError, match="timesteps"):
    timestep_grids.check_timesteps(timesteps, T)
  with pytest.raises(ValueError, match="timesteps"):
    samplers.sample(
      EPS_FN, SCHED, (2, 2), jax.random.key(0), samplers.SamplerSpec(timesteps=timesteps)
    )


def test_bad_subsequence_arguments_are_rejected():
  for steps in (0, T + 1):
    with pytest.raises(ValueError, match="num_steps"):
      timestep_grids.timestep_subsequence(T, steps)
  with pytest.raises(ValueError, match="spacing"):
    timestep_grids.timestep_subsequence(T, 10, "cubic")


def test_grids():
  np.testing.assert_array_equal(timestep_grids.discrete_grid((0, 5, 9)), [9, 5, 0, -1])
  assert timestep_grids.discrete_grid((0, 5, 9)).dtype == np.int32
  grid = timestep_grids.continuous_grid(T, 4)
  np.testing.assert_allclose(grid, (np.linspace(1.0, 1.0 / T, 5) * T - 1), rtol=1e-6, atol=1e-4)
  assert grid.dtype == np.float32


# --- the steps of the respaced chain --------------------------------------------------------------


def test_steps_of_the_full_chain_are_the_schedules_posterior():
  """step_posterior(t, t - 1) is the schedule's own q(x_{t-1} | x_t, x0), to a few ulps."""
  t = jnp.arange(1, T)
  post = diffusion.step_posterior(SCHED, t, t - 1)
  np.testing.assert_allclose(post.beta, SCHED.betas[1:], rtol=2e-6)
  np.testing.assert_allclose(post.variance, SCHED.posterior_variance[1:], rtol=2e-6)
  np.testing.assert_allclose(post.coef_x0, SCHED.posterior_mean_coef1[1:], rtol=2e-6)
  np.testing.assert_allclose(post.coef_xt, SCHED.posterior_mean_coef2[1:], rtol=2e-6)
  last = diffusion.step_posterior(SCHED, jnp.int32(0), jnp.int32(-1))  # into clean data
  assert float(last.coef_x0) == pytest.approx(1.0, abs=1e-6)
  assert float(last.coef_xt) == 0.0 and float(last.variance) == 0.0


def test_ancestral_sampling_on_every_index_is_the_full_chain():
  """Same key, same steps, same noise: the explicit full subsequence is the default sampler."""
  key = jax.random.key(3)
  want = samplers.sample(EPS_FN, SCHED, (256, 2), key).x
  spec = samplers.SamplerSpec(timesteps=tuple(range(T)))
  got = samplers.sample(EPS_FN, SCHED, (256, 2), key, spec).x
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
  "timesteps",
  [
    timestep_grids.timestep_subsequence(T, 50),
    timestep_grids.timestep_subsequence(T, 20, "quad"),
    (3, 4, 100, 101, 500, 998),  # irregular, not starting at 0 nor ending at T - 1
  ],
  ids=["uniform50", "quad20", "irregular"],
)
def test_respaced_chain_against_float64(timesteps):
  """beta'_i = 1 - prod over the gap of (1 - beta_j) and the posterior of each step, checked
  against float64 products of the float64 betas."""
  taus = timestep_grids.check_timesteps(timesteps, T)
  gaps = list(zip((-1,) + taus[:-1], taus, strict=True))
  want_betas = np.array([1.0 - np.prod(1.0 - BETAS[prev + 1 : tau + 1]) for prev, tau in gaps])
  want_abar = np.array([np.prod(1.0 - BETAS[: tau + 1]) for tau in taus])
  abar_prev = np.append(1.0, want_abar[:-1])
  post = diffusion.step_posterior(SCHED, jnp.asarray(taus), jnp.asarray((-1,) + taus[:-1]))
  np.testing.assert_allclose(post.beta, want_betas, rtol=2e-6)
  np.testing.assert_allclose(
    post.variance[1:], (want_betas * (1 - abar_prev) / (1 - want_abar))[1:], rtol=2e-6
  )
  np.testing.assert_allclose(
    post.coef_x0, want_betas * np.sqrt(abar_prev) / (1 - want_abar), rtol=2e-6
  )
  np.testing.assert_allclose(
    post.coef_xt, np.sqrt(1 - want_betas) * (1 - abar_prev) / (1 - want_abar), rtol=2e-6, atol=1e-7
  )
  assert post.variance[0] == 0.0


def test_respacing_a_schedule_that_ends_at_beta_one():
  """`jsd` has beta_T = 1 (abar_T = 0): the last respaced beta is 1 too, with no NaN."""
  jsd = schedules.make_schedule(schedules.get_beta_schedule("jsd", 50))
  post = diffusion.step_posterior(jsd, jnp.array([24, 49]), jnp.array([0, 24]))
  assert post.beta[-1] == 1.0 and np.all(np.isfinite(post.beta))


def test_sampler_on_a_subsequence_calls_the_model_at_tau_S_down_to_tau_1():
  taus = (0, 5, 40, 41, 99)
  seen = []

  def recording_eps_fn(x, t_B):
    jax.debug.callback(lambda t: seen.append(np.asarray(t).tolist()), t_B, ordered=True)
    return jnp.zeros_like(x)

  spec = samplers.SamplerSpec(timesteps=taus)
  samplers.sample(recording_eps_fn, SCHED, (3, 2), jax.random.key(0), spec)
  jax.effects_barrier()
  assert seen == [[tau] * 3 for tau in reversed(taus)]
