"""DDIM (eq. 12) against ancestral sampling and exact Gaussian-mixture oracles.

Schedule: DDPM's linear one, T = 1000 (indices t = 0..T-1 stand for the paper's t + 1). The
mixture-quality helpers here are shared with `test_dpm_solver`.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import oracles, samplers, schedules
from diffusion_jax.samplers import chain, timesteps
from tests.test_ancestral import ancestral, predicted_output_law

T = 1000
BETAS = schedules.get_beta_schedule("linear", T)
SCHED = schedules.make_schedule(BETAS)
N = 8192  # samples per distribution check
Z = 5.0  # standard errors allowed: a false failure has probability ~6e-7 per check


def _mixture(weights, means, stds):
  return oracles.GaussianMixture(
    weights=jnp.asarray(weights, jnp.float32),
    means=jnp.asarray(means, jnp.float32),
    variances=jnp.square(jnp.asarray(stds, jnp.float32)),
  )


def _unit_rows(num, dim, seed):
  rows = np.random.default_rng(seed).normal(size=(num, dim))
  return rows / np.linalg.norm(rows, axis=1, keepdims=True)


GAUSS_MU, GAUSS_S = np.array([0.5, -1.0]), 0.3
GAUSS = _mixture([1.0], GAUSS_MU[None], [GAUSS_S])
# 2D: the mixture of test_sampling. 16D: three components 1.8 to 2.5 apart, means 1.5 from 0.
MIX2 = _mixture([0.25, 0.75], [[-1.0, -0.5], [1.0, 0.5]], [0.2, 0.3])
MIX16 = _mixture([0.2, 0.3, 0.5], 1.5 * _unit_rows(3, 16, seed=0), [0.2, 0.3, 0.25])
MIXES = dict(gauss=GAUSS, d2=MIX2, d16=MIX16)
EPS = {name: oracles.eps_fn_for(mix, SCHED) for name, mix in MIXES.items()}


def ddim_sample(
  eps_fn, sched, shape, key, *, timesteps, eta=0.0, clip_x0=True, x_T=None, trajectory_every=0
):
  """DDIM on a subsequence: x0, or (x0, trajectory) when one is recorded."""
  spec = samplers.SamplerSpec("ddim", timesteps=timesteps, eta=eta, clip_x0=clip_x0)
  result = samplers.sample(
    eps_fn, sched, shape, key, spec, x_T=x_T, trajectory_every=trajectory_every
  )
  return (result.x, result.trajectory) if trajectory_every else result.x


def respaced_ancestral(eps_fn, sched, shape, key, *, timesteps, variance, clip_x0):
  spec = samplers.SamplerSpec("ancestral", timesteps=timesteps, variance=variance, clip_x0=clip_x0)
  return samplers.sample(eps_fn, sched, shape, key, spec).x


# Compiled once per (eps_fn, shape, static options), with the schedule a traced argument.
jit_ddim = jax.jit(
  ddim_sample,
  static_argnums=(0, 2),
  static_argnames=("timesteps", "eta", "clip_x0", "trajectory_every"),
)
jit_sample = jax.jit(
  ancestral,
  static_argnums=(0, 2),
  static_argnames=("variance", "clip_x0", "trajectory_every"),
)
jit_respaced = jax.jit(
  respaced_ancestral,
  static_argnums=(0, 2),
  static_argnames=("timesteps", "variance", "clip_x0"),
)


# --- mixture quality (shared with test_dpm_solver) ------------------------------------------------


def sliced_w1(x, y, num_dirs=128):
  """Sliced 1-Wasserstein distance of equal-size samples x, y [N, D], over fixed directions."""
  dirs = _unit_rows(num_dirs, x.shape[1], seed=1)
  return float(np.mean(np.abs(np.sort(x @ dirs.T, axis=0) - np.sort(y @ dirs.T, axis=0))))


@functools.cache
def sw_threshold(name, std_tol, mean_tol, n=N, pairs=8):
  """What a mixture off by the allowed errors (stds times 1 + std_tol, means moved by mean_tol std_k
  along the first axis) scores against true samples, plus Z standard deviations: the mean and
  spread of SW1 over `pairs` independent pairs of n-sample sets (zero errors: two true-sample
  sets)."""
  mix = MIXES[name]
  std_K = jnp.sqrt(mix.variances)
  off = mix.replace(
    means=mix.means.at[:, 0].add(mean_tol * std_K), variances=mix.variances * (1.0 + std_tol) ** 2
  )
  keys = jax.random.split(jax.random.key(1234), 2 * pairs)
  scores = [
    sliced_w1(np.asarray(off.sample(keys[2 * i], n)), np.asarray(mix.sample(keys[2 * i + 1], n)))
    for i in range(pairs)
  ]
  return float(np.mean(scores) + Z * np.std(scores, ddof=1))


def mixture_report(x, name):
  """Component shares (nearest mean), per-component mean error / std and std ratio, and SW1."""
  mix = MIXES[name]
  means, stds = np.asarray(mix.means, np.float64), np.sqrt(np.asarray(mix.variances, np.float64))
  label = np.argmin(np.sum((x[:, None, :] - means[None]) ** 2, axis=-1), axis=1)
  comps = [x[label == k] for k in range(len(stds))]
  truth = np.asarray(mix.sample(jax.random.key(99), len(x)), np.float64)
  return dict(
    share=np.array([len(c) / len(x) for c in comps]),
    count=np.array([len(c) for c in comps]),
    mean_err=np.array(
      [np.max(np.abs(c.mean(0) - m)) / s for c, m, s in zip(comps, means, stds, strict=True)]
    ),
    std_ratio=np.array([np.sqrt(np.mean(c.var(0))) / s for c, s in zip(comps, stds, strict=True)]),
    sw=sliced_w1(x, truth),
  )


def assert_reproduces_mixture(x, name, *, std_tol, mean_tol):
  """Samples x [N, D] against mixture `name`, to Z standard errors plus a discretisation allowance.

  Shares: binomial SE plus 0.01 (the largest shift measured at N = 2^18 was 0.009, DPM-Solver at 10
  steps). Component means, per coordinate: SE std_k / sqrt(n_k) plus mean_tol std_k. Component
  stds (pooled over coordinates): relative SE 1 / sqrt(2 n_k D) plus std_tol. SW1 to true samples:
  below `sw_threshold` for these allowances.
  """
  x = np.asarray(x, np.float64)
  assert np.all(np.isfinite(x))
  mix, dim = MIXES[name], x.shape[1]
  weights = np.asarray(mix.weights, np.float64)
  rep = mixture_report(x, name)
  share_se = np.sqrt(weights * (1 - weights) / len(x))
  np.testing.assert_array_less(np.abs(rep["share"] - weights), Z * share_se + 0.01)
  np.testing.assert_array_less(rep["mean_err"], Z / np.sqrt(rep["count"]) + mean_tol)
  np.testing.assert_array_less(
    np.abs(rep["std_ratio"] - 1), Z / np.sqrt(2 * rep["count"] * dim) + std_tol
  )
  threshold = sw_threshold(name, std_tol, mean_tol)
  assert rep["sw"] < threshold, (rep["sw"], threshold)


# --- eta = 1 is ancestral sampling ----------------------------------------------------------------

N_FULL = 4096  # samples for the 1000-step runs, one shape so that their compilations are shared


def test_eta_one_on_the_full_chain_is_ancestral_fixedsmall_pathwise():
  """x_T and the step noise are drawn from the same keys, so the paths coincide up to float32
  round-off (measured <= 8e-5 after 1000 steps). Gaussian data, whose reverse steps contract; with
  the mixture, paths near the boundary between components amplify round-off (median 3e-5, max
  0.02)."""
  key, shape = jax.random.key(4), (N_FULL, 2)
  want = jit_sample(EPS["gauss"], SCHED, shape, key, variance="fixedsmall", clip_x0=False)
  got = jit_ddim(EPS["gauss"], SCHED, shape, key, timesteps=tuple(range(T)), eta=1.0, clip_x0=False)
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-4)


def test_eta_one_on_the_full_chain_has_the_ancestral_law():
  """Gaussian data N(mu, s^2 I): DDIM eta = 1 against the exact output law of ancestral sampling
  with beta-tilde (test_sampling's float64 recursion; std 1.25% below s), and against ancestral
  samples drawn with another key (two-sample: moments to Z SE of a difference, SW1 below the
  calibrated two-true-sample level)."""
  n, kw = N_FULL, dict(clip_x0=False)
  x = np.asarray(
    jit_ddim(
      EPS["gauss"], SCHED, (n, 2), jax.random.key(5), timesteps=tuple(range(T)), eta=1.0, **kw
    ),
    np.float64,
  )
  y = np.asarray(
    jit_sample(EPS["gauss"], SCHED, (n, 2), jax.random.key(6), variance="fixedsmall", **kw),
    np.float64,
  )
  m, std = predicted_output_law(BETAS, GAUSS_MU, GAUSS_S, "fixedsmall")
  assert -0.02 < std / GAUSS_S - 1 < -0.005
  np.testing.assert_allclose(x.mean(0), m, rtol=0, atol=Z * std / math.sqrt(n))
  np.testing.assert_allclose(x.std(0), std, rtol=0, atol=Z * std / math.sqrt(2 * n))
  np.testing.assert_allclose(x.mean(0), y.mean(0), rtol=0, atol=Z * std * math.sqrt(2 / n))
  np.testing.assert_allclose(x.std(0), y.std(0), rtol=0, atol=Z * std / math.sqrt(n))
  distance, threshold = sliced_w1(x, y), sw_threshold("gauss", 0.0, 0.0, n)
  assert distance < threshold, (distance, threshold)


def test_eta_one_on_a_subsequence_is_ancestral_on_the_respaced_chain():
  """50 uniform steps, x0 clipped (active: the second coordinate has mean -1): DDIM eta = 1 is
  ancestral sampling with `fixedsmall` on the respaced chain, path by path for the same key."""
  taus = timesteps.timestep_subsequence(T, 50)
  key, shape = jax.random.key(7), (1024, 2)
  want = np.asarray(
    jit_respaced(
      EPS["gauss"], SCHED, shape, key, timesteps=taus, variance="fixedsmall", clip_x0=True
    )
  )
  got = jit_ddim(EPS["gauss"], SCHED, shape, key, timesteps=taus, eta=1.0, clip_x0=True)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
  assert np.mean(want[:, 1] == -1.0) > 0.1


def test_trajectory_keeps_x_T_and_every_kth_step():
  """As in `sample`: x_T, then the state after each step whose index i - 1 is a multiple of k, the
  last being x0; recording changes no sample."""
  taus = timesteps.timestep_subsequence(T, 10)
  key, shape = jax.random.key(13), (64, 2)
  run = functools.partial(ddim_sample, EPS["d2"], SCHED, shape, key, timesteps=taus, eta=0.5)
  x0 = np.asarray(run())
  x0_1, every1 = run(trajectory_every=1)
  x0_3, every3 = run(trajectory_every=3)
  assert every1.shape == (11, *shape)
  assert every3.shape == (chain.num_trajectory_frames(10, 3), *shape)
  np.testing.assert_array_equal(every1[0], jax.random.normal(jax.random.split(key)[0], shape))
  for x in (x0_1, x0_3, every1[-1]):
    np.testing.assert_array_equal(x, x0)
  # every1[1 + 9 - j] follows step index j; every3 keeps j = 9, 6, 3, 0.
  np.testing.assert_array_equal(every3, every1[np.array([0, 1, 4, 7, 10])])


# --- determinism ----------------------------------------------------------------------------------

QUAD50 = timesteps.timestep_subsequence(T, 50, "quad")


def test_eta_zero_is_a_deterministic_map_of_x_T():
  """Same x_T, any key: the same x0, bit for bit; without x_T, x_T is drawn from split(key)[0]."""
  key = jax.random.key(8)
  x_T = jax.random.normal(jax.random.split(key)[0], (N, 2))
  run = functools.partial(
    jit_ddim, EPS["d2"], SCHED, (N, 2), timesteps=QUAD50, eta=0.0, clip_x0=False
  )
  a = np.asarray(run(key))
  np.testing.assert_array_equal(run(key, x_T=x_T), a)
  np.testing.assert_array_equal(run(jax.random.key(9), x_T=x_T), a)


def test_eta_above_zero_adds_noise_from_the_key():
  key, x_T = jax.random.key(10), jax.random.normal(jax.random.key(11), (N, 2))
  run = functools.partial(
    jit_ddim, EPS["d2"], SCHED, (N, 2), timesteps=QUAD50, eta=0.5, clip_x0=False
  )
  a, b = np.asarray(run(key, x_T=x_T)), np.asarray(run(jax.random.key(12), x_T=x_T))
  np.testing.assert_array_equal(run(key, x_T=x_T), a)
  assert np.all(a != b)
  assert np.mean(np.abs(a - b)) > 0.05


def test_bad_eta_is_rejected():
  for eta in (-0.1, 1.5):
    with pytest.raises(ValueError, match="eta"):
      ddim_sample(EPS["d2"], SCHED, (4, 2), jax.random.key(0), timesteps=QUAD50, eta=eta)


# --- mixture quality ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["d2", "d16"])
@pytest.mark.parametrize(
  "eta, steps, std_tol",
  [(0.0, 50, 0.05), (1.0, 100, 0.06)],
  ids=["eta0-50", "eta1-100"],
)
def test_ddim_reproduces_the_mixture(name, eta, steps, std_tol):
  """Quad spacing. Biases measured at N = 2^18 (2D) / 2^16 (16D): eta = 0, 50 steps: component stds
  -1% to -4%, means off by <= 0.09 std_k (the deterministic sampler's discretisation error); eta =
  1, 100 steps: stds -3.5% to -4.5% (beta-tilde omits the Var[x0 | x_t] term, more so for long
  steps), means <= 0.03 std_k. With uniform spacing the std biases are twice as large or more."""
  dim = MIXES[name].dim
  taus = timesteps.timestep_subsequence(T, steps, "quad")
  x = jit_ddim(
    EPS[name], SCHED, (N, dim), jax.random.key(8), timesteps=taus, eta=eta, clip_x0=False
  )
  assert_reproduces_mixture(x, name, std_tol=std_tol, mean_tol=0.15)
