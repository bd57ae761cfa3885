"""Gaussian noise for samplers, laid out like the batch so each device draws only its own share."""

import jax
import jax.numpy as jnp


def normal(key: jax.Array, shape: tuple[int, ...], sharding=None) -> jax.Array:
  """Standard normal float32 noise of `shape`, constrained to `sharding` when one is given."""
  z = jax.random.normal(key, shape, jnp.float32)
  return z if sharding is None else jax.lax.with_sharding_constraint(z, sharding)
