"""Images on local disk: a folder of image files, or a uint8 array in an .npz archive."""

import pathlib

import numpy as np
from PIL import Image

from diffusion_jax.data import transforms

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class ArrayImages:
  """Random access to the images of a uint8 [N, H, W] or [N, H, W, C] array."""

  def __init__(self, array: np.ndarray):
    self._array = array

  def __len__(self) -> int:
    return len(self._array)

  def __getitem__(self, index: int) -> Image.Image:
    return transforms.array_to_image(self._array[index])


class FolderImages:
  """Every image file under a folder (recursive, sorted by path), decoded when indexed."""

  def __init__(self, path: str):
    root = pathlib.Path(path)
    if not root.is_dir():
      raise ValueError(f"image folder {path!r} does not exist")
    # Sorted so that index i names the same file on every process and every run.
    self._paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not self._paths:
      raise ValueError(f"no {'/'.join(IMAGE_SUFFIXES)} images under {path!r}")

  def __len__(self) -> int:
    return len(self._paths)

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


def load_npz_images(path: str) -> ArrayImages:
  """Reads the image array of an .npz archive into memory.

  Args:
    path: an .npz holding uint8 [N, H, W, C] (C in 1, 3) or [N, H, W] under key `images`, or as
      its only array.

  Returns:
    The archive's images.
  """
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
    try:
      array = archive[name]
    except ValueError as e:  # e.g. an object array, which only unpickling could build
      raise ValueError(f"cannot read npz file {path!r}: {e}") from e
  if array.dtype != np.uint8:
    raise ValueError(f"npz images in {path!r} must be uint8, got {array.dtype}")
  if array.ndim not in (3, 4) or (array.ndim == 4 and array.shape[-1] not in (1, 3)):
    raise ValueError(
      f"npz images in {path!r} must be [N, H, W] or [N, H, W, C] with C in (1, 3), "
      f"got shape {array.shape}"
    )
  return ArrayImages(array)
