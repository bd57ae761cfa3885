"""Image output with PIL and numpy: sample grids, 2D point-cloud renders, previews of samples, and
PNG, NPZ and GIF files."""

import math
import os
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

BACKGROUND = (255, 255, 255)
POINT_COLOR = (31, 119, 180)
REFERENCE_COLOR = (190, 190, 190)
TITLE_COLOR = (0, 0, 0)

MIN_TILE = 32  # small images (8x8 digits) are enlarged to at least this many pixels a side

Lims = tuple[tuple[float, float], tuple[float, float]]


def to_uint8(x: Any) -> np.ndarray:
  """Maps floats in [-1, 1] to uint8 as round((x + 1) * 127.5), clipped to [0, 255].

  The only exact half in range is 0 -> 127.5, which rounds to 128 (np.round: half to even).

  Args:
    x: float array (numpy or jax) of any shape.

  Returns:
    uint8 array of the same shape.
  """
  x = np.asarray(x, dtype=np.float64)
  return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def image_grid(
  images: np.ndarray, ncols: int | None = None, padding: int = 2, pad_value: int = 0
) -> np.ndarray:
  """Tiles images row by row, with `padding` pixels around and between them.

  Channels are kept as they are: a 1-channel batch gives a 1-channel grid.

  Args:
    images: [N, H, W, C] uint8 images.
    ncols: images per row; default ceil(sqrt(N)). Unfilled cells of the last row are `pad_value`.
    padding: pixels of `pad_value` around every image.
    pad_value: value of the padding.

  Returns:
    [rows * (H + padding) + padding, ncols * (W + padding) + padding, C] array; image i has
    its top-left corner at row padding + (i // ncols) * (H + padding), column
    padding + (i % ncols) * (W + padding).
  """
  images = np.asarray(images)
  if images.ndim != 4 or not len(images):
    raise ValueError(f"expected a non-empty [N, H, W, C] batch, got shape {images.shape}")
  n, h, w, c = images.shape
  ncols = ncols or math.ceil(math.sqrt(n))
  nrows = math.ceil(n / ncols)
  shape = (nrows * (h + padding) + padding, ncols * (w + padding) + padding, c)
  grid = np.full(shape, pad_value, images.dtype)
  for i, image in enumerate(images):
    top = padding + (i // ncols) * (h + padding)
    left = padding + (i % ncols) * (w + padding)
    grid[top : top + h, left : left + w] = image
  return grid


def save_image_grid(
  path: str, images: np.ndarray, *, ncols: int | None = None, padding: int = 2
) -> None:
  """Writes a batch as one PNG grid, creating parent directories.

  Args:
    path: output file.
    images: [N, H, W, C] with C in {1, 3}; uint8 is used as is, any other dtype is read as
      floats in [-1, 1].
    ncols: images per row; default ceil(sqrt(N)).
    padding: black pixels around every image.
  """
  images = np.asarray(images)
  if images.dtype != np.uint8:
    images = to_uint8(images)
  save_png(path, image_grid(images, ncols=ncols, padding=padding))


def save_png(path: str, image: np.ndarray) -> None:
  """Writes an [H, W, C] uint8 image (C in {1, 3}) as a PNG, creating parent directories."""
  _make_parent(path)
  _to_pil(image).save(path, format="PNG")


def load_image(path: str, example_shape: tuple[int, ...]) -> np.ndarray:
  """Reads a PNG/JPEG as float32 [H, W, C] in [-1, 1], refusing one of another size or channels.

  Args:
    path: the file.
    example_shape: (H, W, C) the run's images have, C in {1, 3}.
  """
  height, width, channels = example_shape
  try:
    image = Image.open(path)
    image.load()
  except (OSError, SyntaxError) as e:
    raise ValueError(f"cannot read {path} as an image: {e}") from None
  found = {"L": 1, "RGB": 3}.get(image.mode)
  if found is None:
    raise ValueError(f"{path} is a {image.mode} image; give greyscale (L) or RGB")
  if found != channels:
    raise ValueError(f"{path} has {found} channel(s); the run's images have {channels}")
  if image.size != (width, height):
    raise ValueError(
      f"{path} is {image.size[0]}x{image.size[1]}; the run's images are {width}x{height}"
    )
  pixels = np.asarray(image, np.float32).reshape(height, width, channels)
  return pixels / 127.5 - 1.0


def load_mask(path: str, height: int, width: int) -> np.ndarray:
  """Reads a mask picture of size height x width as bool [H, W]: True where it is light (>= 128
  in greyscale)."""
  try:
    image = Image.open(path)
    image.load()
  except (OSError, SyntaxError) as e:
    raise ValueError(f"cannot read the mask {path} as an image: {e}") from None
  if image.size != (width, height):
    raise ValueError(
      f"the mask {path} is {image.size[0]}x{image.size[1]}; the run's images are {width}x{height}"
    )
  return np.asarray(image.convert("L")) >= 128


def save_samples_npz(path: str, images: np.ndarray) -> None:
  """Writes samples under the key 'arr_0', which FID tools read; numpy appends .npz if missing.

  Args:
    path: output file; parent directories are created.
    images: [N, H, W, C] uint8 samples.
  """
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4:
    raise ValueError(f"expected [N, H, W, C] uint8 samples, got {images.dtype} {images.shape}")
  _make_parent(path)
  np.savez(path, arr_0=images)


def points_limits(points: np.ndarray, margin: float = 0.1) -> Lims:
  """The square around 2D points, widened by `margin` of its side on each side.

  Square, so a render keeps the cloud's aspect ratio; share it between frames to keep them aligned.

  Args:
    points: [N, 2] (x, y) points.
    margin: fraction of the side added on each side.

  Returns:
    ((xmin, xmax), (ymin, ymax)) with xmax - xmin == ymax - ymin.
  """
  xy = np.asarray(points, dtype=np.float64)
  lo, hi = xy.min(axis=0), xy.max(axis=0)
  center = (lo + hi) / 2
  half = float((hi - lo).max()) / 2 or 1.0  # a single point still gets a unit square
  half *= 1 + 2 * margin
  return (
    (float(center[0] - half), float(center[0] + half)),
    (float(center[1] - half), float(center[1] + half)),
  )


def scatter_image(
  points: np.ndarray,
  *,
  size: int = 512,
  lims: Lims | None = None,
  reference: np.ndarray | None = None,
  title: str | None = None,
) -> np.ndarray:
  """Renders a 2D point cloud as dots on a white square, optionally over reference points.

  Args:
    points: [N, 2] (x, y) points, drawn in POINT_COLOR.
    size: side of the image in pixels; dots have radius max(1, size // 256).
    lims: ((xmin, xmax), (ymin, ymax)), mapped to the centres of the edge pixels, y upwards.
      Default: `points_limits` of the points and reference. Points outside are not drawn.
    reference: [M, 2] points (e.g. the data) drawn beneath in REFERENCE_COLOR.
    title: text written at the top left.

  Returns:
    [size, size, 3] uint8 image.
  """
  points = np.asarray(points, dtype=np.float64)
  clouds = [points] if reference is None else [np.asarray(reference, np.float64), points]
  if lims is None:
    lims = points_limits(np.concatenate(clouds))
  canvas = np.full((size, size, 3), BACKGROUND, np.uint8)
  colors = [POINT_COLOR] if reference is None else [REFERENCE_COLOR, POINT_COLOR]
  for cloud, color in zip(clouds, colors, strict=True):
    _draw_dots(canvas, cloud, lims, color, radius=max(1, size // 256))
  if title:
    image = Image.fromarray(canvas)
    ImageDraw.Draw(image).text((4, 4), title, fill=TITLE_COLOR)
    canvas = np.asarray(image)
  return canvas


def save_scatter(path: str, points: np.ndarray, **kwargs: Any) -> None:
  """Writes `scatter_image(points, **kwargs)` as a PNG, creating parent directories."""
  save_png(path, scatter_image(points, **kwargs))


def save_gif(path: str, frames: list[np.ndarray], duration_ms: int = 80, loop: int = 0) -> None:
  """Writes frames as an animated GIF, creating parent directories.

  PIL merges identical consecutive frames into one (adding up their durations).

  Args:
    path: output file.
    frames: [H, W, C] uint8 frames, C in {1, 3}, all the same size.
    duration_ms: display time of each frame.
    loop: how many times to repeat; 0 repeats forever.
  """
  if not frames:
    raise ValueError("save_gif needs at least one frame")
  images = [_to_pil(frame) for frame in frames]
  _make_parent(path)
  images[0].save(path, save_all=True, append_images=images[1:], duration=duration_ms, loop=loop)


def _to_pil(image: np.ndarray) -> Image.Image:
  """Wraps an [H, W, 1] or [H, W, 3] uint8 array as a greyscale or RGB PIL image."""
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise ValueError(f"expected [H, W, 1 or 3] uint8, got {image.dtype} {image.shape}")
  return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _make_parent(path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def _draw_dots(
  canvas: np.ndarray, xy: np.ndarray, lims: Lims, color: tuple[int, int, int], radius: int
) -> None:
  """Paints a disc of `radius` pixels at each point, clipped to the canvas."""
  (x0, x1), (y0, y1) = lims
  size = canvas.shape[0]
  cols = np.round((xy[:, 0] - x0) / (x1 - x0) * (size - 1)).astype(np.int64)
  rows = np.round((y1 - xy[:, 1]) / (y1 - y0) * (size - 1)).astype(np.int64)
  span = range(-radius, radius + 1)
  for dy, dx in ((dy, dx) for dy in span for dx in span if dy * dy + dx * dx <= radius * radius):
    r, c = rows + dy, cols + dx
    inside = (r >= 0) & (r < size) & (c >= 0) & (c < size)
    canvas[r[inside], c[inside]] = color


def preview_picture(
  samples: np.ndarray, reference: np.ndarray | None = None, ncols: int | None = None
) -> np.ndarray:
  """An HWC uint8 picture: a grid of images [N, H, W, C] in [-1, 1] (ncols per row, default
  ceil(sqrt(N))), or points [N, 2] scattered over optional reference points."""
  if samples.ndim != 4:
    return scatter_image(samples, reference=reference)
  grid = image_grid(to_uint8(samples), ncols=ncols)
  factor = max(1, MIN_TILE // samples.shape[1])
  return grid.repeat(factor, axis=0).repeat(factor, axis=1)


def save_preview(
  path: str, samples: np.ndarray, reference: np.ndarray | None = None, ncols: int | None = None
) -> np.ndarray:
  """Writes preview_picture(samples, reference, ncols) to path as a PNG and returns it."""
  picture = preview_picture(samples, reference, ncols)
  save_png(path, picture)
  return picture
