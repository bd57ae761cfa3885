"""Editing on the exact Gaussian oracle: SDEdit, inpainting (replacement and RePaint),
interpolation, progressive generation; each against closed-form answers in float64 NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import diffusion, oracles, schedules
from diffusion_jax.editing import inpainting, interpolation, sdedit
from diffusion_jax.likelihood import rate_distortion, vlb
from diffusion_jax.samplers import SamplerSpec, progressive

BETAS = schedules.get_beta_schedule("linear", 100, 1e-3, 0.2)
SCHED = schedules.make_schedule(BETAS)
ABAR = np.cumprod(1.0 - BETAS)
MEAN = np.array([0.5, -0.3, 0.2])
STD = np.array([1.0, 0.8, 0.6])
CORR = np.array([[1.0, 0.9, 0.7], [0.9, 1.0, 0.8], [0.7, 0.8, 1.0]])
COV = CORR * np.outer(STD, STD)
DATA = oracles.Gaussian(jnp.asarray(MEAN, jnp.float32), jnp.asarray(COV, jnp.float32))
EPS_FN = oracles.eps_fn_for(DATA, SCHED)


def _moments(x):
  x = np.asarray(x, np.float64)
  return x.mean(axis=0), np.cov(x, rowvar=False)


def test_gaussian_oracle_eps_is_the_posterior_mean_of_the_noise():
  x = np.array([[0.3, -1.2, 2.0], [1.0, 0.0, -0.5]])
  t = np.array([10, 60])
  got = np.asarray(EPS_FN(jnp.asarray(x, jnp.float32), jnp.asarray(t)))
  for i in range(2):
    a = ABAR[t[i]]
    cov_t = a * COV + (1 - a) * np.eye(3)  # Cov(x_t); Cov(eps, x_t) = sqrt(1 - a) I
    want = np.sqrt(1 - a) * np.linalg.solve(cov_t, x[i] - np.sqrt(a) * MEAN)
    np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-5)


def test_q_sample_from_is_the_forward_process_between_two_times():
  x_s = jnp.asarray([[1.0, -2.0, 0.5]])
  z = jnp.asarray([[0.3, 0.1, -1.0]])
  for s, t in ((-1, 40), (10, 11), (10, 90)):
    ratio = ABAR[t] / (ABAR[s] if s >= 0 else 1.0)
    want = np.sqrt(ratio) * np.asarray(x_s) + np.sqrt(1 - ratio) * np.asarray(z)
    got = diffusion.q_sample_from(SCHED, x_s, jnp.int32(s), jnp.int32(t), z)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


def test_repaint_path_walks_each_segment_resample_times():
  np.testing.assert_array_equal(inpainting.repaint_path(3, 1, 1), [0, 1, 2, 3])
  # j = 1, r = 2: every step but the last into clean data taken twice (RePaint Algorithm 1).
  np.testing.assert_array_equal(inpainting.repaint_path(3, 1, 2), [0, 1, 0, 1, 2, 1, 2, 3])
  path = inpainting.repaint_path(20, 5, 3)
  moves = np.diff(path)
  assert set(moves.tolist()) == {1, -5} and path[0] == 0 and path[-1] == 20
  # The jumps start 1, 6, 11 steps from the clean end, twice each: 6 jumps of 5 steps.
  assert np.sum(moves == -5) == 6 and np.sum(moves == 1) == 20 + 6 * 5
  with pytest.raises(ValueError, match="resample"):
    inpainting.repaint_path(10, 1, 0)


def test_sdedit_from_the_top_draws_the_data():
  inputs = jnp.tile(jnp.asarray([[2.0, -1.0, 1.0]]), (4000, 1))
  full = sdedit.sdedit(EPS_FN, SCHED, inputs, jax.random.key(0), strength=1.0)
  mean, cov = _moments(full.x)
  np.testing.assert_allclose(mean, MEAN, atol=0.05)
  np.testing.assert_allclose(cov, COV, atol=0.06)


@pytest.mark.parametrize("strength", [0.05, 0.3])
def test_sdedit_from_t0_draws_the_posterior_of_the_noised_input(strength):
  """x_t0 ~ N(a x_in, s^2 I), then x0 ~ q(x0 | x_t0): mean mu + a^2 S C^-1 (x_in - mu) and
  covariance S - a^2 S C^-1 S + a^2 s^2 S C^-2 S, C = a^2 S + s^2 I (a^2 = abar_t0)."""
  x_in = np.array([2.0, -1.0, 1.0])
  inputs = jnp.tile(jnp.asarray(x_in[None], jnp.float32), (4000, 1))
  result = sdedit.sdedit(EPS_FN, SCHED, inputs, jax.random.key(0), strength=strength)
  t0 = round(strength * 100) - 1
  a2, s2 = ABAR[t0], 1 - ABAR[t0]
  gain = COV @ np.linalg.inv(a2 * COV + s2 * np.eye(3))  # S C^-1
  want_mean = MEAN + a2 * gain @ (x_in - MEAN)
  want_cov = COV - a2 * gain @ COV + a2 * s2 * gain @ gain.T
  mean, cov = _moments(result.x)
  assert int(result.nfe) == t0 + 1
  np.testing.assert_allclose(mean, want_mean, atol=0.02)
  np.testing.assert_allclose(cov, want_cov, atol=0.02)


def _conditional(observed, value):
  """The exact law of the other coordinates given x[observed] = value."""
  free = [i for i in range(3) if i not in observed]
  s_oo = COV[np.ix_(observed, observed)]
  s_fo = COV[np.ix_(free, observed)]
  mean = MEAN[free] + s_fo @ np.linalg.solve(s_oo, value - MEAN[observed])
  cov = COV[np.ix_(free, free)] - s_fo @ np.linalg.solve(s_oo, s_fo.T)
  return free, mean, cov


def test_inpainting_converges_to_the_exact_conditional_with_resampling():
  """Replacement misses the conditional; RePaint's error falls as it resamples more.

  With N = 4000 samples, the means' standard errors are ~0.25 / sqrt(N) = 0.004 and the
  covariances' ~0.003: the final threshold 0.03 is well above sampling noise and well below the
  replacement method's error.
  """
  observed, value = [0], np.array([1.8])
  free, want_mean, want_cov = _conditional(observed, value)
  known = jnp.zeros((4000, 3)).at[:, 0].set(value[0])
  mask = jnp.asarray([1.0, 0.0, 0.0])
  errors = []
  for resample in (1, 3, 10):
    result = jax.jit(
      lambda k, r=resample: inpainting.inpaint(EPS_FN, SCHED, known, mask, k, resample=r)
    )(jax.random.key(1))
    np.testing.assert_array_equal(np.asarray(result.x[:, 0]), np.full(4000, value[0], np.float32))
    assert int(result.nfe) == 100 + (resample - 1) * 99
    mean, cov = _moments(np.asarray(result.x)[:, free])
    errors.append(max(np.abs(mean - want_mean).max(), np.abs(cov - want_cov).max()))
  print("max |mean/cov error| for resample 1, 3, 10:", errors)
  assert errors[0] > 0.1  # the replacement method is biased here
  assert errors[0] > errors[1] > errors[2]
  assert errors[2] < 0.03


def test_inpainting_with_jumps_and_other_samplers_reaches_the_conditional():
  observed, value = [0, 2], np.array([1.5, 0.9])
  free, want_mean, want_cov = _conditional(observed, value)
  known = jnp.zeros((2000, 3)).at[:, 0].set(value[0]).at[:, 2].set(value[1])
  mask = jnp.asarray([1.0, 0.0, 1.0])
  for spec in (SamplerSpec("ancestral"), SamplerSpec("ddim", eta=1.0), SamplerSpec("sde")):
    result = jax.jit(
      lambda k, s=spec: inpainting.inpaint(
        EPS_FN, SCHED, known, mask, k, s, jump_length=5, resample=10
      )
    )(jax.random.key(2))
    mean, cov = _moments(np.asarray(result.x)[:, free])
    np.testing.assert_allclose(mean, want_mean, atol=0.03, err_msg=spec.name)
    np.testing.assert_allclose(cov, want_cov, atol=0.03, err_msg=spec.name)


def test_slerp_matches_the_formula_and_keeps_the_ends():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(2, 5)), rng.normal(size=(2, 5))
  got = np.asarray(interpolation.slerp(jnp.asarray(a), jnp.asarray(b), 0.3))
  for i in range(2):
    theta = np.arccos(a[i] @ b[i] / np.linalg.norm(a[i]) / np.linalg.norm(b[i]))
    want = (np.sin(0.7 * theta) * a[i] + np.sin(0.3 * theta) * b[i]) / np.sin(theta)
    np.testing.assert_allclose(got[i], want, rtol=1e-5)
  np.testing.assert_allclose(interpolation.slerp(jnp.asarray(a), jnp.asarray(b), 0.0), a, 1e-6)
  np.testing.assert_allclose(interpolation.slerp(jnp.asarray(a), jnp.asarray(a), 0.5), a, 1e-6)


def test_deterministic_interpolation_ends_at_its_inputs():
  x_a = jnp.asarray([[1.0, 0.5, -0.2], [0.0, -1.0, -1.5]])
  x_b = jnp.asarray([[-0.5, -0.4, 0.1], [1.2, 1.0, 0.6]])
  frames = interpolation.deterministic(
    EPS_FN, SCHED, x_a, x_b, SamplerSpec("ode_heun", steps=100), num_frames=5
  )
  assert frames.shape == (5, 2, 3)
  np.testing.assert_allclose(frames[0], x_a, atol=2e-3)
  np.testing.assert_allclose(frames[-1], x_b, atol=2e-3)


def test_stochastic_interpolation_shares_its_noise_across_frames():
  x_a = jnp.asarray([[1.0, 0.5, -0.2]])
  key = jax.random.key(3)
  same = interpolation.stochastic(EPS_FN, SCHED, x_a, x_a, key, num_frames=3, strength=0.5)
  np.testing.assert_array_equal(np.asarray(same[0]), np.asarray(same[2]))
  first = sdedit.sdedit(EPS_FN, SCHED, x_a, key, strength=0.5).x
  np.testing.assert_allclose(np.asarray(same[0]), np.asarray(first), atol=1e-5)


def test_progressive_generation_predicts_x0_at_every_frame():
  spec = SamplerSpec("ddim", steps=20)
  result = progressive.progressive_generation(
    EPS_FN, SCHED, (3, 3), jax.random.key(4), spec, num_frames=5
  )
  assert result.times[0] == 99 and result.times[-1] == -1
  assert result.x_t.shape == result.x0_hat.shape == (len(result.times), 3, 3)
  frames = zip(np.asarray(result.x_t), np.asarray(result.x0_hat), result.times, strict=True)
  for x_t, x0_hat, t in frames:
    if t < 0:
      np.testing.assert_array_equal(x0_hat, x_t)
      continue
    a = ABAR[t]
    cov_t = a * COV + (1 - a) * np.eye(3)  # E[x0 | x_t] = mu + sqrt(a) Sigma C_t^-1 (x_t - ..)
    want = MEAN + np.sqrt(a) * (COV @ np.linalg.solve(cov_t, (x_t - np.sqrt(a) * MEAN).T)).T
    np.testing.assert_allclose(x0_hat, want, rtol=1e-3, atol=1e-3)


def _oracle_denoiser(params):
  return oracles.network_for(DATA, SCHED)


def test_rate_distortion_of_the_exact_model():
  """Distortion is the exact MMSE tr(S - a^2 S C^-1 S) / D at every step; the rate runs from L_T
  through the running sum of the bound's terms to the whole bound, where the distortion is 0."""
  x0 = np.asarray(DATA.sample(jax.random.key(5), 3000))
  summary = vlb.evaluate_vlb(_oracle_denoiser, {}, SCHED, [x0], jax.random.key(6), progress=False)
  curve = rate_distortion.rate_distortion(summary)
  assert curve.rate_bpd.shape == curve.distortion_rmse.shape == (101,)
  np.testing.assert_allclose(curve.rate_bpd[0], summary.prior_bpd)
  np.testing.assert_allclose(curve.rate_bpd[-1], summary.total_bpd, rtol=1e-6)
  np.testing.assert_allclose(
    np.diff(curve.rate_bpd), summary.terms_bpd[::-1], rtol=1e-9, atol=1e-12
  )
  assert curve.distortion_rmse[-1] == 0.0
  mmse = []
  for k in range(100):
    a2 = ABAR[99 - k]  # after k reverse steps the receiver holds x_t at index 99 - k
    gain = COV @ np.linalg.inv(a2 * COV + (1 - a2) * np.eye(3))
    mmse.append(np.trace(COV - a2 * gain @ COV) / 3)
  want = rate_distortion.PIXEL_SCALE * np.sqrt(mmse)
  np.testing.assert_allclose(curve.distortion_rmse[:-1], want, rtol=0.05)
