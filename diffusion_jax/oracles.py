"""Gaussian-mixture data with exact marginals, scores and optimal noise predictors (test oracles).

Data q_0 = sum_k w_k N(mu_k, sigma_k^2 I) in R^D. Under the forward process
x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps (DDPM eq. 4) every component stays Gaussian, so
  q_t(x) = sum_k w_k N(x; sqrt(abar) mu_k, v_k I),   v_k = abar sigma_k^2 + 1 - abar,
and its score and the optimal L_simple predictor eps* = -sqrt(1 - abar) grad log q_t are closed
form.
Image-shaped data [B, H, W, C] is a mixture over the flattened vector (D = H W C).

One Gaussian with a full covariance (`Gaussian`): x_t ~ N(sqrt(abar) mu, abar Sigma + (1 - abar) I),
so eps* is linear in x_t and every conditional on observed coordinates is closed form (the editing
tests: inpainting against the exact conditional Gaussian).

Class-conditional data (`ClassMixture`): class y ~ Cat(pi), then x_0 from class y's own mixture.
Each q_t(x | y) is again a mixture, q_t(x) is the mixture of all components with weights
pi_y w_{y,k}, and p_t(y | x) = pi_y q_t(x | y) / q_t(x) by Bayes; so the conditional and
unconditional eps*, and the classifier of classifier guidance, are all exact.
"""

import math

import flax
import jax
import jax.numpy as jnp

from diffusion_jax import continuous_time, diffusion, parametrization
from diffusion_jax.schedules import Schedule


def _column(alpha_bar: jax.Array, n: int) -> jax.Array:
  """alpha-bar, a scalar or [N], as a float32 [N, 1] column."""
  return jnp.broadcast_to(jnp.asarray(alpha_bar, jnp.float32), (n,))[:, None]


@flax.struct.dataclass
class GaussianMixture:
  """q_0 = sum_k w_k N(mu_k, sigma_k^2 I): weights w [K] (summing to 1), means mu [K, D], variances
  sigma^2 [K]."""

  weights: jax.Array
  means: jax.Array
  variances: jax.Array

  @property
  def dim(self) -> int:
    return self.means.shape[1]

  def sample(self, key: jax.Array, n: int) -> jax.Array:
    """Draws n points x_0 ~ q_0: a component k ~ Cat(w), then mu_k + sigma_k z; returns [n, D]."""
    comp_key, noise_key = jax.random.split(key)
    k_N = jax.random.categorical(comp_key, jnp.log(self.weights), shape=(n,))
    z_ND = jax.random.normal(noise_key, (n, self.dim), jnp.float32)
    return self.means[k_N] + jnp.sqrt(self.variances[k_N])[:, None] * z_ND

  def _components_t(self, x_ND: jax.Array, alpha_bar: jax.Array):
    """log w_k N(x; sqrt(abar) mu_k, v_k I) [N, K], x - sqrt(abar) mu_k [N, K, D] and v_k [N, K]."""
    abar_N1 = _column(alpha_bar, x_ND.shape[0])
    v_NK = abar_N1 * self.variances[None, :] + (1.0 - abar_N1)
    d_NKD = x_ND[:, None, :] - jnp.sqrt(abar_N1)[:, :, None] * self.means[None, :, :]
    log_NK = (
      jnp.log(self.weights)[None, :]
      - 0.5 * self.dim * jnp.log(2.0 * math.pi * v_NK)
      - 0.5 * jnp.sum(jnp.square(d_NKD), axis=-1) / v_NK
    )
    return log_NK, d_NKD, v_NK

  def log_prob_t(self, x_ND: jax.Array, alpha_bar: jax.Array) -> jax.Array:
    """log q_t(x) for x [N, D] and alpha-bar a scalar or [N]; returns [N]."""
    log_NK, _, _ = self._components_t(x_ND, alpha_bar)
    return jax.nn.logsumexp(log_NK, axis=1)

  def log_prob(self, x_ND: jax.Array) -> jax.Array:
    """log q_0(x) for x [N, D]; returns [N]."""
    return self.log_prob_t(x_ND, 1.0)

  def score_t(self, x_ND: jax.Array, alpha_bar: jax.Array) -> jax.Array:
    """grad_x log q_t(x) = -sum_k r_k(x) (x - sqrt(abar) mu_k) / v_k for x [N, D]; returns [N, D].

    The responsibilities r_k = softmax_k(log w_k N_k(x)) are a max-shifted log-sum-exp, so far-out
    points do not underflow.
    """
    log_NK, d_NKD, v_NK = self._components_t(x_ND, alpha_bar)
    r_NK = jax.nn.softmax(log_NK, axis=1)
    return -jnp.sum((r_NK / v_NK)[:, :, None] * d_NKD, axis=1)

  def eps(self, x_ND: jax.Array, alpha_bar: jax.Array) -> jax.Array:
    """Optimal L_simple predictor eps* = -sqrt(1 - abar) grad log q_t(x) for x [N, D]; [N, D]."""
    abar_N1 = _column(alpha_bar, x_ND.shape[0])
    return -jnp.sqrt(1.0 - abar_N1) * self.score_t(x_ND, alpha_bar)


@flax.struct.dataclass
class Gaussian:
  """q_0 = N(mu, Sigma) in R^D: mean mu [D], covariance Sigma [D, D] (positive definite)."""

  mean: jax.Array
  covariance: jax.Array

  @property
  def dim(self) -> int:
    return self.mean.shape[0]

  def sample(self, key: jax.Array, n: int) -> jax.Array:
    """Draws n points x_0 = mu + L z with L L^T = Sigma; returns [n, D]."""
    z_ND = jax.random.normal(key, (n, self.dim), jnp.float32)
    return self.mean[None] + z_ND @ jnp.linalg.cholesky(self.covariance).T

  def eps(self, x_ND: jax.Array, alpha_bar: jax.Array) -> jax.Array:
    """eps* = E[eps | x_t] = sqrt(1 - abar) C_t^-1 (x - sqrt(abar) mu), C_t = abar Sigma +
    (1 - abar) I the covariance of x_t, for x [N, D] and alpha-bar a scalar or [N]; [N, D]."""
    abar_N1 = _column(alpha_bar, x_ND.shape[0])
    abar_N11 = abar_N1[:, :, None]
    cov_NDD = abar_N11 * self.covariance[None] + (1.0 - abar_N11) * jnp.eye(self.dim)[None]
    d_ND = x_ND - jnp.sqrt(abar_N1) * self.mean[None]
    return jnp.sqrt(1.0 - abar_N1) * jnp.linalg.solve(cov_NDD, d_ND[:, :, None])[:, :, 0]


def _alpha_bar_of(sched: Schedule, t_B: jax.Array) -> jax.Array:
  """alpha-bar at indices t [B]: the discrete table for int t, alpha-bar(s(t)) for float t."""
  if jnp.issubdtype(t_B.dtype, jnp.integer):
    return sched.alphas_cumprod[t_B]
  return continuous_time.alpha_bar(sched, continuous_time.time_of(sched, t_B))


@flax.struct.dataclass
class ClassMixture:
  """Labelled data: class y with prior pi_y, and given y the mixture sum_k w_{y,k} N(mu_{y,k},
  sigma_{y,k}^2 I). priors [C], weights [C, K] (rows summing to 1), means [C, K, D],
  variances [C, K]. Label C is the null class: the unconditional q_t."""

  priors: jax.Array
  weights: jax.Array
  means: jax.Array
  variances: jax.Array

  @property
  def num_classes(self) -> int:
    return self.priors.shape[0]

  def of_class(self, y: int) -> GaussianMixture:
    """q_0(x | y) as a GaussianMixture."""
    return GaussianMixture(self.weights[y], self.means[y], self.variances[y])

  def marginal(self) -> GaussianMixture:
    """q_0(x) = sum_y pi_y q_0(x | y): the C K components with weights pi_y w_{y,k}."""
    c, k, d = self.means.shape
    weights = (self.priors[:, None] * self.weights).reshape(c * k)
    return GaussianMixture(weights, self.means.reshape(c * k, d), self.variances.reshape(c * k))

  def sample(self, key: jax.Array, y_N: jax.Array) -> jax.Array:
    """x_0 ~ q_0(x | y) for each label of y [N] (0..C-1); returns [N, D]."""
    comp_key, noise_key = jax.random.split(key)
    k_N = jax.random.categorical(comp_key, jnp.log(self.weights[y_N]))
    z_ND = jax.random.normal(noise_key, (y_N.shape[0], self.means.shape[-1]), jnp.float32)
    return self.means[y_N, k_N] + jnp.sqrt(self.variances[y_N, k_N])[:, None] * z_ND

  def _class_of_component(self) -> jax.Array:
    c, k = self.weights.shape
    return jnp.repeat(jnp.arange(c), k)  # [C K]

  def score_t(self, x_ND: jax.Array, alpha_bar: jax.Array, y_N: jax.Array) -> jax.Array:
    """grad_x log q_t(x | y) for labels y [N] in 0..C (C: grad log q_t(x)); returns [N, D].

    The marginal's responsibilities restricted to class y's components (pi_y cancels).
    """
    log_NM, d_NMD, v_NM = self.marginal()._components_t(x_ND, alpha_bar)
    in_class = (self._class_of_component()[None, :] == y_N[:, None]) | (
      y_N[:, None] == self.num_classes
    )
    r_NM = jax.nn.softmax(jnp.where(in_class, log_NM, -jnp.inf), axis=1)
    return -jnp.sum((r_NM / v_NM)[:, :, None] * d_NMD, axis=1)

  def eps(self, x_ND: jax.Array, alpha_bar: jax.Array, y_N: jax.Array) -> jax.Array:
    """eps*(x, y) = -sqrt(1 - abar) grad log q_t(x | y) for labels y [N] in 0..C; [N, D]."""
    abar_N1 = _column(alpha_bar, x_ND.shape[0])
    return -jnp.sqrt(1.0 - abar_N1) * self.score_t(x_ND, alpha_bar, y_N)

  def class_log_prob_t(self, x_ND: jax.Array, alpha_bar: jax.Array) -> jax.Array:
    """log p_t(y | x) = log pi_y + log q_t(x | y) - log q_t(x) for every class; returns [N, C]."""
    log_NM, _, _ = self.marginal()._components_t(x_ND, alpha_bar)
    log_NCK = log_NM.reshape(x_ND.shape[0], *self.weights.shape)
    joint_NC = jax.nn.logsumexp(log_NCK, axis=2)  # log pi_y q_t(x | y)
    return joint_NC - jax.nn.logsumexp(joint_NC, axis=1, keepdims=True)


def conditional_eps_fn_for(mixture: ClassMixture, sched: Schedule):
  """The exact conditional noise predictor eps_fn(x [B, ...], t [B], y [B]) of `mixture` (y = C,
  the null class, gives the unconditional eps*); t as in `eps_fn_for`."""

  def eps_fn(x: jax.Array, t_B: jax.Array, y_B: jax.Array) -> jax.Array:
    flat = x.reshape(x.shape[0], -1)
    return mixture.eps(flat, _alpha_bar_of(sched, t_B), y_B).reshape(x.shape)

  return eps_fn


def conditional_network_for(mixture: ClassMixture, sched: Schedule, prediction: str = "eps"):
  """network(x, t, y) predicting the exact eps, x0 or v given class y (see `network_for`)."""
  eps_fn = conditional_eps_fn_for(mixture, sched)

  def network(x: jax.Array, t_B: jax.Array, y_B: jax.Array) -> jax.Array:
    eps = eps_fn(x, t_B, y_B)
    alpha, sigma = diffusion.noise_level(sched, t_B, x)
    return parametrization.training_target(prediction, (x - sigma * eps) / alpha, eps, alpha, sigma)

  return network


def classifier_for(mixture: ClassMixture, sched: Schedule):
  """The exact time-conditioned classifier log p_t(y | x_t)(x [B, ...], t [B], y [B]) -> [B]."""

  def log_prob(x: jax.Array, t_B: jax.Array, y_B: jax.Array) -> jax.Array:
    flat = x.reshape(x.shape[0], -1)
    log_NC = mixture.class_log_prob_t(flat, _alpha_bar_of(sched, t_B))
    return jnp.take_along_axis(log_NC, y_B[:, None], axis=1)[:, 0]

  return log_prob


def eps_fn_for(mixture: GaussianMixture | Gaussian, sched: Schedule) -> continuous_time.EpsFn:
  """The exact eps_fn(x, t) of `mixture` under `sched`, for x [B, ...] (flattened to [B, D]).

  An integer index t [B] uses the discrete alpha-bar = sched.alphas_cumprod[t]; a float index uses
  the continuous alpha-bar(s) at s = (t + 1) / T (see `continuous_time`), which agrees at integer t.

  Returns:
    eps_fn mapping (x [B, ...], t [B]) to eps* with x's shape.
  """

  def eps_fn(x: jax.Array, t_B: jax.Array) -> jax.Array:
    return mixture.eps(x.reshape(x.shape[0], -1), _alpha_bar_of(sched, t_B)).reshape(x.shape)

  return eps_fn


def network_for(
  mixture: GaussianMixture | Gaussian, sched: Schedule, prediction: str = "eps"
) -> parametrization.Denoiser:
  """The exact denoiser of `mixture` predicting eps, x0 or v: eps* converted by its noise level
  (x0* = E[x0 | x_t] and v* = alpha eps* - sigma x0*, see `parametrization`)."""
  eps_fn = eps_fn_for(mixture, sched)

  def network(x: jax.Array, t_B: jax.Array) -> jax.Array:
    eps = eps_fn(x, t_B)
    alpha, sigma = diffusion.noise_level(sched, t_B, x)
    x0 = (x - sigma * eps) / alpha
    return parametrization.training_target(prediction, x0, eps, alpha, sigma)

  return parametrization.Denoiser(network, prediction)
