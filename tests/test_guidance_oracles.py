"""Guidance proven on the exact class-conditional Gaussian-mixture oracle: conditional sampling
reproduces each class for every sampler, classifier-free guidance follows the probability-flow ODE
of the tilted score (1 + w) grad log p_t(x | c) - w grad log p_t(x) as an independent float64
NumPy integration does, and classifier guidance with the exact p_t(y | x) at scale 1 turns the
unconditional oracle into the conditional one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from diffusion_jax import guidance, oracles, parametrization, samplers, schedules
from diffusion_jax.samplers import noise, registry
from tests.test_samplers import SPECS

# Two classes, each a mixture of two Gaussians in 2D; label 2 is the null class.
MIXTURE = oracles.ClassMixture(
  priors=np.array([0.3, 0.7], np.float32),
  weights=np.array([[0.4, 0.6], [0.5, 0.5]], np.float32),
  means=np.array([[[-1.5, 0.5], [-1.0, -0.8]], [[1.2, 0.6], [1.5, -0.5]]], np.float32),
  variances=np.array([[0.04, 0.06], [0.05, 0.03]], np.float32),
)
BETAS = schedules.get_beta_schedule("linear", 1000)
SCHED = schedules.make_schedule(BETAS)


def _nearest_component(x):
  """(class, component) of the nearest mean, each [N]."""
  means = np.asarray(MIXTURE.means).reshape(4, 2)
  nearest = np.argmin(((x[:, None] - means[None]) ** 2).sum(-1), axis=1)
  return nearest // 2, nearest % 2


@pytest.mark.parametrize("spec, _", SPECS, ids=lambda v: getattr(v, "name", ""))
def test_conditional_sampling_reproduces_each_class(spec, _):
  """w = 0: samples of label c follow q_0(x | c): all near c's components, in c's proportions,
  with their means and spreads."""
  n = 3000
  y = np.arange(n, dtype=np.int32) % 2
  network = guidance.with_labels(oracles.conditional_eps_fn_for(MIXTURE, SCHED), y)
  x = np.asarray(
    jax.jit(lambda k: samplers.sample(network, SCHED, (n, 2), k, spec).x)(jax.random.key(1))
  )
  for c in range(2):
    cls, comp = _nearest_component(x[y == c])
    assert np.mean(cls == c) > 0.995
    share, w = comp.mean(), float(MIXTURE.weights[c, 1])
    assert abs(share - w) < 5 * np.sqrt(w * (1 - w) / len(comp)) + 0.02, (c, share)
    for k in range(2):
      points = x[y == c][comp == k]
      np.testing.assert_allclose(points.mean(0), MIXTURE.means[c, k], atol=0.05)
      ratio = points.std(0) / np.sqrt(MIXTURE.variances[c, k])
      assert np.all((0.8 < ratio) & (ratio < 1.25)), (c, k, ratio)


# --- an independent float64 NumPy reference ---------------------------------------------------


def _np_score(x, abar, classes):
  """grad log of sum over the listed (class, component) pairs of pi w N(sqrt(abar) mu, v I), in
  float64: classes is a list of the classes included (both: the unconditional score)."""
  m = MIXTURE
  pi, w, mu, var = (np.asarray(a, np.float64) for a in (m.priors, m.weights, m.means, m.variances))
  logs, grads = [], []
  for c in classes:
    for k in range(2):
      v = abar * var[c, k] + 1 - abar
      d = x - np.sqrt(abar) * mu[c, k]
      logs.append(np.log(pi[c] * w[c, k]) - np.log(2 * np.pi * v) - 0.5 * (d**2).sum(1) / v)
      grads.append(-d / v)
  r = np.exp(np.stack(logs, 1) - special.logsumexp(np.stack(logs, 1), axis=1, keepdims=True))
  return np.einsum("nm,mnd->nd", r, np.stack(grads))


def _np_guided_ode(x_T, y, w, num_steps=2000):
  """RK4 on dx/dlambda = (x + score~) / 2, lambda = log alpha-bar from alpha-bar_{T-1} to
  alpha-bar_0, score~ = (1 + w) grad log q_t(x | y) - w grad log q_t(x)."""
  abar = np.cumprod(1.0 - BETAS)

  def drift(x, lam):
    a = np.exp(lam)
    cond = np.empty_like(x)
    for c in (0, 1):
      cond[y == c] = _np_score(x[y == c], a, [c])
    return 0.5 * (x + (1 + w) * cond - w * _np_score(x, a, [0, 1]))

  lams = np.linspace(np.log(abar[-1]), np.log(abar[0]), num_steps + 1)
  x = np.asarray(x_T, np.float64)
  for lo, hi in zip(lams[:-1], lams[1:], strict=True):
    h = hi - lo
    k1 = drift(x, lo)
    k2 = drift(x + h / 2 * k1, lo + h / 2)
    k3 = drift(x + h / 2 * k2, lo + h / 2)
    k4 = drift(x + h * k3, hi)
    x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
  return x


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize(
  "spec, atol",
  [
    # tolerances about twice the measured largest errors: 4e-4, 2e-5, 4e-3 (first order), 9e-3
    (samplers.SamplerSpec("ode_heun", steps=200), 1e-3),
    (samplers.SamplerSpec("ode_adaptive", rtol=1e-5, atol=1e-5), 1e-4),
    (samplers.SamplerSpec("ddim", steps=1000), 1e-2),
    (samplers.SamplerSpec("dpm_solver++", steps=50), 2e-2),
  ],
  ids=lambda v: getattr(v, "name", ""),
)
def test_classifier_free_guidance_follows_the_tilted_probability_flow(prediction, spec, atol):
  n, w = 64, 2.0
  y = np.arange(n, dtype=np.int32) % 2
  x_T = np.asarray(jax.random.normal(jax.random.key(2), (n, 2)))
  reference = _np_guided_ode(x_T, y, w)
  network = oracles.conditional_network_for(MIXTURE, SCHED, prediction)
  denoiser = parametrization.Denoiser(guidance.classifier_free(network, y, 2, w), prediction)
  x = jax.jit(
    lambda: samplers.sample(denoiser, SCHED, (n, 2), jax.random.key(0), spec, x_T=x_T).x
  )()
  np.testing.assert_allclose(np.asarray(x), reference, atol=atol)
  # Guidance pushes each class away from the other: past the unguided conditional samples.
  unguided = _np_guided_ode(x_T, y, 0.0, num_steps=200)
  side = np.where(y == 0, -1.0, 1.0)
  assert np.mean(side * reference[:, 0]) > np.mean(side * unguided[:, 0])


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_classifier_guidance_at_scale_one_is_the_conditional_oracle(prediction):
  """eps_u - sigma grad log p_t(y | x) = eps(x | y) exactly: as denoiser outputs at int and
  float times, and as whole DDIM and ancestral chains from the same noise."""
  n = 256
  y = jnp.asarray(np.arange(n) % 2, jnp.int32)
  network = oracles.conditional_network_for(MIXTURE, SCHED, prediction)
  kind = parametrization.Parametrization(prediction)
  unconditional = kind.denoiser(guidance.with_labels(network, jnp.full((n,), 2, jnp.int32)))
  conditional = kind.denoiser(guidance.with_labels(network, y))
  guided = guidance.classifier_guided(
    unconditional, SCHED, oracles.classifier_for(MIXTURE, SCHED), y, 1.0
  )
  x = jax.random.normal(jax.random.key(3), (n, 2)) * 1.5
  for t in (jnp.arange(n, dtype=jnp.int32) * 3, jnp.linspace(-0.5, 998.0, n)):
    got, want = jax.jit(lambda x, t: (guided.output(x, t), conditional.output(x, t)))(x, t)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
  for spec in (
    samplers.SamplerSpec("ddim", steps=50),
    samplers.SamplerSpec("ancestral", steps=100),
  ):
    draw = jax.jit(
      lambda d, spec: samplers.sample(d, SCHED, (n, 2), jax.random.key(4), spec).x,
      static_argnums=(0, 1),
    )
    draws = [draw(d, spec) for d in (guided, conditional)]
    np.testing.assert_allclose(*draws, atol=2e-3)
  # Scale 0 leaves the model as it was.
  plain = guidance.classifier_guided(
    unconditional, SCHED, oracles.classifier_for(MIXTURE, SCHED), y, 0.0
  )
  np.testing.assert_allclose(plain.output(x, t), unconditional.output(x, t), atol=1e-4)


def _unconditional_denoiser(n, learned_variance):
  """The exact unconditional eps* of the mixture; with a learned variance, u = 0.2 (f = 0.6)."""
  eps_fn = guidance.with_labels(oracles.conditional_eps_fn_for(MIXTURE, SCHED), np.full(n, 2))
  if not learned_variance:
    return parametrization.Denoiser(eps_fn)
  network = lambda x, t: jnp.concatenate([eps_fn(x, t), jnp.full_like(x, 0.2)], axis=-1)
  return parametrization.Denoiser(network, learned_variance=True)


@pytest.mark.parametrize("t, s", [(400, 399), (400, 300)], ids=["consecutive", "respaced"])
@pytest.mark.parametrize("variance", ["fixedlarge", "fixedsmall", "learned"])
def test_ancestral_classifier_guidance_is_algorithm_1(variance, t, s):
  """One guided ancestral step from t to s draws x_s = mu + Sigma g + sqrt(Sigma) z with
  g = scale grad log p_t(y | x_t): mu, Sigma, g all from the oracle in float64 NumPy."""
  n, scale = 64, 2.5
  y = np.arange(n, dtype=np.int32) % 2
  x = np.asarray(jax.random.normal(jax.random.key(6), (n, 2))) * 1.5
  gradient = guidance.classifier_gradient(oracles.classifier_for(MIXTURE, SCHED), y, scale)
  spec = samplers.SamplerSpec("ancestral", variance=variance)
  times = jnp.array([t, s, -1], jnp.int32)
  denoiser = _unconditional_denoiser(n, variance == "learned")
  sampler = registry.step_sampler(spec, denoiser, SCHED, times, False, guidance_gradient=gradient)
  key = jax.random.key(7)
  x_s, _ = jax.jit(lambda x: sampler.step((x, ()), 0, key))(x)

  abar = np.cumprod(1.0 - BETAS)
  abar_t, abar_s = abar[t], abar[s]
  beta = 1.0 - abar_t / abar_s
  beta_tilde = beta * (1.0 - abar_s) / (1.0 - abar_t)
  sigma2 = {"fixedlarge": beta, "fixedsmall": beta_tilde}.get(variance)
  if variance == "learned":
    sigma2 = np.exp(0.6 * np.log(beta) + 0.4 * np.log(beta_tilde))
  x64 = x.astype(np.float64)
  score = _np_score(x64, abar_t, [0, 1])
  x0 = (x64 + (1.0 - abar_t) * score) / np.sqrt(abar_t)  # eps* = -sqrt(1 - abar_t) score
  mu = (np.sqrt(abar_s) * beta * x0 + np.sqrt(1.0 - beta) * (1.0 - abar_s) * x64) / (1.0 - abar_t)
  grad_log_p = np.empty_like(x64)  # grad log q_t(x | y) - grad log q_t(x), by Bayes' rule
  for c in (0, 1):
    grad_log_p[y == c] = _np_score(x64[y == c], abar_t, [c]) - score[y == c]
  z = np.asarray(noise.normal(key, x.shape), np.float64)
  expected = mu + sigma2 * scale * grad_log_p + np.sqrt(sigma2) * z
  np.testing.assert_allclose(np.asarray(x_s), expected, rtol=1e-4, atol=1e-4)


def test_other_samplers_take_classifier_guidance_as_the_eps_shift():
  """DDIM given the gradient steps as DDIM on `eps_guided`, Algorithm 2."""
  n = 16
  y = np.arange(n, dtype=np.int32) % 2
  x = jax.random.normal(jax.random.key(8), (n, 2))
  gradient = guidance.classifier_gradient(oracles.classifier_for(MIXTURE, SCHED), y, 2.0)
  denoiser = _unconditional_denoiser(n, False)
  spec, times = samplers.SamplerSpec("ddim"), jnp.array([400, 300, -1], jnp.int32)
  given = registry.step_sampler(spec, denoiser, SCHED, times, False, guidance_gradient=gradient)
  shifted = guidance.eps_guided(denoiser, SCHED, gradient)
  wrapped = registry.step_sampler(spec, shifted, SCHED, times, False)
  key = jax.random.key(9)
  got, want = jax.jit(lambda x: [s.step((x, ()), 0, key)[0] for s in (given, wrapped)])(x)
  np.testing.assert_array_equal(got, want)


def test_the_oracle_classifier_is_bayes_rule():
  """p_t(y | x) sums to 1 and equals pi_y q_t(x | y) / q_t(x) by the separate class mixtures."""
  x = np.asarray(jax.random.normal(jax.random.key(5), (50, 2))) * 2
  abar = 0.3
  log_p = np.asarray(MIXTURE.class_log_prob_t(x, abar))
  np.testing.assert_allclose(np.exp(log_p).sum(1), 1.0, rtol=1e-5)
  joint = [
    np.log(MIXTURE.priors[c]) + np.asarray(MIXTURE.of_class(c).log_prob_t(x, abar))
    for c in range(2)
  ]
  marginal = np.asarray(MIXTURE.marginal().log_prob_t(x, abar))
  np.testing.assert_allclose(log_p, np.stack(joint, 1) - marginal[:, None], atol=1e-4)
  for c in range(2):
    np.testing.assert_allclose(
      MIXTURE.score_t(x, abar, np.full(50, c)),
      MIXTURE.of_class(c).score_t(x, abar),
      rtol=1e-4,
      atol=1e-5,
    )
  np.testing.assert_allclose(
    MIXTURE.score_t(x, abar, np.full(50, 2)),
    MIXTURE.marginal().score_t(x, abar),
    rtol=1e-4,
    atol=1e-5,
  )
