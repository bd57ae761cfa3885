"""Timestep subsequences, the respaced schedule and the eps_fn wrapper.

The schedule is DDPM's linear one with T = 1000; indices t = 0..T-1 stand for the paper's t + 1.
"""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import oracles, respacing, sampling, schedules

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
  assert respacing.timestep_subsequence(T, 10) == tuple(range(0, 1000, 111))
  assert respacing.timestep_subsequence(T, 4) == (0, 333, 666, 999)
  # quad, c = 999 / 16: 0, 62.4, 249.8, 561.9, 999; T = 10, S = 8, c = 9 / 49: the floor i - 1
  # lifts 0, 0.2, 0.7, 1.7, 2.9, 4.6, 6.6, 9 to distinct indices.
  assert respacing.timestep_subsequence(T, 5, "quad") == (0, 62, 250, 562, 999)
  assert respacing.timestep_subsequence(10, 8, "quad") == (0, 1, 2, 3, 4, 5, 7, 9)
  assert respacing.timestep_subsequence(T, 1) == respacing.timestep_subsequence(T, 1, "quad")
  assert respacing.timestep_subsequence(T, 1) == (999,)
  for kind in respacing.KINDS:
    assert respacing.timestep_subsequence(T, T, kind) == tuple(range(T))


@pytest.mark.parametrize("kind", ["uniform", "quad"])
def test_subsequences_are_valid_for_every_length(kind):
  """Every T <= 120 and S <= T: S strictly increasing indices from 0 to T - 1, spaced as documented:
  uniform gaps within 1 of (T - 1) / (S - 1); quad indices within 1/2 of c (i - 1)^2 unless lifted
  to i - 1."""
  for n in range(1, 121):
    for s in range(1, n + 1):
      taus = np.array(respacing.timestep_subsequence(n, s, kind))
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
      taus = respacing.timestep_subsequence(n, s, kind)
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
    ours = respacing.timestep_subsequence(case["T"], case["S"], case["spacing"])
    assert ours == tuple(reversed(theirs)), case


@pytest.mark.parametrize(
  "timesteps", [[], [5, 5], [7, 3], [-1, 4], [0, T], [0.0, 1.0], [[0, 1]]], ids=str
)
def test_bad_timesteps_are_rejected(timesteps):
  with pytest.raises(ValueError, match="timesteps"):
    respacing.respace(SCHED, timesteps)


def test_bad_subsequence_arguments_are_rejected():
  for steps in (0, T + 1):
    with pytest.raises(ValueError, match="num_steps"):
      respacing.timestep_subsequence(T, steps)
  with pytest.raises(ValueError, match="spacing"):
    respacing.timestep_subsequence(T, 10, "cubic")


# --- the respaced schedule ------------------------------------------------------------------------


def test_respacing_with_every_index_returns_the_schedule():
  """Betas come back exactly; each derived field, rebuilt in float64 from them, to 1 ulp."""
  resched, taus = respacing.respace(SCHED, range(T))
  assert taus == tuple(range(T))
  np.testing.assert_array_equal(resched.betas, SCHED.betas)
  for field in dataclasses.fields(schedules.Schedule):
    got, want = getattr(resched, field.name), getattr(SCHED, field.name)
    assert got.dtype == want.dtype == jnp.float32, field.name
    np.testing.assert_array_max_ulp(np.asarray(got), np.asarray(want), maxulp=1)


def test_ancestral_sampling_on_the_full_respaced_chain_is_sample():
  """Same key, same steps, same noise: `sample` on (respace(all), respaced_eps_fn) is `sample`."""
  resched, taus = respacing.respace(SCHED, range(T))
  key = jax.random.key(3)
  want = sampling.sample(EPS_FN, SCHED, (256, 2), key)
  got = sampling.sample(respacing.respaced_eps_fn(EPS_FN, taus), resched, (256, 2), key)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
  "timesteps",
  [
    respacing.timestep_subsequence(T, 50),
    respacing.timestep_subsequence(T, 20, "quad"),
    (3, 4, 100, 101, 500, 998),  # irregular, not starting at 0 nor ending at T - 1
  ],
  ids=["uniform50", "quad20", "irregular"],
)
def test_respaced_chain_against_float64(timesteps):
  """abar'_i = abar_{tau_i}; beta'_i = 1 - prod over the gap of (1 - beta_j), each checked against
  a float64 product of the float64 betas (the float32 betas' rounding, ~6e-8, bounds the error)."""
  resched, taus = respacing.respace(SCHED, timesteps)
  gaps = zip((-1,) + taus[:-1], taus, strict=True)
  want_betas = [1.0 - np.prod(1.0 - BETAS[prev + 1 : tau + 1]) for prev, tau in gaps]
  want_abar = np.array([np.prod(1.0 - BETAS[: tau + 1]) for tau in taus])
  np.testing.assert_allclose(resched.betas, want_betas, rtol=1e-6)
  np.testing.assert_allclose(resched.alphas_cumprod, want_abar, rtol=1e-6)
  np.testing.assert_allclose(
    resched.alphas_cumprod, SCHED.alphas_cumprod[np.array(taus)], rtol=1e-6
  )
  np.testing.assert_allclose(resched.alphas_cumprod_prev[1:], want_abar[:-1], rtol=1e-6)
  assert resched.alphas_cumprod_prev[0] == 1.0 and resched.posterior_variance[0] == 0.0


def test_respacing_a_schedule_that_ends_at_beta_one():
  """`jsd` has beta_T = 1 (abar_T = 0): the last respaced beta is 1 too, with no NaN."""
  jsd = schedules.make_schedule(schedules.get_beta_schedule("jsd", 50))
  resched, _ = respacing.respace(jsd, (0, 24, 49))
  assert resched.betas[-1] == 1.0 and np.all(np.isfinite(resched.betas))


# --- the eps_fn wrapper ---------------------------------------------------------------------------


def test_respaced_eps_fn_passes_the_original_indices():
  taus = respacing.timestep_subsequence(T, 7, "quad")
  wrapped = respacing.respaced_eps_fn(lambda x, t: jnp.broadcast_to(t[:, None], x.shape), taus)
  i_B = jnp.array([0, 6, 3, 3, 1], jnp.int32)
  got = wrapped(jnp.zeros((5, 2)), i_B)
  np.testing.assert_array_equal(got, np.array(taus)[np.asarray(i_B)][:, None] * np.ones((1, 2)))


def test_sampler_on_the_respaced_chain_calls_the_model_at_tau_S_down_to_tau_1():
  taus = (0, 5, 40, 41, 99)
  resched, _ = respacing.respace(SCHED, taus)
  seen = []

  def recording_eps_fn(x, t_B):
    jax.debug.callback(lambda t: seen.append(np.asarray(t).tolist()), t_B, ordered=True)
    return jnp.zeros_like(x)

  sampling.sample(
    respacing.respaced_eps_fn(recording_eps_fn, taus), resched, (3, 2), jax.random.key(0)
  )
  jax.effects_barrier()
  assert seen == [[tau] * 3 for tau in reversed(taus)]


def test_step_pairs():
  taus = (2, 5, 9)
  coef = jnp.arange(10, dtype=jnp.float32) * 10
  start, end = respacing.step_pairs(coef, taus, -1.0)
  np.testing.assert_array_equal(start, [20, 50, 90])
  np.testing.assert_array_equal(end, [-1, 20, 50])
