"""Training data: tfds, image folders, .npz arrays and builtin toys as deterministic batches."""

from diffusion_jax.data.builtin import gaussian_mixture_params
from diffusion_jax.data.factory import create_dataset
from diffusion_jax.data.pipeline import Dataset

__all__ = ["Dataset", "create_dataset", "gaussian_mixture_params"]
