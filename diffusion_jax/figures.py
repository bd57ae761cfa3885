"""Figures drawn with PIL: pictures with a title band, strips of panels, and line charts (the
analyses' rate-distortion plot) — no plotting library needed."""

import numpy as np
from PIL import Image, ImageDraw

from diffusion_jax import images

TITLE_HEIGHT = 14
LINE_COLOR = (31, 119, 180)
AXIS_COLOR = (0, 0, 0)


def as_rgb(picture: np.ndarray) -> np.ndarray:
  """An [H, W, 1 or 3] uint8 picture as [H, W, 3]."""
  picture = np.asarray(picture)
  return np.repeat(picture, 3, axis=-1) if picture.shape[-1] == 1 else picture


def titled(picture: np.ndarray, title: str) -> np.ndarray:
  """The picture (RGB) under a white band holding `title`, at least as wide as the text."""
  picture = as_rgb(picture)
  height, width = picture.shape[:2]
  text_width = int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(title)) + 4
  canvas = Image.new("RGB", (max(width, text_width), height + TITLE_HEIGHT), images.BACKGROUND)
  canvas.paste(Image.fromarray(picture), (0, TITLE_HEIGHT))
  ImageDraw.Draw(canvas).text((2, 1), title, fill=images.TITLE_COLOR)
  return np.asarray(canvas)


def strip(panels: list[np.ndarray], gap: int = 4) -> np.ndarray:
  """Panels side by side on white, `gap` pixels apart, tops aligned; RGB."""
  panels = [as_rgb(p) for p in panels]
  height = max(p.shape[0] for p in panels)
  width = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)
  canvas = np.full((height, width, 3), images.BACKGROUND, np.uint8)
  left = 0
  for panel in panels:
    canvas[: panel.shape[0], left : left + panel.shape[1]] = panel
    left += panel.shape[1] + gap
  return canvas


def line_chart(
  x: np.ndarray,
  y: np.ndarray,
  *,
  title: str,
  x_label: str,
  y_label: str,
  size: tuple[int, int] = (360, 260),
) -> np.ndarray:
  """y against x as a polyline on axes marked with their ranges; [H, W, 3] uint8."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  width, height = size
  left, right, top, bottom = 58, 12, 22, 34  # margins for the labels
  image = Image.new("RGB", size, images.BACKGROUND)
  draw = ImageDraw.Draw(image)
  x_lo, x_hi = float(x.min()), float(x.max())
  y_lo, y_hi = float(y.min()), float(y.max())
  x_span, y_span = (x_hi - x_lo) or 1.0, (y_hi - y_lo) or 1.0

  def point(xv: float, yv: float) -> tuple[float, float]:
    col = left + (xv - x_lo) / x_span * (width - left - right)
    row = height - bottom - (yv - y_lo) / y_span * (height - top - bottom)
    return col, row

  draw.line([point(x_lo, y_lo), point(x_hi, y_lo)], fill=AXIS_COLOR)
  draw.line([point(x_lo, y_lo), point(x_lo, y_hi)], fill=AXIS_COLOR)
  draw.line([point(a, b) for a, b in zip(x, y, strict=True)], fill=LINE_COLOR, width=2)
  draw.text((left, 4), title, fill=AXIS_COLOR)
  draw.text((2, top - 4), f"{y_hi:.3g}", fill=AXIS_COLOR)
  draw.text((2, height - bottom - 8), f"{y_lo:.3g}", fill=AXIS_COLOR)
  draw.text((2, (top + height - bottom) // 2), y_label[:9], fill=AXIS_COLOR)
  draw.text((left, height - bottom + 4), f"{x_lo:.3g}", fill=AXIS_COLOR)
  draw.text((width - right - 40, height - bottom + 4), f"{x_hi:.3g}", fill=AXIS_COLOR)
  draw.text((left + 60, height - 14), x_label, fill=AXIS_COLOR)
  return np.asarray(image)
