"""Samplers as steps on a time grid, one driver that runs them, and the registry behind --sampler.

`sample(model, sched, shape, key, SamplerSpec(...))` draws with any of `SAMPLERS`, from x_T or
part-way down the chain from an image, with per-step hooks and trajectories; `encode` inverts the
deterministic ones. Modules: `chain` (the driver), `timesteps` (grids), one module per sampler
(`ancestral`, `ddim`, `dpm_solver`, `probability_flow`, `reverse_sde`), `generation` (batched,
sharded drawing from a trained network).
"""

from diffusion_jax.samplers.registry import (
  DISCRETE,
  ENCODERS,
  SAMPLERS,
  SamplerSpec,
  Samples,
  encode,
  grid,
  sample,
  spec_from_config,
)

__all__ = [
  "DISCRETE",
  "ENCODERS",
  "SAMPLERS",
  "SamplerSpec",
  "Samples",
  "encode",
  "grid",
  "sample",
  "spec_from_config",
]
