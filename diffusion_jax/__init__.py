"""diffusion_jax: denoising diffusion probabilistic models in JAX/Flax."""

from diffusion_jax import diffusion, models, sampling, schedules

__version__ = "0.1.0"
__all__ = ["diffusion", "models", "sampling", "schedules"]
