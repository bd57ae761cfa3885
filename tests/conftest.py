"""Test setup: four simulated CPU devices (so the sharded paths run) and strict rank promotion."""

import os

# Subprocesses started by the CLI tests inherit this, so they see the same four devices.
os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
