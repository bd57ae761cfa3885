"""Random-access collections of preprocessed examples, the common form every source is put into."""

import dataclasses
from collections.abc import Callable
from typing import Protocol

import numpy as np
from PIL import Image

from diffusion_jax.data import transforms


class ImageSource(Protocol):
  """Anything indexable that returns PIL images: a folder, an array, a tfds split."""

  def __len__(self) -> int: ...

  def __getitem__(self, index: int) -> Image.Image: ...


@dataclasses.dataclass(frozen=True)
class Examples:
  """A source's examples: how many, their shape, and a loader by index."""

  load: Callable[[np.ndarray], np.ndarray]  # int indices [n] -> float32 [n, *example_shape]
  num_examples: int
  example_shape: tuple[int, ...]
  is_image: bool


def image_examples(
  images: ImageSource, image_size: int, center_crop: bool, num_channels: int
) -> Examples:
  """Decodes and preprocesses images lazily, one index at a time.

  Args:
    images: the raw images.
    image_size: output side length S.
    center_crop: crop the central square before resizing.
    num_channels: 1 or 3.

  Returns:
    Examples of shape (S, S, num_channels) in [-1, 1].
  """
  if num_channels not in (1, 3):
    raise ValueError(f"data.num_channels must be 1 or 3, got {num_channels}")

  def load(indices: np.ndarray) -> np.ndarray:
    return np.stack(
      [
        transforms.preprocess_image(images[int(i)], image_size, center_crop, num_channels)
        for i in indices
      ]
    )

  return Examples(load, len(images), (image_size, image_size, num_channels), is_image=True)


def vector_examples(vectors: np.ndarray) -> Examples:
  """Serves rows of an in-memory array.

  Args:
    vectors: float [N, D].

  Returns:
    Examples of shape (D,), float32.
  """
  vectors = np.asarray(vectors, dtype=np.float32)
  return Examples(lambda indices: vectors[indices], len(vectors), vectors.shape[1:], is_image=False)
