"""Random-access collections of preprocessed examples, the common form every source is put into."""

import dataclasses
from collections.abc import Callable
from typing import Protocol

import numpy as np
from PIL import Image

from diffusion_jax.data import transforms


class ImageSource(Protocol):
  """Anything indexable that returns PIL images: a folder, an array, a tfds split.

  A labeled source has non-empty class_names and labeled_item(index) -> (image, class index).
  """

  class_names: tuple[str, ...]

  def __len__(self) -> int: ...

  def __getitem__(self, index: int) -> Image.Image: ...

  def labeled_item(self, index: int) -> tuple[Image.Image, int]: ...


@dataclasses.dataclass(frozen=True)
class Examples:
  """A source's examples: how many, their shape, and a loader by index (with labels if it has
  classes)."""

  load: Callable[[np.ndarray], np.ndarray]  # int indices [n] -> float32 [n, *example_shape]
  num_examples: int
  example_shape: tuple[int, ...]
  is_image: bool
  # int indices [n] -> (float32 [n, *example_shape], int32 labels [n]); None: no labels
  load_labeled: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None
  class_names: tuple[str, ...] = ()  # label k names class_names[k]


def image_examples(
  images: ImageSource,
  image_size: int,
  center_crop: bool,
  num_channels: int,
  labeled: bool = False,
) -> Examples:
  """Decodes and preprocesses images lazily, one index at a time.

  Args:
    images: the raw images.
    image_size: output side length S.
    center_crop: crop the central square before resizing.
    num_channels: 1 or 3.
    labeled: also serve the source's class labels (it must have class_names).

  Returns:
    Examples of shape (S, S, num_channels) in [-1, 1].
  """
  if num_channels not in (1, 3):
    raise ValueError(f"data.num_channels must be 1 or 3, got {num_channels}")

  prepare = lambda image: transforms.preprocess_image(image, image_size, center_crop, num_channels)

  def load(indices: np.ndarray) -> np.ndarray:
    return np.stack([prepare(images[int(i)]) for i in indices])

  def load_labeled(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    items = [images.labeled_item(int(i)) for i in indices]
    labels = np.array([label for _, label in items], np.int32)
    return np.stack([prepare(image) for image, _ in items]), labels

  class_names = tuple(getattr(images, "class_names", ())) if labeled else ()
  if labeled and not class_names:
    raise ValueError(f"{type(images).__name__} has no class labels")
  return Examples(
    load,
    len(images),
    (image_size, image_size, num_channels),
    is_image=True,
    load_labeled=load_labeled if class_names else None,
    class_names=class_names,
  )


def vector_examples(
  vectors: np.ndarray, labels: np.ndarray | None = None, class_names: tuple[str, ...] = ()
) -> Examples:
  """Serves rows of an in-memory array, with optional labels.

  Args:
    vectors: float [N, D].
    labels: int [N] in 0..len(class_names)-1, or None.
    class_names: the classes' names, when labels are given.

  Returns:
    Examples of shape (D,), float32.
  """
  vectors = np.asarray(vectors, dtype=np.float32)
  load_labeled = None
  if labels is not None:
    labels = np.asarray(labels, np.int32)
    load_labeled = lambda indices: (vectors[indices], labels[indices])
  return Examples(
    lambda indices: vectors[indices],
    len(vectors),
    vectors.shape[1:],
    is_image=False,
    load_labeled=load_labeled,
    class_names=class_names if labels is not None else (),
  )
