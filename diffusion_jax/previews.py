"""Pictures of samples: an image grid, or a scatter over the data for 2D points."""

import numpy as np

from diffusion_jax import images

MIN_TILE = 32  # small images (8x8 digits) are enlarged to at least this many pixels a side


def preview_picture(samples: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
  """An HWC uint8 picture: a grid of images [N, H, W, C] in [-1, 1], or points [N, 2] scattered
  over optional reference points."""
  if samples.ndim != 4:
    return images.scatter_image(samples, reference=reference)
  grid = images.image_grid(images.to_uint8(samples))
  factor = max(1, MIN_TILE // samples.shape[1])
  return grid.repeat(factor, axis=0).repeat(factor, axis=1)


def save_preview(path: str, samples: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
  """Writes preview_picture(samples, reference) to path as a PNG and returns it."""
  picture = preview_picture(samples, reference)
  images.save_png(path, picture)
  return picture
