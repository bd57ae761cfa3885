"""Tests of diffusion_jax.data on data made here: builtins, PNG folders, .npz files, tfds mocks."""

import io
import itertools
import os
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from diffusion_jax.configs import default
from diffusion_jax.data import create_dataset, gaussian_mixture_params


def _data_config(**overrides):
  data = default.get_config().data
  data.update(overrides)
  return data


def _toy(name="moons", num_points=64):
  return _data_config(source="builtin", name=name, num_points=num_points)


def _sorted_rows(x):
  """Rows of a [N, D] array in lexicographic order, to compare multisets of examples."""
  return x[np.lexsort(x.T[::-1])]


def _save_image(path, array):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path)


def _png_bytes(array):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Builtin data


def test_digits_match_sklearn_scaled_to_unit_range():
  from sklearn.datasets import load_digits

  ds = create_dataset(
    _data_config(source="builtin", name="digits", image_size=8, num_channels=1), 64, seed=0
  )
  assert (ds.example_shape, ds.num_examples, ds.is_image) == ((8, 8, 1), 1797, True)
  # At 8x8 nothing is resized: 0..16 -> round(v * 255 / 16) -> v / 127.5 - 1, in index order.
  expected = np.round(load_digits().images * (255 / 16)) / 127.5 - 1
  np.testing.assert_allclose(ds.data_samples(1797)[..., 0], expected, atol=1e-6)


def test_digits_upscaled_to_16():
  ds = create_dataset(
    _data_config(source="builtin", name="digits", image_size=16, num_channels=1), 64, seed=0
  )
  batch = ds.get_batch(0)
  assert ds.example_shape == (16, 16, 1)
  assert batch.shape == (64, 16, 16, 1) and batch.dtype == np.float32
  assert batch.min() >= -1 and batch.max() <= 1
  assert batch.min() == -1 and batch.max() == 1  # background and full-ink pixels survive
  assert -0.8 < batch.mean() < -0.2  # mostly dark background


@pytest.mark.parametrize(
  "name, lo, hi, mean",
  [
    ("moons", (-1.5, -1.0), (2.5, 1.5), (0.5, 0.25)),
    ("swiss_roll", (-1.4, -1.4), (1.6, 1.6), None),
    ("s_curve", (-0.2, -0.3), (0.2, 0.3), (0.0, 0.0)),
  ],
)
def test_toy_points_shapes_and_ranges(name, lo, hi, mean):
  ds = create_dataset(_toy(name, num_points=4000), 100, seed=3)
  points = ds.data_samples(4000)
  assert (ds.example_shape, ds.num_examples, ds.is_image) == ((2,), 4000, False)
  assert points.dtype == np.float32
  assert np.all(points >= lo) and np.all(points <= hi)
  if mean is not None:
    np.testing.assert_allclose(points.mean(0), mean, atol=0.05)


def test_gaussian_mixture_matches_its_parameters():
  weights, means, covariances = gaussian_mixture_params()
  assert weights.shape == (8,) and means.shape == (8, 2) and covariances.shape == (8, 2, 2)
  np.testing.assert_allclose(weights.sum(), 1)
  np.testing.assert_allclose(np.linalg.norm(means, axis=1), 1)
  np.testing.assert_allclose(covariances, np.broadcast_to(0.01 * np.eye(2), (8, 2, 2)))

  points = create_dataset(_toy("gaussian_mixture", 20_000), 100, seed=0).data_samples(20_000)
  nearest = np.argmin(np.linalg.norm(points[:, None] - means[None], axis=-1), axis=1)
  np.testing.assert_allclose(np.bincount(nearest, minlength=8) / len(points), weights, atol=0.01)
  residuals = points - means[nearest]
  np.testing.assert_allclose(np.cov(residuals.T), 0.01 * np.eye(2), atol=0.002)
  # The mixture's own covariance: within-mode 0.01 I plus 0.5 I from means on the unit circle.
  np.testing.assert_allclose(np.cov(points.T), 0.51 * np.eye(2), atol=0.02)


def test_toy_points_depend_on_seed():
  a = create_dataset(_toy(), 16, seed=0).data_samples(64)
  b = create_dataset(_toy(), 16, seed=0).data_samples(64)
  c = create_dataset(_toy(), 16, seed=1).data_samples(64)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


# ---------------------------------------------------------------------------------------------
# Determinism, epochs, resume and process split


def test_batches_are_deterministic_across_instances():
  a = create_dataset(_toy(), 16, seed=7)
  b = create_dataset(_toy(), 16, seed=7)
  for step in (0, 1, 5, 123):
    np.testing.assert_array_equal(a.get_batch(step), b.get_batch(step))
  assert not np.array_equal(a.get_batch(0), a.get_batch(1))


def test_data_order_depends_on_seed():
  # Digits are the same for every seed, so a different batch means a different order.
  config = _data_config(source="builtin", name="digits", image_size=8)
  a = create_dataset(config, 16, seed=0)
  b = create_dataset(config, 16, seed=1)
  np.testing.assert_array_equal(a.data_samples(16), b.data_samples(16))
  assert not np.array_equal(a.get_batch(0), b.get_batch(0))


def test_iterate_equals_get_batch_from_any_start():
  ds = create_dataset(_toy(), 16, seed=0)
  for start in (0, 9):
    got = list(itertools.islice(ds.iterate(start), 6))
    for offset, batch in enumerate(got):
      np.testing.assert_array_equal(batch, ds.get_batch(start + offset))


def test_every_example_once_per_epoch_when_batch_divides():
  ds = create_dataset(_toy(num_points=64), 16, seed=0)
  everything = _sorted_rows(ds.data_samples(64))
  epochs = []
  for epoch in range(3):
    batches = np.concatenate([ds.get_batch(4 * epoch + k) for k in range(4)])
    np.testing.assert_array_equal(_sorted_rows(batches), everything)
    epochs.append(batches)
  assert not np.array_equal(epochs[0], epochs[1])  # reshuffled each epoch


def test_batches_straddle_epochs_without_dropping_examples():
  ds = create_dataset(_toy(num_points=10), 4, seed=0)
  stream = np.concatenate([ds.get_batch(s) for s in range(5)])  # 20 positions = 2 epochs
  everything = _sorted_rows(ds.data_samples(10))
  np.testing.assert_array_equal(_sorted_rows(stream[:10]), everything)
  np.testing.assert_array_equal(_sorted_rows(stream[10:]), everything)


def test_batch_larger_than_dataset():
  ds = create_dataset(_toy(num_points=3), 8, seed=0)
  stream = np.concatenate([ds.get_batch(0), ds.get_batch(1)])  # 16 positions: 5 epochs + 1
  everything = _sorted_rows(ds.data_samples(3))
  for epoch in range(5):
    np.testing.assert_array_equal(_sorted_rows(stream[3 * epoch : 3 * epoch + 3]), everything)


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_batches_concatenate_to_global_batch(process_count):
  whole = create_dataset(_toy(), 16, seed=0, process_index=0, process_count=1)
  parts = [
    create_dataset(_toy(), 16, seed=0, process_index=i, process_count=process_count)
    for i in range(process_count)
  ]
  for step in (0, 3, 11):
    local = [p.get_batch(step) for p in parts]
    assert all(b.shape == (16 // process_count, 2) for b in local)
    np.testing.assert_array_equal(np.concatenate(local), whole.get_batch(step))


def test_default_process_is_the_only_one():
  np.testing.assert_array_equal(
    create_dataset(_toy(), 16, seed=0).get_batch(2),
    create_dataset(_toy(), 16, seed=0, process_index=0, process_count=1).get_batch(2),
  )


def test_ordered_batches_cover_each_process_share_in_order():
  whole = create_dataset(_toy(num_points=50), 4, seed=0, process_index=0, process_count=1)
  batches = list(whole.ordered_batches(16))
  assert [len(b) for b in batches] == [16, 16, 16, 2]
  everything = np.concatenate(batches)
  np.testing.assert_array_equal(everything, whole.data_samples(50))
  shares = [
    np.concatenate(list(create_dataset(_toy(num_points=50), 4, 0, i, 2).ordered_batches(16)))
    for i in range(2)
  ]
  assert [len(s) for s in shares] == [25, 25]
  np.testing.assert_array_equal(np.concatenate(shares), everything)
  np.testing.assert_array_equal(
    create_dataset(_toy(num_points=50), 4, 0, 1, 2).data_samples(3), everything[25:28]
  )


def test_batch_and_process_errors():
  with pytest.raises(ValueError, match="divisible by the process count 4"):
    create_dataset(_toy(), 6, seed=0, process_index=0, process_count=4)
  with pytest.raises(ValueError, match="process index 2"):
    create_dataset(_toy(), 4, seed=0, process_index=2, process_count=2)
  ds = create_dataset(_toy(num_points=10), 4, seed=0, process_index=0, process_count=2)
  with pytest.raises(ValueError, match="holds 5"):
    ds.data_samples(6)


# ---------------------------------------------------------------------------------------------
# Transforms, folder and npz sources


def _folder_config(path, **overrides):
  return _data_config(source="folder", path=str(path), **overrides)


def test_center_crop_offset_matches_hand_computation(tmp_path):
  # 9 wide, 4 high, column j has value 20 j: the central 4x4 square is columns 2..5.
  columns = (20 * np.arange(9)).astype(np.uint8)
  _save_image(tmp_path / "ramp.png", np.tile(columns, (4, 1)))
  ds = create_dataset(
    _folder_config(tmp_path, image_size=4, center_crop=True, num_channels=1), 1, seed=0
  )
  expected = np.tile([40, 60, 80, 100], (4, 1)) / 127.5 - 1
  np.testing.assert_allclose(ds.get_batch(0)[0, ..., 0], expected, atol=1e-6)


def test_center_crop_keeps_only_the_middle_colour(tmp_path):
  # 12 wide, 8 high: red 2-pixel borders left and right around an 8x8 green square.
  image = np.zeros((8, 12, 3), np.uint8)
  image[:, :, 0] = 255
  image[:, 2:10] = (0, 255, 0)
  _save_image(tmp_path / "framed.png", image)
  cropped = create_dataset(_folder_config(tmp_path, image_size=4, center_crop=True), 1, 0)
  np.testing.assert_array_equal(cropped.get_batch(0)[0], np.tile([-1.0, 1.0, -1.0], (4, 4, 1)))
  squashed = create_dataset(_folder_config(tmp_path, image_size=4, center_crop=False), 1, 0)
  assert (
    squashed.get_batch(0)[0, :, 0, 0].min() > 0
  )  # without the crop, red dominates the left edge


def test_folder_mixed_sizes_and_modes(tmp_path):
  # Constant images stay exact through resizing, so each one's value identifies it.
  _save_image(tmp_path / "b" / "gray.png", np.full((20, 30), 51, np.uint8))
  _save_image(tmp_path / "a.png", np.full((5, 5, 3), (255, 0, 102), np.uint8))
  _save_image(tmp_path / "c" / "d" / "rgba.PNG", np.full((9, 7, 4), (0, 255, 0, 128), np.uint8))
  _save_image(tmp_path / "e.jpeg", np.full((16, 16, 3), 128, np.uint8))
  (tmp_path / "notes.txt").write_text("not an image")

  rgb = create_dataset(_folder_config(tmp_path, image_size=8, num_channels=3), 4, seed=0)
  assert (rgb.example_shape, rgb.num_examples, rgb.is_image) == ((8, 8, 3), 4, True)
  samples = rgb.data_samples(4)  # sorted paths: a.png, b/gray.png, c/d/rgba.PNG, e.jpeg
  assert samples.dtype == np.float32 and samples.shape == (4, 8, 8, 3)
  expected = np.array([(255, 0, 102), (51, 51, 51), (0, 255, 0), (128, 128, 128)]) / 127.5 - 1
  np.testing.assert_allclose(samples[:3], np.broadcast_to(expected[:3, None, None], (3, 8, 8, 3)))
  np.testing.assert_allclose(samples[3], np.broadcast_to(expected[3], (8, 8, 3)), atol=0.02)

  gray = create_dataset(_folder_config(tmp_path, image_size=8, num_channels=1), 4, seed=0)
  assert gray.get_batch(0).shape == (4, 8, 8, 1)
  # PIL's luma: L = (299 R + 587 G + 114 B) / 1000, rounded.
  assert gray.data_samples(1)[0, 0, 0, 0] == pytest.approx(
    round((299 * 255 + 114 * 102) / 1000) / 127.5 - 1
  )
  np.testing.assert_array_equal(
    _sorted_rows(rgb.get_batch(0).reshape(4, -1)), _sorted_rows(samples.reshape(4, -1))
  )


def test_folder_errors(tmp_path):
  with pytest.raises(ValueError, match="image folder .*missing.* does not exist"):
    create_dataset(_folder_config(tmp_path / "missing"), 4, seed=0)
  (tmp_path / "notes.txt").write_text("not an image")
  with pytest.raises(ValueError, match=f"no .png/.jpg/.jpeg images under '{tmp_path}'"):
    create_dataset(_folder_config(tmp_path), 4, seed=0)


@pytest.mark.parametrize("damage", ["truncated", "not_an_image", "bad_chunk"])
def test_a_damaged_image_is_one_error_naming_it(tmp_path, damage):
  for i in range(4):
    _save_image(tmp_path / f"{i}.png", np.full((4, 4, 3), 40 * i, np.uint8))
  bad = tmp_path / "2.png"
  good_bytes = bad.read_bytes()
  if damage == "truncated":
    bad.write_bytes(good_bytes[:50])
  elif damage == "not_an_image":
    bad.write_text("hello")
  else:  # a corrupted byte inside the pixel data: PNG's CRC check fails
    bad.write_bytes(good_bytes[:45] + bytes([good_bytes[45] ^ 0xFF]) + good_bytes[46:])
  ds = create_dataset(_folder_config(tmp_path, image_size=4), 4, seed=0)
  with pytest.raises(ValueError, match=f"^cannot read image {bad}: ") as info:
    ds.get_batch(0)
  assert "\n" not in str(info.value)
  with pytest.raises(ValueError, match=f"^cannot read image {bad}: "):
    next(ds.iterate(0))  # from the background threads too


def test_folder_and_npz_sources_need_a_path():
  for source in ("folder", "npz"):
    with pytest.raises(ValueError, match=f"data.source={source} needs data.path"):
      create_dataset(_data_config(source=source, path=""), 4, seed=0)


def _npz_config(path, **overrides):
  return _data_config(source="npz", path=str(path), **overrides)


def test_npz_rgb_under_images_key(tmp_path):
  images = np.arange(6, dtype=np.uint8)[:, None, None, None] * np.ones((6, 4, 4, 3), np.uint8) * 40
  np.savez(tmp_path / "data.npz", images=images, labels=np.arange(6))
  ds = create_dataset(_npz_config(tmp_path / "data.npz", image_size=4), 3, seed=0)
  assert (ds.example_shape, ds.num_examples) == ((4, 4, 3), 6)
  np.testing.assert_allclose(ds.data_samples(6), images / 127.5 - 1, atol=1e-6)
  epoch = np.concatenate([ds.get_batch(0), ds.get_batch(1)])
  np.testing.assert_array_equal(np.sort(epoch[:, 0, 0, 0]), ds.data_samples(6)[:, 0, 0, 0])


def test_npz_grayscale_only_array_to_rgb(tmp_path):
  images = np.full((5, 6, 6), 200, np.uint8)
  np.savez(tmp_path / "gray.npz", images)  # stored as arr_0
  ds = create_dataset(_npz_config(tmp_path / "gray.npz", image_size=3, num_channels=3), 5, 0)
  batch = ds.get_batch(0)
  assert batch.shape == (5, 3, 3, 3)
  np.testing.assert_allclose(batch, 200 / 127.5 - 1, atol=1e-6)


@pytest.mark.parametrize(
  "arrays, match",
  [
    ({"images": np.zeros((2, 4, 4, 3), np.float32)}, "must be uint8, got float32"),
    ({"images": np.zeros((2, 4), np.uint8)}, r"got shape \(2, 4\)"),
    ({"images": np.zeros((2, 4, 4, 2), np.uint8)}, r"got shape \(2, 4, 4, 2\)"),
    ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.zeros(2)}, "none is named 'images'"),
  ],
)
def test_npz_errors(tmp_path, arrays, match):
  np.savez(tmp_path / "bad.npz", **arrays)
  with pytest.raises(ValueError, match=match):
    create_dataset(_npz_config(tmp_path / "bad.npz"), 2, seed=0)


class _MakesDir:
  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return (os.mkdir, (self.marker,))


def test_npz_object_arrays_are_not_unpickled(tmp_path):
  marker = tmp_path / "marker"
  np.savez(tmp_path / "evil.npz", images=np.array([_MakesDir(marker)], dtype=object))
  with pytest.raises(ValueError, match="cannot read npz file .*evil.npz.*allow_pickle"):
    create_dataset(_npz_config(tmp_path / "evil.npz"), 2, seed=0)
  assert not marker.exists()


def test_npz_missing_file(tmp_path):
  with pytest.raises(ValueError, match="cannot read npz file .*nothing.npz"):
    create_dataset(_npz_config(tmp_path / "nothing.npz"), 2, seed=0)


# ---------------------------------------------------------------------------------------------
# tfds


def test_tfds_cifar10_under_mock_data():
  config = _data_config(source="tfds", name="cifar10", split="train")
  with tfds.testing.mock_data(num_examples=20):
    a = create_dataset(config, 8, seed=0)
    b = create_dataset(config, 8, seed=0)
    raw = tfds.data_source("cifar10", split="train", download=False)[0]["image"]
  assert (a.example_shape, a.num_examples, a.is_image) == ((32, 32, 3), 20, True)
  batch = a.get_batch(0)
  assert batch.shape == (8, 32, 32, 3) and batch.dtype == np.float32
  assert batch.min() >= -1 and batch.max() <= 1 and batch.std() > 0.3  # random uint8 pixels
  for step in (0, 1, 2):
    np.testing.assert_array_equal(a.get_batch(step), b.get_batch(step))
  np.testing.assert_allclose(a.data_samples(1)[0], raw / 127.5 - 1, atol=1e-6)
  assert "tensorflow" not in sys.modules


def test_tfds_crop_resize_and_gray_under_mock_data():
  config = _data_config(
    source="tfds", name="celeb_a", image_size=16, center_crop=True, num_channels=1
  )
  with tfds.testing.mock_data(num_examples=4):
    ds = create_dataset(config, 4, seed=0)
  assert ds.get_batch(0).shape == (4, 16, 16, 1)


class TinyImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A real array_record tfds dataset; images are PNG-encoded with PIL, so no TF is needed."""

  # tfds resolves a builder's code path through the builder's package, which on Python >= 3.9 needs
  # the uninstalled `importlib_resources`; a one-part module name makes it skip that lookup.
  __module__ = "tiny_images"
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    features = {
      "image": tfds.features.Image(shape=(6, 4, 3)),
      "label": tfds.features.ClassLabel(num_classes=6),
    }
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(6):
      yield i, {"image": _png_bytes(np.full((6, 4, 3), 30 * i, np.uint8)), "label": i}


def test_tfds_reads_prepared_array_record_files(tmp_path):
  TinyImages(data_dir=tmp_path, file_format="array_record").download_and_prepare()
  config = _data_config(source="tfds", name="tiny_images", path=str(tmp_path), image_size=2)
  ds = create_dataset(config, 3, seed=0)
  assert (ds.example_shape, ds.num_examples) == ((2, 2, 3), 6)
  values = ds.data_samples(6)[:, 0, 0, 0]
  np.testing.assert_allclose(np.sort(values), 30 * np.arange(6) / 127.5 - 1, atol=1e-6)
  epoch = np.concatenate([ds.get_batch(0), ds.get_batch(1)])[:, 0, 0, 0]
  np.testing.assert_array_equal(np.sort(epoch), np.sort(values))
  assert "tensorflow" not in sys.modules


def test_tfds_errors(tmp_path):
  with pytest.raises(ValueError, match="unknown tfds dataset 'cifar100x'"):
    create_dataset(_data_config(source="tfds", name="cifar100x"), 4, seed=0)
  not_built = _data_config(source="tfds", name="cifar10", path=str(tmp_path))
  with pytest.raises(ValueError, match="not prepared .*`tfds build cifar10 "):
    create_dataset(not_built, 4, seed=0)
  with tfds.testing.mock_data(num_examples=2):
    with pytest.raises(ValueError, match="'imdb_reviews' has no 'image' feature"):
      create_dataset(_data_config(source="tfds", name="imdb_reviews"), 2, seed=0)


# ---------------------------------------------------------------------------------------------
# Config errors


def test_config_errors():
  with pytest.raises(ValueError, match="unknown data.source 'hdf5'; valid: tfds, folder, npz"):
    create_dataset(_data_config(source="hdf5"), 4, seed=0)
  with pytest.raises(ValueError, match="unknown builtin dataset 'spiral'; valid: digits, moons"):
    create_dataset(_toy("spiral"), 4, seed=0)
  with pytest.raises(ValueError, match="num_channels must be 1 or 3, got 2"):
    create_dataset(_data_config(source="builtin", name="digits", num_channels=2), 4, seed=0)
