"""Training data: tfds, image folders, .npz arrays and builtin toys as deterministic batches."""

from diffusion_jax.data.builtin import gaussian_mixture_params
from diffusion_jax.data.examples import Examples
from diffusion_jax.data.factory import (
  SOURCES,
  create_dataset,
  create_examples,
  default_split,
  split_config,
)
from diffusion_jax.data.pipeline import Dataset

__all__ = [
  "SOURCES",
  "Dataset",
  "Examples",
  "create_dataset",
  "create_examples",
  "default_split",
  "gaussian_mixture_params",
  "split_config",
]
