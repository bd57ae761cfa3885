"""diffusion_jax: denoising diffusion probabilistic models in JAX/Flax.

Every module and subpackage is reachable as an attribute (`diffusion_jax.samplers`), imported on
first use, so `import diffusion_jax` stays quick. The README's library section shows the layers.
"""

import importlib

__version__ = "0.1.0"

_MODULES = (
  "cli",
  "configs",
  "continuous_time",
  "data",
  "diffusion",
  "editing",
  "evaluation",
  "figures",
  "guidance",
  "images",
  "latents",
  "likelihood",
  "losses",
  "metrics",
  "models",
  "ode_solvers",
  "oracles",
  "parametrization",
  "pretrained",
  "samplers",
  "schedules",
  "sharding",
  "training",
  "variational_bound",
)
__all__ = list(_MODULES)


def __getattr__(name: str):
  if name in _MODULES:
    return importlib.import_module(f"diffusion_jax.{name}")
  raise AttributeError(f"module 'diffusion_jax' has no attribute {name!r}")
