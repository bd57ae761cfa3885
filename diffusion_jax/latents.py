"""The latent space of a KL-regularised autoencoder (Rombach et al. 2022, sec. 3.1 and appendix G):
the diagonal Gaussian posterior q(z|x) = N(mean, diag(exp(logvar))) its encoder outputs, samples
from it, and its KL divergence to the prior N(0, I).

The network is `models.AutoencoderKL`; these are the equations it and its loss use.
"""

import jax
import jax.numpy as jnp

# LDM's DiagonalGaussianDistribution clips the log-variance to this range before any use, so
# exp(logvar) neither overflows nor underflows to 0 in float32.
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


def clip_logvar(logvar: jax.Array) -> jax.Array:
  """The encoder's log-variance clipped to [LOGVAR_MIN, LOGVAR_MAX], as LDM does."""
  return jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)


def sample(mean: jax.Array, logvar: jax.Array, eps: jax.Array) -> jax.Array:
  """z = mean + exp(logvar / 2) * eps with eps ~ N(0, I): the reparameterization trick (Kingma &
  Welling 2014, eq. 10), a sample of q(z|x) differentiable in mean and logvar."""
  return mean + jnp.exp(0.5 * logvar) * eps


def kl_to_standard_normal(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(q(z|x) || N(0, I)) per example, summed over the latent's dimensions (Kingma & Welling
  2014, appendix B): 1/2 sum(mean^2 + exp(logvar) - 1 - logvar).

  Args:
    mean, logvar: [B, ...] the posterior's parameters.

  Returns:
    [B] float32, in nats.
  """
  terms = jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar
  return 0.5 * jnp.sum(terms.reshape(terms.shape[0], -1).astype(jnp.float32), axis=1)
