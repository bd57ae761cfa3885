"""Images on local disk: a folder of image files, or a uint8 array in an .npz archive."""

import pathlib

import numpy as np
from PIL import Image

from diffusion_jax.data import transforms

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class ArrayImages:
  """Random access to the images of a uint8 [N, H, W] or [N, H, W, C] array, with optional
  class labels int [N] in 0..len(class_names)-1."""

  def __init__(
    self, array: np.ndarray, labels: np.ndarray | None = None, class_names: tuple[str, ...] = ()
  ):
    self._array = array
    self._labels = None if labels is None else np.asarray(labels, np.int32)
    self.class_names = class_names if labels is not None else ()

  def __len__(self) -> int:
    return len(self._array)

  def __getitem__(self, index: int) -> Image.Image:
    return transforms.array_to_image(self._array[index])

  def labeled_item(self, index: int) -> tuple[Image.Image, int]:
    return self[index], int(self._labels[index])


class FolderImages:
  """Every image file under a folder (recursive, sorted by path), decoded when indexed.

  With `by_class`, the folder is laid out as root/<class name>/.../<image> (torchvision's
  ImageFolder layout): an image's label is the index of its top sub-folder among the sorted names.
  """

  def __init__(self, path: str, by_class: bool = False):
    root = pathlib.Path(path)
    if not root.is_dir():
      raise ValueError(f"image folder {path!r} does not exist")
    # Sorted so that index i names the same file on every process and every run.
    self._paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not self._paths:
      raise ValueError(f"no {'/'.join(IMAGE_SUFFIXES)} images under {path!r}")
    self.class_names: tuple[str, ...] = ()
    if by_class:
      relative = [p.relative_to(root) for p in self._paths]
      loose = [str(r) for r in relative if len(r.parts) == 1]
      if loose:
        raise ValueError(
          f"class labels from {path!r} need one sub-folder per class, but {loose[0]!r} lies "
          "directly in it"
        )
      self.class_names = tuple(sorted({r.parts[0] for r in relative}))
      index = {name: i for i, name in enumerate(self.class_names)}
      self._labels = np.array([index[r.parts[0]] for r in relative], np.int32)

  def __len__(self) -> int:
    return len(self._paths)

  def labeled_item(self, index: int) -> tuple[Image.Image, int]:
    return self[index], int(self._labels[index])

  def __getitem__(self, index: int) -> Image.Image:
    path = self._paths[index]
    try:
      with Image.open(path) as image:
        image.load()  # decode now, so the file is closed on return
        return image
    # PIL reports damaged files as OSError (truncated, not an image), SyntaxError (bad PNG
    # chunks) or ValueError; a decompression bomb is an Image.DecompressionBombError.
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
      raise ValueError(f"cannot read image {path}: {e}") from None


def load_npz_images(path: str, with_labels: bool = False) -> ArrayImages:
  """Reads the image array of an .npz archive into memory.

  Args:
    path: an .npz holding uint8 [N, H, W, C] (C in 1, 3) or [N, H, W] under key `images`, or as
      its only array; with labels, also integer `labels` [N] in 0..K-1 (the classes are 0..K-1,
      K = the largest label + 1).
    with_labels: read `labels` too; an archive without them is an error.

  Returns:
    The archive's images (and labels).
  """
  labels = None
  try:
    archive = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise ValueError(f"cannot read npz file {path!r}: {e}") from e
  if not isinstance(archive, np.lib.npyio.NpzFile):
    raise ValueError(f"{path!r} is not an .npz archive")
  with archive:
    if "images" in archive.files:
      name = "images"
    elif len(archive.files) == 1:
      name = archive.files[0]
    else:
      raise ValueError(f"{path!r} has arrays {archive.files} and none is named 'images'")
    if with_labels and "labels" not in archive.files:
      raise ValueError(f"{path!r} has no 'labels' array (has {archive.files}); labels need one")
    try:
      array = archive[name]
      if with_labels:
        labels = archive["labels"]
    except ValueError as e:  # e.g. an object array, which only unpickling could build
      raise ValueError(f"cannot read npz file {path!r}: {e}") from e
  if array.dtype != np.uint8:
    raise ValueError(f"npz images in {path!r} must be uint8, got {array.dtype}")
  if array.ndim not in (3, 4) or (array.ndim == 4 and array.shape[-1] not in (1, 3)):
    raise ValueError(
      f"npz images in {path!r} must be [N, H, W] or [N, H, W, C] with C in (1, 3), "
      f"got shape {array.shape}"
    )
  if labels is None:
    return ArrayImages(array)
  labels = check_labels(labels, len(array), f"npz labels in {path!r}")
  return ArrayImages(array, labels, tuple(str(k) for k in range(int(labels.max()) + 1)))


def check_labels(labels: np.ndarray, num_examples: int, what: str) -> np.ndarray:
  """labels as int32 [N] after checking they are N non-negative integers."""
  labels = np.asarray(labels)
  if labels.shape != (num_examples,):
    raise ValueError(f"{what} must have shape ({num_examples},), one per image; got {labels.shape}")
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{what} must be integers, got {labels.dtype}")
  if num_examples and labels.min() < 0:
    raise ValueError(f"{what} must be >= 0, got {labels.min()}")
  return labels.astype(np.int32)
