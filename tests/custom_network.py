"""A network defined outside the library, for tests/test_custom_models.py: trained through a
config that names it ("tests.custom_network:TinyNet"), with no `train` argument."""

import flax.linen as nn
import jax.numpy as jnp


class TinyNet(nn.Module):
  """x_t [B, D] and t [B] -> eps [B, D], with a continuous (sinusoidal) time input."""

  width: int = 16

  @nn.compact
  def __call__(self, x, t):
    h = jnp.concatenate([x, jnp.sin(t[:, None] / 20.0), jnp.cos(t[:, None] / 20.0)], axis=-1)
    return nn.Dense(x.shape[-1])(nn.silu(nn.Dense(self.width)(h)))
