"""The latent space of a KL-regularised autoencoder (Rombach et al. 2022, sec. 3.1 and appendix G):
the diagonal Gaussian posterior q(z|x) = N(mean, diag(exp(logvar))) its encoder outputs, samples
from it, its KL divergence to the prior N(0, I), and the autoencoder's training objective.

The network is `models.AutoencoderKL`; these are the equations it and its training use.
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


RECONSTRUCTION_LOSSES = ("l1", "l2")


def autoencoder_loss(
  x: jax.Array,
  x_rec: jax.Array,
  mean: jax.Array,
  logvar: jax.Array,
  *,
  reconstruction: str,
  kl_weight: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The KL autoencoder's objective as LDM trains it, without its perceptual and adversarial terms
  (Rombach et al. 2022, appendix G): per example, the reconstruction error summed over the image,
  sum |x - x_rec| (l1) or sum (x - x_rec)^2 (l2), plus kl_weight times KL(q(z|x) || N(0, I)).

  Args:
    x, x_rec: [B, H, W, C] images and their reconstructions from z ~ q(z|x).
    mean, logvar: [B, h, w, c] the posterior's parameters.
    reconstruction: "l1" or "l2".
    kl_weight: beta.

  Returns:
    (loss, reconstruction error, KL), each [B] float32.
  """
  if reconstruction not in RECONSTRUCTION_LOSSES:
    raise ValueError(f"unknown reconstruction loss {reconstruction!r}; valid: l1, l2")
  diff = x.astype(jnp.float32) - x_rec.astype(jnp.float32)
  error = jnp.abs(diff) if reconstruction == "l1" else jnp.square(diff)
  rec_B = jnp.sum(error.reshape(error.shape[0], -1), axis=1)
  kl_B = kl_to_standard_normal(mean, logvar)
  return rec_B + kl_weight * kl_B, rec_B, kl_B
