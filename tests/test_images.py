"""Tests for diffusion_jax.images: uint8 conversion, grids, scatter renders and written files."""

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from diffusion_jax import images


def test_to_uint8_hand_values():
  x = np.array([-1.0, 1.0, 0.0, 0.5, -0.999, -3.0, 2.0])
  # 0 -> 127.5 is the only exact half in range; it rounds to 128 (even, and also half-up).
  # 0.5 -> 191.25 -> 191; -0.999 -> 0.1275 -> 0; out-of-range values clip.
  np.testing.assert_array_equal(images.to_uint8(x), [0, 255, 128, 191, 0, 0, 255])
  assert images.to_uint8(jnp.zeros((2, 2), jnp.bfloat16)).dtype == np.uint8


def numbered_batch(n, h=2, w=3, c=3) -> np.ndarray:
  """Image i is filled with the value i + 1, so its block can be found in a grid."""
  return np.broadcast_to(np.arange(1, n + 1, dtype=np.uint8)[:, None, None, None], (n, h, w, c))


def test_image_grid_places_blocks_with_padding():
  grid = images.image_grid(numbered_batch(5), padding=2, pad_value=9)  # 3 columns, 2 rows
  assert grid.shape == (2 * (2 + 2) + 2, 3 * (3 + 2) + 2, 3)
  expected = np.full(grid.shape, 9, np.uint8)
  for i in range(5):
    top, left = 2 + (i // 3) * 4, 2 + (i % 3) * 5
    expected[top : top + 2, left : left + 3] = i + 1
  np.testing.assert_array_equal(grid, expected)  # the sixth cell stays padding


def test_image_grid_explicit_columns_without_padding():
  grid = images.image_grid(numbered_batch(4), ncols=4, padding=0)
  assert grid.shape == (2, 12, 3)
  np.testing.assert_array_equal(grid[0, ::3, 0], [1, 2, 3, 4])


def test_image_grid_keeps_one_channel():
  grid = images.image_grid(numbered_batch(4, c=1))
  assert grid.shape == (2 * 4 + 2, 2 * 5 + 2, 1)


def test_image_grid_rejects_non_batches():
  with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
    images.image_grid(np.zeros((4, 4, 3), np.uint8))


@pytest.mark.parametrize("channels, mode", [(3, "RGB"), (1, "L")])
def test_save_image_grid_reads_back_equal(tmp_path, channels, mode):
  x = np.random.default_rng(0).uniform(-1, 1, (5, 4, 4, channels)).astype(np.float32)
  path = tmp_path / "nested" / "dir" / "grid.png"
  images.save_image_grid(str(path), x, ncols=2)
  with Image.open(path) as image:
    assert image.format == "PNG" and image.mode == mode
    pixels = np.asarray(image)
  expected = images.image_grid(images.to_uint8(x), ncols=2)
  np.testing.assert_array_equal(pixels, expected[..., 0] if channels == 1 else expected)


def test_save_png_writes_the_exact_pixels(tmp_path):
  picture = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
  path = tmp_path / "a" / "picture.png"
  images.save_png(str(path), picture)
  with Image.open(path) as image:
    assert image.format == "PNG"
    np.testing.assert_array_equal(np.asarray(image), picture)


def test_save_samples_npz_roundtrips_under_arr_0(tmp_path):
  samples = np.random.default_rng(0).integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
  path = tmp_path / "out" / "samples.npz"
  images.save_samples_npz(str(path), samples)
  with np.load(path) as data:
    assert list(data.keys()) == ["arr_0"]
    np.testing.assert_array_equal(data["arr_0"], samples)
  with pytest.raises(ValueError, match="uint8"):
    images.save_samples_npz(str(path), samples.astype(np.float32))


def colored(image, color) -> np.ndarray:
  return np.all(image == np.array(color, np.uint8), axis=-1)


def test_scatter_draws_a_point_at_its_pixel():
  # size 65 puts lims -1 and 1 on pixels 0 and 64; x = 0.5 -> column 48, y = -0.25 -> row 40.
  image = images.scatter_image(np.array([[0.5, -0.25]]), size=65, lims=((-1, 1), (-1, 1)))
  assert image.shape == (65, 65, 3) and image.dtype == np.uint8
  dot = np.zeros((65, 65), bool)
  dot[40, 47:50] = dot[39:42, 48] = True  # radius-1 disc
  np.testing.assert_array_equal(colored(image, images.POINT_COLOR), dot)
  assert colored(image, images.BACKGROUND)[~dot].all()


def test_scatter_draws_reference_beneath_points():
  lims = ((0, 1), (0, 1))
  reference = np.array([[0.0, 0.0], [1.0, 1.0]])
  image = images.scatter_image(np.array([[1.0, 1.0]]), size=11, lims=lims, reference=reference)
  assert colored(image, images.POINT_COLOR)[0, 10]  # drawn over the reference point there
  assert colored(image, images.REFERENCE_COLOR)[10, 0]


def test_points_limits_is_a_square_with_margin():
  lims = images.points_limits(np.array([[-3.0, 1.0], [5.0, 2.0]]), margin=0.25)
  np.testing.assert_allclose(lims, ((-5.0, 7.0), (-4.5, 7.5)))  # side 8, plus 2 on each side
  assert images.points_limits(np.array([[1.0, 1.0]]), margin=0.0) == ((0.0, 2.0), (0.0, 2.0))


def test_scatter_default_lims_keep_every_dot_whole():
  corners = np.array([[-3.0, 1.0], [5.0, 1.0], [-3.0, 2.0], [5.0, 2.0]])
  image = images.scatter_image(corners, size=128)
  assert colored(image, images.POINT_COLOR).sum() == 4 * 5


def test_scatter_title_only_touches_the_top_left():
  image = images.scatter_image(
    np.array([[0.0, 0.0]]), size=128, lims=((-1, 1), (-1, 1)), title="t=0"
  )
  plain = images.scatter_image(np.array([[0.0, 0.0]]), size=128, lims=((-1, 1), (-1, 1)))
  changed = np.any(image != plain, axis=-1)
  assert changed.any() and not changed[30:].any() and not changed[:, 64:].any()


def test_save_scatter_writes_the_render(tmp_path):
  points = np.random.default_rng(0).normal(size=(50, 2))
  path = tmp_path / "plots" / "scatter.png"
  images.save_scatter(str(path), points, size=64, title="x")
  with Image.open(path) as image:
    np.testing.assert_array_equal(
      np.asarray(image), images.scatter_image(points, size=64, title="x")
    )


@pytest.mark.parametrize("channels", [1, 3])
def test_save_gif_keeps_every_frame(tmp_path, channels):
  frames = [np.full((8, 8, channels), 60 * i, np.uint8) for i in range(4)]
  path = tmp_path / "anim" / "chain.gif"
  images.save_gif(str(path), frames, duration_ms=50)
  with Image.open(path) as gif:
    assert gif.n_frames == 4
    assert gif.info["duration"] == 50 and gif.info["loop"] == 0
    gif.seek(3)
    np.testing.assert_array_equal(np.asarray(gif.convert("L")), 180)
