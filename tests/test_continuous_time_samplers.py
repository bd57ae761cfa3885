"""Probability-flow ODE and reverse-SDE samplers driven by the exact Gaussian-mixture oracle.

With eps* exact, every sampler's output law is q_{s_min} (= q_0 up to a ~1e-4 noise level) plus its
discretisation error, so samples are compared with true mixture samples: the share of points
nearest each mean, per-component averages of x and of |x - mu_k|^2 / D, each to Z standard errors of
the difference against a large true sample; and the sliced Wasserstein-1 distance to a true set,
below a threshold calibrated from true-vs-true distances. Solver accuracy is checked against fine
reference solutions.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import continuous_time, ode_solvers, oracles, samplers, schedules

Z = 5.0  # standard errors allowed: a false failure has probability ~6e-7 per check
N = 4096  # samples per sampler
N_BIG = 100_000  # true samples behind the reference statistics
NUM_NULL = 20  # true-vs-true sliced Wasserstein distances behind the threshold
SCHED = schedules.make_schedule(schedules.get_beta_schedule("linear", 1000))  # the DDPM paper's


def _mixture_16d() -> oracles.GaussianMixture:
  """Four components in R^16 with means 4 apart in random directions (pairwise distances ~5-7)."""
  mu = np.random.default_rng(0).normal(size=(4, 16))
  mu = 4.0 * mu / np.linalg.norm(mu, axis=1, keepdims=True)
  return oracles.GaussianMixture(
    weights=jnp.array([0.1, 0.2, 0.3, 0.4]),
    means=jnp.asarray(mu, jnp.float32),
    variances=jnp.array([0.05, 0.1, 0.2, 0.3]),
  )


MIXTURES = {
  2: oracles.GaussianMixture(
    weights=jnp.array([0.2, 0.5, 0.3]),
    means=jnp.array([[-1.0, 0.0], [1.0, 1.0], [0.5, -1.0]]),
    variances=jnp.array([0.04, 0.09, 0.02]),
  ),
  16: _mixture_16d(),
}

# Step counts where each sampler's bias is below what N samples resolve (5 standard errors are
# ~15% of a 2-D component's variance). Measured with 32k samples, the narrow components'
# variances come out within +7% (Euler), 4% (Heun, adaptive, Euler-Maruyama), 7% (PC).
SPECS = {
  "euler": samplers.SamplerSpec("ode_euler", steps=500),
  "heun": samplers.SamplerSpec("ode_heun", steps=50),
  "adaptive": samplers.SamplerSpec("ode_adaptive"),
  "euler_maruyama": samplers.SamplerSpec("sde", steps=500),
  "predictor_corrector": samplers.SamplerSpec("sde", steps=200, corrector_steps=1, snr=0.1),
}


@functools.partial(jax.jit, static_argnums=2)
def _sliced_wasserstein(a_ND: jax.Array, b_ND: jax.Array, num_directions: int = 64) -> jax.Array:
  """Mean over fixed random unit directions of the 1-D Wasserstein-1 distance of the projections."""
  dirs = jax.random.normal(jax.random.key(99), (a_ND.shape[1], num_directions))
  dirs = dirs / jnp.linalg.norm(dirs, axis=0, keepdims=True)
  return jnp.mean(jnp.abs(jnp.sort(a_ND @ dirs, axis=0) - jnp.sort(b_ND @ dirs, axis=0)))


def _per_component(x_ND: np.ndarray, means_KD: np.ndarray):
  """Nearest-mean shares [K], and per component the mean and standard error of x and of
  |x - mu_k|^2 / D: lists of ([D + 1] average, [D + 1] standard error)."""
  sq_NK = np.sum(np.square(x_ND[:, None, :] - means_KD[None]), axis=-1)
  nearest = np.argmin(sq_NK, axis=1)
  shares = np.bincount(nearest, minlength=means_KD.shape[0]) / x_ND.shape[0]
  stats = []
  for k in range(means_KD.shape[0]):
    mine = nearest == k
    g = np.concatenate([x_ND[mine], sq_NK[mine, k : k + 1] / x_ND.shape[1]], axis=1)
    stats.append((g.mean(axis=0), g.std(axis=0) / np.sqrt(mine.sum())))
  return shares, stats


_sample_true = jax.jit(oracles.GaussianMixture.sample, static_argnums=2)


@functools.cache
def _reference(dim: int):
  """The true mixture's `_per_component` statistics, and the sliced-Wasserstein test set and
  threshold: mean + Z std of NUM_NULL distances between fresh true sets and the test set."""
  mix = MIXTURES[dim]
  big = np.asarray(_sample_true(mix, jax.random.key(1000), N_BIG), np.float64)
  test_set = _sample_true(mix, jax.random.key(1001), N)
  null_sets = _sample_true(mix, jax.random.key(1002), NUM_NULL * N).reshape(NUM_NULL, N, dim)
  null = np.asarray(jax.vmap(_sliced_wasserstein, in_axes=(0, None))(null_sets, test_set))
  threshold = null.mean() + Z * null.std()
  return _per_component(big, np.asarray(mix.means, np.float64)), test_set, threshold


@functools.cache
def _jitted(name: str, dim: int):
  return jax.jit(
    lambda mix, key: (
      samplers.sample(oracles.eps_fn_for(mix, SCHED), SCHED, (N, dim), key, SPECS[name]).x
    )
  )


@pytest.mark.parametrize("dim", [2, 16])
@pytest.mark.parametrize("name", list(SPECS))
def test_sampler_reproduces_the_mixture(name, dim):
  mix = MIXTURES[dim]
  x = _jitted(name, dim)(mix, jax.random.key(7))
  (ref_shares, ref_stats), test_set, threshold = _reference(dim)
  x64 = np.asarray(x, np.float64)
  assert np.all(np.isfinite(x64))

  shares, stats = _per_component(x64, np.asarray(mix.means, np.float64))
  share_se = np.sqrt(ref_shares * (1 - ref_shares) * (1 / N + 1 / N_BIG))
  np.testing.assert_array_less(np.abs(shares - ref_shares), Z * share_se)
  for (avg, se), (ref_avg, ref_se) in zip(stats, ref_stats, strict=True):
    np.testing.assert_array_less(np.abs(avg - ref_avg), Z * np.sqrt(se**2 + ref_se**2))
  assert float(_sliced_wasserstein(x, test_set)) < threshold


def test_sampler_keys_determine_samples():
  run = _jitted("euler_maruyama", 2)
  a, b, c = (np.asarray(run(MIXTURES[2], jax.random.key(k))) for k in (3, 3, 4))
  np.testing.assert_array_equal(a, b)
  assert np.all(a != c)


# --- ODE solver accuracy --------------------------------------------------------------------------


def _pf_ode(mix: oracles.GaussianMixture):
  """dx/dlambda of the probability-flow ODE under SCHED with the exact oracle."""
  return lambda x, lam: continuous_time.pf_ode_drift_log_alpha_bar(
    oracles.eps_fn_for(mix, SCHED), SCHED, x, lam
  )


@functools.cache
def _fixed_step(method: str, num_steps: int):
  """Jitted fixed-step solve of the probability-flow ODE from s = 1 to 1/T."""
  grid = continuous_time.log_alpha_bar_grid(SCHED, num_steps)
  return jax.jit(lambda mix, x_1: ode_solvers.solve(_pf_ode(mix), x_1, grid, method=method))


# Wider components than MIXTURES[2]: its 0.02-variance one makes the ODE stiff near s = 0, where
# Euler needs 256+ steps before it converges at its order.
WIDE = oracles.GaussianMixture(
  weights=jnp.array([0.4, 0.6]),
  means=jnp.array([[-1.0, 0.5], [1.0, -0.5]]),
  variances=jnp.array([0.2, 0.3]),
)


@functools.cache
def _reference_solution():
  """x(1) for 256 points and their x(1/T) from 4096 Heun steps (error ~1e-7)."""
  x_1 = jax.random.normal(jax.random.key(0), (256, 2))
  return x_1, _fixed_step("heun", 4096)(WIDE, x_1)[0]


@pytest.mark.parametrize("method, order", [("euler", 1), ("heun", 2)])
def test_fixed_step_convergence_order(method, order):
  """Doubling the steps divides the error against the fine solution by ~2^order."""
  x_1, reference = _reference_solution()
  steps = (16, 32, 64) if method == "euler" else (8, 16, 32)
  errors = []
  for n in steps:
    x, nfe = _fixed_step(method, n)(WIDE, x_1)
    assert int(nfe) == n * order
    errors.append(float(jnp.max(jnp.abs(x - reference))))
  ratios = np.array(errors[:-1]) / np.array(errors[1:])
  lo, hi = (1.8, 2.2) if order == 1 else (3.6, 4.6)
  assert np.all((ratios > lo) & (ratios < hi)), (errors, ratios)


@jax.jit
def _adaptive(mix, x, lam_start, lam_end, tol):
  return ode_solvers.adaptive(_pf_ode(mix), x, lam_start, lam_end, rtol=tol, atol=tol)


def test_ode_forward_then_backward_returns_the_start():
  """Data -> noise -> data with a tight tolerance is the identity map, up to the solver error."""
  x_0 = MIXTURES[2].sample(jax.random.key(1), 256)
  lam_min, lam_1 = continuous_time.log_alpha_bar_grid(SCHED, 1)[::-1]
  x_1, _ = _adaptive(MIXTURES[2], x_0, lam_min, lam_1, 1e-6)
  back, _ = _adaptive(MIXTURES[2], x_1, lam_1, lam_min, 1e-6)
  assert 0.9 < float(jnp.std(x_1)) < 1.1  # it did reach (near-Gaussian) noise
  np.testing.assert_allclose(back, x_0, atol=1e-4)


def test_adaptive_nfe_grows_and_error_shrinks_with_tighter_tolerance():
  """Per decade of tolerance the NFE is not always monotone (step-size control near the stiff end
  at s ~ 0), so tolerances two decades apart."""
  x_1, reference = _reference_solution()
  lam_1, lam_min = continuous_time.log_alpha_bar_grid(SCHED, 1)
  nfes, errors = [], []
  for tol in (1e-2, 1e-4, 1e-6):
    x, nfe = _adaptive(WIDE, x_1, lam_1, lam_min, tol)
    nfes.append(int(nfe))
    errors.append(float(jnp.max(jnp.abs(x - reference))))
  assert nfes[0] < nfes[1] < nfes[2], nfes
  assert errors[0] > errors[1] > errors[2], errors
  assert errors[2] < 1e-5
  assert all((nfe - 1) % 6 == 0 for nfe in nfes)  # 1 + 6 per attempted step


def test_adaptive_nfe_counts_drift_calls_and_solves_a_linear_ode():
  """On dy/ds = -y the count of drift evaluations seen by the host equals the reported NFE."""
  calls = []

  def drift(y, s):
    jax.debug.callback(lambda: calls.append(1))
    return -y

  y, nfe = jax.jit(lambda y0: ode_solvers.adaptive(drift, y0, 0.0, 2.0, rtol=1e-6, atol=1e-6))(
    jnp.ones((3,))
  )
  jax.effects_barrier()
  assert len(calls) == int(nfe)
  np.testing.assert_allclose(y, np.exp(-2.0), rtol=1e-5)
