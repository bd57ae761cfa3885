"""What a denoising network predicts, read into the quantities samplers, likelihoods and losses use.

With x_t = alpha_t x0 + sigma_t eps, alpha_t = sqrt(abar_t) and sigma_t = sqrt(1 - abar_t) (DDPM
eq. 4), a network predicts one of

  eps (Ho et al. 2020):        x0 = (x_t - sigma_t eps) / alpha_t
  x0:                          eps = (x_t - alpha_t x0) / sigma_t
  v (Salimans & Ho 2022):      v = alpha_t eps - sigma_t x0, so (alpha^2 + sigma^2 = 1)
                               x0 = alpha_t x_t - sigma_t v and eps = sigma_t x_t + alpha_t v,

and the score is grad log q_t(x_t) = -eps / sigma_t. A network with a learned variance (Nichol &
Dhariwal 2021, eq. 15) returns twice the channels: the prediction, then u in [-1, 1], and the
reverse step's variance is exp(f log beta_t + (1 - f) log beta-tilde_t) with f = (u + 1) / 2.

The time contract: a network is called as network(x_t [B, ...], t [B]) with t a timestep index,
int32 in 0..T-1 from the discrete samplers (ancestral, DDIM, DPM-Solver++) and the training loss,
float32 t(s) = s T - 1 from the continuous-time samplers (probability-flow ODE, reverse SDE) and
the ODE likelihood (see `continuous_time`). Networks with a continuous time embedding (this
library's U-Net and MLP) take both; one that takes only integers fails the continuous-time
samplers with a message that says so.
"""

import dataclasses
from collections.abc import Callable

import flax
import jax
import jax.numpy as jnp

from diffusion_jax import diffusion
from diffusion_jax.schedules import Schedule

PREDICTIONS = ("eps", "x0", "v")
Network = Callable[[jax.Array, jax.Array], jax.Array]


def training_target(
  prediction: str, x0: jax.Array, eps: jax.Array, alpha: jax.Array, sigma: jax.Array
) -> jax.Array:
  """What a network of the given parametrization should output for x_t = alpha x0 + sigma eps."""
  if prediction == "eps":
    return eps
  if prediction == "x0":
    return x0
  if prediction == "v":
    return alpha * eps - sigma * x0
  raise ValueError(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")


def eps_and_x0(
  prediction: str, output: jax.Array, x_t: jax.Array, alpha: jax.Array, sigma: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """(eps, x0) from a network's prediction `output` at x_t, by the conversions above."""
  if prediction == "eps":
    return output, (x_t - sigma * output) / alpha
  if prediction == "x0":
    return (x_t - alpha * output) / sigma, output
  if prediction == "v":
    return sigma * x_t + alpha * output, alpha * x_t - sigma * output
  raise ValueError(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")


@flax.struct.dataclass
class Denoised:
  """A network's reading of x_t: eps and x0 (and the learned variance's interpolation fraction).

  alpha and sigma are the noise level of x_t, shaped [B, 1, ..., 1] to broadcast against it.
  """

  x_t: jax.Array
  eps: jax.Array
  x0: jax.Array
  alpha: jax.Array
  sigma: jax.Array
  variance_fraction: jax.Array | None = None  # f in [0, 1], x_t's shape; None: fixed variance

  @property
  def score(self) -> jax.Array:
    """grad_x log q_t(x_t) as the network estimates it: -eps / sigma_t."""
    return -self.eps / self.sigma

  @property
  def v(self) -> jax.Array:
    return self.alpha * self.eps - self.sigma * self.x0

  def clip_x0(self, lo: float = -1.0, hi: float = 1.0) -> "Denoised":
    """x0 clipped to [lo, hi] (for data in that range), eps re-derived from it by eq. 4.

    Re-deriving eps keeps every sampler consistent with the clipped x0: DDIM with eta = 1 then
    still takes the posterior mean at the clipped x0, as ancestral sampling does.
    """
    x0 = jnp.clip(self.x0, lo, hi)
    return self.replace(x0=x0, eps=(self.x_t - self.alpha * x0) / self.sigma)


_FRACTIONAL_TIME = (
  "the network failed when called at fractional timesteps t(s) = s T - 1, which the ODE and SDE "
  "samplers and the ODE likelihood use; they need a network that accepts float t (a sinusoidal "
  "embedding, not nn.Embed); with an integer-only network use ancestral, ddim or dpm_solver++"
)


@dataclasses.dataclass(frozen=True)
class Denoiser:
  """A network and what it predicts: the one model interface of samplers, likelihoods and losses.

  Attributes:
    network: network(x_t [B, ...], t [B]) -> output; see the module docstring for t.
    prediction: `eps`, `x0` or `v`.
    learned_variance: the output has twice x_t's channels, the second half the variance's u.
  """

  network: Network
  prediction: str = "eps"
  learned_variance: bool = False

  def __post_init__(self):
    if self.prediction not in PREDICTIONS:
      raise ValueError(
        f"unknown prediction {self.prediction!r}; choose one of {', '.join(PREDICTIONS)}"
      )

  def output(self, x_t: jax.Array, t: jax.Array) -> jax.Array:
    """The network's raw output, with t broadcast to [B] and the output's shape checked."""
    t_B = jnp.broadcast_to(jnp.asarray(t), (x_t.shape[0],))
    try:
      out = self.network(x_t, t_B)
    except (TypeError, ValueError) as e:
      if jnp.issubdtype(t_B.dtype, jnp.floating):
        raise TypeError(f"{_FRACTIONAL_TIME} (the network said: {e})") from e
      raise
    expected = (*x_t.shape[:-1], x_t.shape[-1] * (2 if self.learned_variance else 1))
    if getattr(out, "shape", None) != expected:
      what = " (prediction and variance channels)" if self.learned_variance else ""
      raise ValueError(
        f"the network returned shape {getattr(out, 'shape', type(out).__name__)} for x_t of "
        f"shape {x_t.shape}; it must return {expected}{what}"
      )
    return out

  def __call__(self, sched: Schedule, x_t: jax.Array, t: jax.Array) -> Denoised:
    """Reads the network at (x_t, t): eps, x0 and, with a learned variance, its fraction f.

    Args:
      sched: the schedule the network was trained with.
      x_t: [B, ...] noisy inputs.
      t: timestep indices [B] or a scalar (int: a step of the chain; float: continuous time).
    """
    out = self.output(x_t, t)
    fraction = None
    if self.learned_variance:
      out, u = jnp.split(out, 2, axis=-1)
      fraction = (u + 1.0) / 2.0
    alpha, sigma = diffusion.noise_level(sched, jnp.broadcast_to(t, (x_t.shape[0],)), x_t)
    eps, x0 = eps_and_x0(self.prediction, out, x_t, alpha, sigma)
    return Denoised(x_t, eps, x0, alpha, sigma, fraction)


@dataclasses.dataclass(frozen=True)
class Parametrization:
  """What a network predicts, without the network: hashable, e.g. a static argument of jit."""

  prediction: str = "eps"
  learned_variance: bool = False

  def denoiser(self, network: Network) -> Denoiser:
    return Denoiser(network, self.prediction, self.learned_variance)

  def output_channels(self, channels: int) -> int:
    """The network's output channels for data with `channels` channels."""
    return channels * (2 if self.learned_variance else 1)


def as_denoiser(model: Denoiser | Network) -> Denoiser:
  """A Denoiser as it is; any other callable is read as an eps-predicting network."""
  return model if isinstance(model, Denoiser) else Denoiser(model)
