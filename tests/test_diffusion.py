"""The Gaussian diffusion maths against float64 NumPy written from the DDPM paper's equations.

References are derived independently of the library: alpha-bar by a loop product, the posterior
q(x_{t-1} | x_t, x0) by Bayes' rule as a product of two Gaussians, the reverse mean by eq. 11. The
library computes in float32 (unit round-off u = 2**-24 ~ 6e-8); each tolerance below is a small
multiple of u times the magnitude of the terms involved, or a statistical bound where noise is
drawn.
The paper's timestep index t = 0..T-1 stands for its step t+1.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import diffusion, losses, parametrization, schedules

T = 1000
U32 = 2.0**-24  # float32 unit round-off
SHAPES = {"image": (6, 4, 3, 2), "vector": (6, 5)}


def _reference(betas):
  """float64 alpha_t, beta_t, abar_t, abar_{t-1} from a loop product."""
  betas = np.asarray(betas, np.float64)
  abar, prod = np.empty_like(betas), 1.0
  for i, b in enumerate(betas):
    prod *= 1.0 - b
    abar[i] = prod
  abar_prev = np.concatenate([[1.0], abar[:-1]])
  return dict(beta=betas, alpha=1.0 - betas, abar=abar, abar_prev=abar_prev)


def bayes_posterior(ref, x0, x_t, t):
  """Mean and variance of q(x_{t-1} | x_t, x0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x0), in float64.

  As functions of y = x_{t-1}: q(x_t | y) = N(x_t; sqrt(alpha_t) y, beta_t) has precision
  alpha_t / beta_t and linear coefficient sqrt(alpha_t) x_t / beta_t; q(y | x0) = N(sqrt(abar_{t-1})
  x0, 1 - abar_{t-1}) has precision 1 / (1 - abar_{t-1}) and linear coefficient
  sqrt(abar_{t-1}) x0 / (1 - abar_{t-1}). Natural parameters add; mean = eta / precision. At t index
  0, abar_{t-1} = 1: the second factor is a point mass at x0, so the posterior is (x0, 0).
  """
  x0, x_t = np.asarray(x0, np.float64), np.asarray(x_t, np.float64)
  mean, var = np.empty_like(x0), np.empty(len(t))
  for i, ti in enumerate(np.asarray(t)):
    if ti == 0:
      mean[i], var[i] = x0[i], 0.0
      continue
    alpha, beta = ref["alpha"][ti], ref["beta"][ti]
    prior_var = 1.0 - ref["abar_prev"][ti]
    precision = alpha / beta + 1.0 / prior_var
    eta = math.sqrt(alpha) * x_t[i] / beta + math.sqrt(ref["abar_prev"][ti]) * x0[i] / prior_var
    mean[i], var[i] = eta / precision, 1.0 / precision
  return mean, var


def _bcast(v, x):
  """A per-example float64 [B] vector as [B, 1, ..., 1]."""
  return np.asarray(v, np.float64).reshape((len(v),) + (1,) * (np.ndim(x) - 1))


def _normal(seed, shape, scale=1.0):
  return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


@pytest.fixture(scope="module")
def sched():
  return schedules.make_schedule(schedules.get_beta_schedule("linear", T))


@pytest.fixture(scope="module")
def ref():
  return _reference(np.linspace(1e-4, 0.02, T))


def _x0_of(sched, eps, x_t, t, clip=False):
  """x0 as a network predicting `eps` at (x_t, t) gives it, clipped to [-1, 1] on request."""
  denoised = parametrization.Denoiser(lambda x, t: jnp.asarray(eps))(sched, jnp.asarray(x_t), t)
  return (denoised.clip_x0() if clip else denoised).x0


def _t(batch):
  """Timestep indices covering the first, second and last steps and some in between."""
  return jnp.array([0, 1, 2, 57, 500, T - 1, 998, 250][:batch], jnp.int32)


# --- extract --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", SHAPES)
def test_extract_gathers_and_reshapes_for_broadcasting(kind):
  shape = SHAPES[kind]
  coef = jnp.arange(T, dtype=jnp.float32) * 0.5
  t = _t(shape[0])
  out = diffusion.extract(coef, t, jnp.zeros(shape))
  assert out.shape == (shape[0],) + (1,) * (len(shape) - 1)
  np.testing.assert_array_equal(np.asarray(out).ravel(), 0.5 * np.asarray(t))


# --- forward process q(x_t | x0) -----------------------------------------------------------------


@pytest.mark.parametrize("kind", SHAPES)
def test_q_mean_variance_mean_and_log_variance(sched, ref, kind):
  shape = SHAPES[kind]
  x0, t = _normal(0, shape), _t(shape[0])
  mean, var, log_var = diffusion.q_mean_variance(sched, jnp.asarray(x0), t)
  abar = ref["abar"][np.asarray(t)]
  assert mean.shape == shape and var.shape == log_var.shape == _bcast(abar, x0).shape
  # mean: one float32 product of two rounded factors, so |error| <= ~3u |mean|.
  np.testing.assert_allclose(mean, np.sqrt(_bcast(abar, x0)) * x0, rtol=4 * U32, atol=1e-30)
  np.testing.assert_allclose(log_var, np.log(_bcast(1.0 - abar, x0)), rtol=1e-6)


@pytest.mark.parametrize("kind", SHAPES)
def test_q_mean_variance_variance_is_one_minus_alpha_bar(sched, ref, kind):
  """Var q(x_t | x0) = 1 - abar_t, to float32 precision, and consistent with the log-variance.

  Every coefficient in Schedule is derived in float64 before rounding, so a float32 1 - abar_t is
  expected to have relative error ~u. This test fails if 1 - abar_t is formed in float32 from the
  rounded abar_t: at t index 0, abar_1 = 0.9999 rounds to 0.99989998, and 1 - that is 1.00017e-4,
  a relative error of 1.7e-4 (about 2800 u), while exp(log_variance) is right.
  """
  shape = SHAPES[kind]
  x0, t = _normal(1, shape), _t(shape[0])
  _, var, log_var = diffusion.q_mean_variance(sched, jnp.asarray(x0), t)
  want = _bcast(1.0 - ref["abar"][np.asarray(t)], x0)
  np.testing.assert_allclose(np.exp(np.asarray(log_var, np.float64)), want, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(var, np.float64), want, rtol=1e-6)


@pytest.mark.parametrize("kind", SHAPES)
def test_q_sample_with_given_noise_is_eq4(sched, ref, kind):
  shape = SHAPES[kind]
  x0, noise, t = _normal(2, shape), _normal(3, shape), _t(shape[0])
  got = diffusion.q_sample(sched, jnp.asarray(x0), t, jnp.asarray(noise))
  abar = _bcast(ref["abar"][np.asarray(t)], x0)
  a, b = np.sqrt(abar) * x0, np.sqrt(1.0 - abar) * noise
  assert got.shape == shape and got.dtype == jnp.float32
  # Two rounded products and a sum: |error| <= ~4u (|a| + |b|).
  assert np.all(np.abs(got - (a + b)) <= 4 * U32 * (np.abs(a) + np.abs(b)) + 1e-30)


def test_q_sample_moments_over_many_noise_draws(sched, ref):
  """Empirical mean and variance of x_t over M noise draws for fixed x0 equal eq. 4's.

  With M = 40000 draws per (t, coordinate), the sample mean has standard error
  sqrt((1 - abar_t) / M) and the sample variance (Gaussian data) sqrt(2 / (M - 1)) (1 - abar_t).
  Both are checked to 5 standard errors: a false failure has probability ~6e-7 per check, so
  under 1e-4 over the 160 checks here, while any wrong coefficient (e.g. abar for sqrt(abar), or
  alpha_t for abar_t) is off by hundreds of standard errors.
  """
  m, d = 40_000, 4
  x0_row = np.array([1.0, -0.5, 0.25, 2.0], np.float32)
  for i, ti in enumerate([0, 1, 30, 200, 500, T - 1]):
    t = jnp.full((m,), ti, jnp.int32)
    x0 = jnp.broadcast_to(jnp.asarray(x0_row), (m, d))
    noise = jax.random.normal(jax.random.key(i), (m, d), jnp.float32)
    x_t = np.asarray(diffusion.q_sample(sched, x0, t, noise), np.float64)
    abar = ref["abar"][ti]
    want_mean, want_var = math.sqrt(abar) * x0_row, 1.0 - abar
    se_mean = math.sqrt(want_var / m)
    se_var = math.sqrt(2.0 / (m - 1)) * want_var
    np.testing.assert_allclose(x_t.mean(0), want_mean, rtol=0, atol=5 * se_mean, err_msg=str(ti))
    np.testing.assert_allclose(x_t.var(0, ddof=1), want_var, rtol=0, atol=5 * se_var)


# --- posterior q(x_{t-1} | x_t, x0) ---------------------------------------------------------------


@pytest.mark.parametrize("kind", SHAPES)
def test_q_posterior_matches_bayes_rule(sched, ref, kind):
  shape = SHAPES[kind]
  t = _t(shape[0])
  x0 = _normal(4, shape)
  x_t = np.asarray(diffusion.q_sample(sched, jnp.asarray(x0), t, jnp.asarray(_normal(5, shape))))
  mean, var, log_var = diffusion.q_posterior_mean_variance(
    sched, jnp.asarray(x0), jnp.asarray(x_t), t
  )
  want_mean, want_var = bayes_posterior(ref, x0, x_t, np.asarray(t))
  assert mean.shape == shape and var.shape == log_var.shape == _bcast(want_var, x0).shape
  # mean = c1 x0 + c2 x_t in float32: |error| <= ~5u (|c1 x0| + |c2 x_t|). Bound it with the
  # magnitudes of the two Bayes terms (c1 <= 1, c2 <= 1, so |x0| + |x_t| is a safe scale).
  scale = np.abs(x0) + np.abs(x_t)
  assert np.all(np.abs(mean - want_mean) <= 8 * U32 * scale), np.max(np.abs(mean - want_mean))
  np.testing.assert_allclose(var, _bcast(want_var, x0).astype(np.float32), rtol=1e-6, atol=0)
  # Log-variance: log beta-tilde_t, with t index 0 (variance 0) clipped to index 1's value.
  _, var_second = bayes_posterior(ref, x0[:1], x_t[:1], np.array([1]))
  want_log = np.log(np.where(want_var > 0, want_var, var_second[0]))
  np.testing.assert_allclose(log_var, _bcast(want_log, x0), rtol=1e-6)


def test_q_posterior_at_first_and_last_steps_explicitly(sched, ref):
  """t index 0 is a point mass at x0; t index T-1 mixes x0 and x_T per Bayes' rule."""
  x0 = np.array([[0.3, -0.7]], np.float32)
  x_t = np.array([[1.2, 0.4]], np.float32)
  mean0, var0, _ = diffusion.q_posterior_mean_variance(sched, x0, x_t, jnp.array([0]))
  np.testing.assert_allclose(mean0, x0, rtol=2 * U32)
  assert float(var0[0, 0]) == 0.0
  mean_last, var_last, _ = diffusion.q_posterior_mean_variance(sched, x0, x_t, jnp.array([T - 1]))
  want_mean, want_var = bayes_posterior(ref, x0, x_t, [T - 1])
  np.testing.assert_allclose(mean_last, want_mean, rtol=1e-6)
  np.testing.assert_allclose(var_last[0, 0], want_var[0], rtol=1e-6)


def test_posterior_of_a_sampled_pair_is_consistent_with_the_forward_marginal(ref):
  """Sanity check of the oracle itself: integrating x0's posterior mean over x_t recovers abar.

  If x_t ~ q(x_t | x0), then x_{t-1} drawn from q(x_{t-1} | x_t, x0) must be distributed as
  q(x_{t-1} | x0) = N(sqrt(abar_{t-1}) x0, 1 - abar_{t-1}). In closed form: E = c1 x0 + c2
  sqrt(abar_t) x0 and Var = c2^2 (1 - abar_t) + beta-tilde_t, with c1, c2 read off bayes_posterior.
  """
  for ti in [1, 2, 100, T - 1]:
    c2 = bayes_posterior(ref, np.zeros((1, 1)), np.ones((1, 1)), [ti])[0][0, 0]
    c1, var = bayes_posterior(ref, np.ones((1, 1)), np.zeros((1, 1)), [ti])
    c1 = c1[0, 0]
    abar, abar_prev = ref["abar"][ti], ref["abar_prev"][ti]
    assert c1 + c2 * math.sqrt(abar) == pytest.approx(math.sqrt(abar_prev), rel=1e-12)
    assert c2**2 * (1 - abar) + var[0] == pytest.approx(1 - abar_prev, rel=1e-10)


# --- predicting x0 from eps -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", SHAPES)
def test_predict_x0_from_eps_inverts_q_sample(sched, ref, kind):
  shape = SHAPES[kind]
  t = _t(shape[0])
  x0, eps = _normal(6, shape), _normal(7, shape)
  x_t = diffusion.q_sample(sched, jnp.asarray(x0), t, jnp.asarray(eps))
  back = diffusion.predict_x0_from_eps(sched, x_t, t, jnp.asarray(eps))
  assert back.shape == shape
  # The float32 round-off of x_t (~2u |x_t|) and of the eps term is amplified by 1 / sqrt(abar_t)
  # (up to ~160 at t index T-1): |error| <= c u (|x_t| + sqrt(1 - abar_t) |eps|) / sqrt(abar_t).
  abar = _bcast(ref["abar"][np.asarray(t)], x0)
  bound = 8 * U32 * (np.abs(x_t) + np.sqrt(1 - abar) * np.abs(eps)) / np.sqrt(abar)
  assert np.all(np.abs(back - x0) <= bound), np.max(np.abs(back - x0) / bound)


@pytest.mark.parametrize("kind", SHAPES)
def test_predict_x0_from_eps_is_eq4_solved_for_x0(sched, ref, kind):
  shape = SHAPES[kind]
  t = _t(shape[0])
  x_t, eps = _normal(8, shape), _normal(9, shape)
  got = diffusion.predict_x0_from_eps(sched, jnp.asarray(x_t), t, jnp.asarray(eps))
  abar = _bcast(ref["abar"][np.asarray(t)], x_t)
  a, b = x_t / np.sqrt(abar), np.sqrt(1 - abar) * eps / np.sqrt(abar)
  assert np.all(np.abs(got - (a - b)) <= 6 * U32 * (np.abs(a) + np.abs(b)))


# --- reverse process p(x_{t-1} | x_t) -------------------------------------------------------------


def _eq11(ref, x_t, eps, t):
  """DDPM eq. 11: mu = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t), in float64."""
  t = np.asarray(t)
  beta, alpha, abar = (_bcast(ref[k][t], x_t) for k in ("beta", "alpha", "abar"))
  x_t, eps = np.asarray(x_t, np.float64), np.asarray(eps, np.float64)
  return (x_t - beta / np.sqrt(1 - abar) * eps) / np.sqrt(alpha)


@pytest.mark.parametrize("kind", SHAPES)
@pytest.mark.parametrize("variance", ["fixedlarge", "fixedsmall"])
def test_p_mean_without_clipping_is_eq11(sched, ref, kind, variance):
  shape = SHAPES[kind]
  t = _t(shape[0])
  x_t, eps = _normal(10, shape), _normal(11, shape)
  x0_pred = _x0_of(sched, eps, x_t, t)
  mean, var, log_var = diffusion.p_mean_variance(
    sched, x0_pred, jnp.asarray(x_t), t, variance=variance
  )
  assert mean.shape == x0_pred.shape == shape
  assert var.shape == log_var.shape == (shape[0],) + (1,) * (len(shape) - 1)
  want = _eq11(ref, x_t, eps, t)
  # The library goes through x0_pred, whose round-off is amplified by 1 / sqrt(abar_t) and then
  # damped by c1 = beta_t sqrt(abar_{t-1}) / (1 - abar_t) <= 1; the result is a few u per unit of
  # |x_t| + |eps| (about 2u measured), and 16u (~1e-6) leaves room.
  err = np.abs(mean - want)
  assert np.all(err <= 16 * U32 * (np.abs(x_t) + np.abs(eps))), np.max(err)
  abar = _bcast(ref["abar"][np.asarray(t)], x_t)
  a, b = x_t / np.sqrt(abar), np.sqrt(1 - abar) * eps / np.sqrt(abar)
  assert np.all(np.abs(x0_pred - (a - b)) <= 6 * U32 * (np.abs(a) + np.abs(b)))


@pytest.mark.parametrize("kind", SHAPES)
def test_p_mean_with_clipping_uses_the_clipped_x0(sched, ref, kind):
  shape = SHAPES[kind]
  t = _t(shape[0])
  x0 = _normal(12, shape, scale=3.0)  # most predictions fall outside [-1, 1]
  eps = _normal(13, shape)
  x_t = diffusion.q_sample(sched, jnp.asarray(x0), t, jnp.asarray(eps))
  x0_pred = _x0_of(sched, eps, x_t, t, clip=True)
  mean, _, _ = diffusion.p_mean_variance(sched, x0_pred, x_t, t, variance="fixedsmall")
  x_t = np.asarray(x_t)
  abar = _bcast(ref["abar"][np.asarray(t)], x_t)
  unclipped = (x_t.astype(np.float64) - np.sqrt(1 - abar) * eps) / np.sqrt(abar)
  assert np.mean(np.abs(unclipped) > 1) > 0.5
  assert np.all(np.abs(np.asarray(x0_pred)) <= 1.0)
  np.testing.assert_allclose(x0_pred, np.clip(unclipped, -1, 1), rtol=0, atol=1e-4)
  want_mean, _ = bayes_posterior(ref, np.clip(unclipped, -1, 1), x_t, np.asarray(t))
  np.testing.assert_allclose(mean, want_mean, rtol=0, atol=1e-5)
  # And clipping matters: the unclipped mean differs wherever x0 was clipped at t index 0.
  unclipped_mean, *_ = diffusion.p_mean_variance(
    sched, _x0_of(sched, eps, x_t, t), jnp.asarray(x_t), t, variance="fixedsmall"
  )
  assert not np.allclose(unclipped_mean, mean)


def test_reverse_variances(sched, ref):
  """fixedsmall is beta-tilde_t, its log clipped at index 0 to index 1's.

  fixedlarge is beta_t for t index >= 1 and, per reverse_variance's docstring, beta-tilde_2 (index
  1's posterior variance) at index 0.
  """
  idx = np.arange(T)
  _, tilde = bayes_posterior(ref, np.zeros((T, 1)), np.zeros((T, 1)), idx)
  small, log_small = diffusion.reverse_variance(sched, "fixedsmall")
  large, log_large = diffusion.reverse_variance(sched, "fixedlarge")
  for arr in (small, log_small, large, log_large):
    assert arr.shape == (T,) and arr.dtype == jnp.float32
  np.testing.assert_allclose(small, tilde.astype(np.float32), rtol=1e-6, atol=0)
  np.testing.assert_allclose(log_small, np.log(np.concatenate([tilde[1:2], tilde[1:]])), rtol=1e-6)
  want_large = np.concatenate([tilde[1:2], ref["beta"][1:]])
  np.testing.assert_allclose(large, want_large, rtol=1e-6)
  np.testing.assert_allclose(log_large, np.log(want_large), rtol=1e-6)
  # beta-tilde_t < beta_t for t >= 2: the two choices bracket the true reverse variance.
  assert np.all(np.asarray(small)[1:] < np.asarray(large)[1:])


@pytest.mark.parametrize("kind", SHAPES)
@pytest.mark.parametrize("variance", ["fixedlarge", "fixedsmall"])
def test_p_variance_broadcasts_per_example(sched, ref, kind, variance):
  shape = SHAPES[kind]
  t = _t(shape[0])
  x = jnp.asarray(_normal(14, shape))
  mean, var, log_var = diffusion.p_mean_variance(sched, x, x, t, variance=variance)
  table, log_table = diffusion.reverse_variance(sched, variance)
  np.testing.assert_array_equal(np.asarray(var).ravel(), np.asarray(table)[np.asarray(t)])
  np.testing.assert_array_equal(np.asarray(log_var).ravel(), np.asarray(log_table)[np.asarray(t)])
  # A reverse step is mean + sigma z with no rank promotion (which conftest makes an error).
  step = mean + jnp.exp(0.5 * log_var) * x
  assert step.shape == shape


def test_reverse_variance_has_T_entries_for_a_single_step_schedule():
  """reverse_variance's [T] contract at T = 1, which make_schedule explicitly supports.

  `fixedlarge` takes beta-tilde_2 at index 0, which does not exist when T = 1: the slice
  posterior_variance[1:2] is empty, so the result has shape (0,) and p_mean_variance (the default
  variance of `sample`) fails with a gather error.
  """
  sched = schedules.make_schedule(np.array([0.3]))
  for variance in ("fixedsmall", "fixedlarge"):
    var, log_var = diffusion.reverse_variance(sched, variance)
    assert var.shape == log_var.shape == (1,), variance
    assert np.all(np.isfinite(np.asarray(log_var))), variance


def test_unknown_variance_raises(sched):
  with pytest.raises(ValueError, match="unknown variance"):
    diffusion.reverse_variance(sched, "learned")
  x = jnp.zeros((2, 3))
  with pytest.raises(ValueError):
    diffusion.p_mean_variance(sched, x, x, jnp.zeros(2, jnp.int32), variance="large")


def test_p_mean_variance_under_jit(sched):
  x, x0 = jnp.asarray(_normal(15, (4, 3))), jnp.asarray(_normal(16, (4, 3)))
  t = jnp.array([0, 3, 500, 999], jnp.int32)
  f = jax.jit(lambda s, x0, x, t: diffusion.p_mean_variance(s, x0, x, t))
  for got, want in zip(f(sched, x0, x, t), diffusion.p_mean_variance(sched, x0, x, t), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_learned_variance_interpolates_the_logs_of_beta_and_beta_tilde(sched, ref):
  """Nichol & Dhariwal eq. 15: log sigma^2 = f log beta_t + (1 - f) log beta-tilde_t (clipped)."""
  t = _t(4)
  x = jnp.asarray(_normal(19, (4, 3)))
  fraction = jnp.asarray(np.random.default_rng(0).uniform(size=(4, 3)), jnp.float32)
  _, var, log_var = diffusion.p_mean_variance(
    sched, x, x, t, variance="learned", variance_fraction=fraction
  )
  _, _, log_small = diffusion.p_mean_variance(sched, x, x, t, variance="fixedsmall")
  log_beta = np.log(ref["beta"][np.asarray(t)])[:, None]
  want = np.asarray(fraction) * log_beta + (1 - np.asarray(fraction)) * np.asarray(log_small)
  np.testing.assert_allclose(log_var, want, rtol=1e-5)
  np.testing.assert_allclose(var, np.exp(want), rtol=1e-5)
  with pytest.raises(ValueError, match="learned"):
    diffusion.p_mean_variance(sched, x, x, t, variance="learned")


# --- loss -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", SHAPES)
def test_mean_squared_error_is_per_example_l_simple(kind):
  shape = SHAPES[kind]
  eps, pred = _normal(17, shape), _normal(18, shape)
  got = losses.mean_squared_error(jnp.asarray(eps), jnp.asarray(pred))
  assert got.shape == (shape[0],) and got.dtype == jnp.float32
  diff = eps.astype(np.float64) - pred.astype(np.float64)
  want = [np.sum(diff[i] ** 2) / diff[i].size for i in range(shape[0])]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_array_equal(losses.mean_squared_error(jnp.asarray(eps), jnp.asarray(eps)), 0.0)
  # Each example's loss depends on that example only.
  pred2 = pred.copy()
  pred2[0] += 1.0
  got2 = np.asarray(losses.mean_squared_error(jnp.asarray(eps), jnp.asarray(pred2)))
  np.testing.assert_array_equal(got2[1:], np.asarray(got)[1:])
  assert got2[0] != got[0]
