"""The continuous-time view of a discrete schedule: knots, beta(s), and the SDE/ODE drifts checked
against the Fokker-Planck and continuity equations of the exact Gaussian-mixture marginals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import continuous_time, oracles, schedules

SCHEDULES = [("linear", 1000), ("cosine", 1000), ("quad", 7), ("linear", 1)]


def _sched(name: str, num_timesteps: int):
  betas = schedules.get_beta_schedule(name, num_timesteps)
  return betas, schedules.make_schedule(betas)


@jax.jit
def _curves(sched: schedules.Schedule, s: jax.Array) -> dict[str, jax.Array]:
  """Every function of s at once (one compilation per shape; eager calls compile op by op)."""
  return dict(
    index=continuous_time.index_of(sched, s),
    log_alpha_bar=continuous_time.log_alpha_bar(sched, s),
    alpha_bar=continuous_time.alpha_bar(sched, s),
    one_minus_alpha_bar=continuous_time.one_minus_alpha_bar(sched, s),
    beta=continuous_time.beta(sched, s),
  )


def _knot_times(num_timesteps: int) -> np.ndarray:
  """s_t = (t + 1) / T as `continuous_time.time_of` computes it, in float32."""
  return np.asarray(
    continuous_time.time_of(_sched("linear", num_timesteps)[1], np.arange(num_timesteps))
  )


def _log_knots(betas: np.ndarray) -> np.ndarray:
  """log alpha-bar at s = 0, 1/T, ..., 1 in float64, [T + 1]."""
  return np.concatenate([[0.0], np.cumsum(np.log1p(-betas))])


def _slack(knots: np.ndarray, at_knots: bool) -> np.ndarray:
  """Allowed error of log alpha-bar at each knot 1..T or interval midpoint: float32 s T is ~1e-4
  off, which moves it by 1e-4 of the rise of the interval (either neighbour, at a knot) - large at
  the cosine schedule's last step - plus float32 rounding."""
  rise = np.abs(np.diff(knots))
  if at_knots:
    rise = np.maximum(rise, np.append(rise[1:], 0.0))
  return 1e-5 * np.abs(knots[1:]) + 2e-4 * rise + 1e-6


@pytest.mark.parametrize("name, num_timesteps", SCHEDULES)
def test_alpha_bar_hits_the_discrete_schedule_at_the_knots(name, num_timesteps):
  betas, sched = _sched(name, num_timesteps)
  knots = _log_knots(betas)
  s_t = _knot_times(num_timesteps)
  np.testing.assert_allclose(s_t, (np.arange(num_timesteps) + 1) / num_timesteps, rtol=1e-6)
  at_knots = _curves(sched, s_t)
  np.testing.assert_allclose(at_knots["index"], np.arange(num_timesteps), atol=1e-3)
  np.testing.assert_array_less(np.abs(at_knots["log_alpha_bar"] - knots[1:]), _slack(knots, True))
  np.testing.assert_allclose(at_knots["alpha_bar"], np.exp(knots[1:]), rtol=1e-3)
  np.testing.assert_allclose(
    at_knots["one_minus_alpha_bar"], -np.expm1(knots[1:]), rtol=2e-3, atol=1e-7
  )
  # log alpha-bar is linear in between: at midpoints, the mean of the neighbouring knots' logs;
  # and s = 0 is clean data.
  mid = _curves(sched, np.concatenate([[0.0], s_t[:-1]]) + 0.5 / num_timesteps)
  mid_error = np.abs(mid["log_alpha_bar"] - (knots[:-1] + knots[1:]) / 2)
  np.testing.assert_array_less(mid_error, _slack(knots, False))
  np.testing.assert_allclose(_curves(sched, np.zeros(num_timesteps))["alpha_bar"], 1.0)


@pytest.mark.parametrize("name, num_timesteps", SCHEDULES)
def test_time_of_log_alpha_bar_inverts_log_alpha_bar(name, num_timesteps):
  _, sched = _sched(name, num_timesteps)
  s = np.random.default_rng(0).uniform(0.0, 1.0, size=num_timesteps).astype(np.float32)
  inverted = jax.jit(continuous_time.time_of_log_alpha_bar)(
    sched, _curves(sched, s)["log_alpha_bar"]
  )
  np.testing.assert_allclose(inverted, s, atol=2e-6)


@pytest.mark.parametrize("name, num_timesteps", SCHEDULES)
def test_beta_is_the_piecewise_constant_slope(name, num_timesteps):
  """beta = -T log(1 - beta_t) on (s_{t-1}, s_t], constant there, equal to -d log alpha-bar / ds."""
  betas, sched = _sched(name, num_timesteps)
  expected = -num_timesteps * np.log1p(-betas)
  upper = _knot_times(num_timesteps)
  for offset in (0.0, 0.01, 0.5, 0.99):  # the knot itself (left-continuous) and inside
    beta_s = _curves(sched, upper - offset / num_timesteps)["beta"]
    np.testing.assert_allclose(beta_s, expected, rtol=1e-3, atol=1e-6)
  # Central differences of log alpha-bar inside each interval.
  mid, h = upper - 0.5 / num_timesteps, 0.25 / num_timesteps
  lower_half, upper_half = _curves(sched, mid - h), _curves(sched, mid + h)
  slope = (lower_half["log_alpha_bar"] - upper_half["log_alpha_bar"]) / (2 * h)
  np.testing.assert_allclose(slope, _curves(sched, mid)["beta"], rtol=2e-3, atol=1e-3)


def test_linear_schedule_beta_is_about_T_beta_t():
  """-T log(1 - beta_t) = T beta_t (1 + beta_t / 2 + ...): within 1.1% for beta_t <= 0.02."""
  betas, sched = _sched("linear", 1000)
  beta_s = np.asarray(_curves(sched, _knot_times(1000))["beta"])
  rel = beta_s / (1000 * betas) - 1
  assert np.all(np.abs(rel) < betas / 2 + 1e-3)
  np.testing.assert_allclose(beta_s[[0, -1]], [0.1, 20.0], rtol=0.011)


# --- drifts against the exact marginals -----------------------------------------------------------

MIX = oracles.GaussianMixture(
  weights=jnp.array([0.3, 0.7]),
  means=jnp.array([[-1.0, 0.5], [1.0, -0.5]]),
  variances=jnp.array([0.1, 0.3]),
)
SCHED = _sched("linear", 1000)[1]
S = 0.3137  # inside the interval (0.313, 0.314], away from the knots


def _log_q(x_D: jax.Array, s: jax.Array) -> jax.Array:
  return MIX.log_prob_t(x_D[None], continuous_time.alpha_bar(SCHED, s))[0]


@jax.jit
def _fokker_planck_terms(x_ND: jax.Array):
  """Per point at s = S: d/ds log q_s, grad log q_s, its Laplacian, the probability-flow drift, its
  divergence and its lambda = log alpha-bar form, the reverse-SDE drift, the score; and beta(S)."""
  eps_fn = oracles.eps_fn_for(MIX, SCHED)
  d_ds = jax.vmap(jax.grad(_log_q, argnums=1), in_axes=(0, None))(x_ND, S)
  grad = jax.vmap(jax.grad(_log_q), in_axes=(0, None))(x_ND, S)
  laplacian = jax.vmap(lambda x_D: jnp.trace(jax.hessian(_log_q)(x_D, S)))(x_ND)
  pf = continuous_time.pf_ode_drift(eps_fn, SCHED, x_ND, S)
  pf_jac = jax.vmap(
    jax.jacfwd(lambda x_D: continuous_time.pf_ode_drift(eps_fn, SCHED, x_D[None], S)[0])
  )
  pf_div = jnp.trace(pf_jac(x_ND), axis1=1, axis2=2)
  pf_lam = continuous_time.pf_ode_drift_log_alpha_bar(
    eps_fn, SCHED, x_ND, continuous_time.log_alpha_bar(SCHED, S)
  )
  reverse = continuous_time.reverse_sde_drift(eps_fn, SCHED, x_ND, S)
  score = continuous_time.score(eps_fn, SCHED, x_ND, S)
  return d_ds, grad, laplacian, pf, pf_div, pf_lam, reverse, score, continuous_time.beta(SCHED, S)


def test_drifts_transport_the_exact_marginals():
  """With eps* exact, at s = S and mixture marginals q_s:
  forward SDE (f = -1/2 beta x, g^2 = beta), Fokker-Planck in log form:
    d log q / ds = -div f - f . grad log q + 1/2 beta (lap log q + |grad log q|^2);
  probability-flow ODE (Song et al. eq. 13), continuity: d log q / ds = -div f_pf - f_pf . grad;
  reverse SDE drift f - g^2 grad log q (eq. 6); and the score -eps / sqrt(1 - alpha-bar(s))."""
  rng = np.random.default_rng(0)
  x = np.concatenate([rng.normal(size=(32, 2)) * 0.4 + [1.0, -0.5], rng.normal(size=(32, 2)) * 1.5])
  terms = (np.asarray(a, np.float64) for a in _fokker_planck_terms(jnp.asarray(x, jnp.float32)))
  d_ds, grad, laplacian, pf, pf_div, pf_lam, reverse, score, b = terms
  f = -0.5 * b * x
  div_f = -0.5 * b * x.shape[1]
  fokker_planck = (
    -div_f - np.sum(f * grad, axis=1) + 0.5 * b * (laplacian + np.sum(grad**2, axis=1))
  )
  np.testing.assert_allclose(d_ds, fokker_planck, rtol=1e-3, atol=1e-3)
  np.testing.assert_allclose(d_ds, -pf_div - np.sum(pf * grad, axis=1), rtol=1e-3, atol=1e-3)
  np.testing.assert_allclose(pf, f - 0.5 * b * grad, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(pf_lam, pf / -b, rtol=1e-4, atol=1e-5)  # dlambda/ds = -beta
  np.testing.assert_allclose(reverse, f - b * grad, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(score, grad, rtol=1e-4, atol=1e-4)
