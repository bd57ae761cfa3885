"""Image preprocessing: optional central square crop, resize, channel conversion, to [-1, 1]."""

import numpy as np
from PIL import Image


def array_to_image(array: np.ndarray) -> Image.Image:
  """Wraps a uint8 array as a PIL image.

  Args:
    array: uint8 [H, W] or [H, W, C] with C in (1, 3).

  Returns:
    A mode "L" or "RGB" image.
  """
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]  # PIL has no single-channel HWC layout
  return Image.fromarray(array)


def center_crop_square(image: Image.Image) -> Image.Image:
  """Crops the largest central square (odd margins leave the extra pixel on the right/bottom)."""
  width, height = image.size
  side = min(width, height)
  left, top = (width - side) // 2, (height - side) // 2
  return image.crop((left, top, left + side, top + side))


def preprocess_image(
  image: Image.Image, image_size: int, center_crop: bool, num_channels: int
) -> np.ndarray:
  """Turns any PIL image into a model input.

  Args:
    image: a PIL image of any size and mode.
    image_size: output side length S.
    center_crop: crop the central square before resizing.
    num_channels: 1 (grayscale) or 3 (RGB).

  Returns:
    float32 [S, S, num_channels] in [-1, 1].
  """
  image = image.convert("L" if num_channels == 1 else "RGB")
  if center_crop:
    image = center_crop_square(image)
  if image.size != (image_size, image_size):
    # Pillow's bicubic filter widens its support when shrinking, so downscaling is antialiased.
    image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
  pixels = np.asarray(image, dtype=np.float32).reshape(image_size, image_size, num_channels)
  return pixels / 127.5 - 1.0
