"""Class labels through the data pipeline: every source pairs each example with its own label, in
the same deterministic, resumable and process-sharded order as the unlabeled batches."""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from diffusion_jax.configs import default
from diffusion_jax.data import create_dataset
from tests.test_data import TinyImages


def _data_config(**overrides):
  data = default.get_config().data
  data.update(overrides)
  return data


def _check_order(config, global_batch=4, steps=3):
  """Labeled batches hold the unlabeled batches' examples; processes split each global batch."""
  whole = create_dataset(config, global_batch, seed=3, labeled=True)
  plain = create_dataset(config, global_batch, seed=3)
  halves = [
    create_dataset(config, global_batch, 3, process_index=i, process_count=2, labeled=True)
    for i in range(2)
  ]
  stream = whole.iterate(1, labeled=True)
  for step in range(steps):
    x, y = whole.get_labeled_batch(step)
    assert y.dtype == np.int32 and y.shape == (global_batch,)
    np.testing.assert_array_equal(x, plain.get_batch(step))
    parts = [h.get_labeled_batch(step) for h in halves]
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), y)
    if step >= 1:
      x_it, y_it = next(stream)
      np.testing.assert_array_equal(x_it, x)
      np.testing.assert_array_equal(y_it, y)
  return whole


def test_npz_labels_follow_their_images(tmp_path):
  labels = np.array([2, 0, 1, 2, 1, 0], np.int64)
  images = (labels * 100)[:, None, None].astype(np.uint8) * np.ones((6, 2, 2), np.uint8)
  np.savez(tmp_path / "d.npz", images=images, labels=labels)
  config = _data_config(source="npz", path=str(tmp_path / "d.npz"), image_size=2, num_channels=1)
  ds = _check_order(config)
  assert ds.class_names == ("0", "1", "2")
  for step in range(3):
    x, y = ds.get_labeled_batch(step)
    np.testing.assert_allclose(x[:, 0, 0, 0], y * 100 / 127.5 - 1, atol=1e-6)


@pytest.mark.parametrize(
  "labels, match",
  [
    (None, "has no 'labels' array"),
    (np.zeros(3), "must be integers"),
    (np.zeros(2, int), r"must have shape \(3,\)"),
    (np.array([0, -1, 2]), "must be >= 0"),
  ],
)
def test_npz_label_errors(tmp_path, labels, match):
  arrays = {"images": np.zeros((3, 2, 2), np.uint8)}
  if labels is not None:
    arrays["labels"] = labels
  np.savez(tmp_path / "d.npz", **arrays)
  config = _data_config(source="npz", path=str(tmp_path / "d.npz"), image_size=2)
  with pytest.raises(ValueError, match=match):
    create_dataset(config, 2, seed=0, labeled=True)


def test_folder_classes_are_sorted_subfolders(tmp_path):
  shades = {"cat": 0, "dog": 120, "emu": 240}
  for name, shade in shades.items():
    for i in range(2):
      (tmp_path / name / "nested").mkdir(parents=True, exist_ok=True)
      where = tmp_path / name / ("nested" if i else "") / f"{i}.png"
      Image.fromarray(np.full((3, 3), shade, np.uint8)).save(where)
  config = _data_config(source="folder", path=str(tmp_path), image_size=3, num_channels=1)
  ds = _check_order(config)
  assert ds.class_names == ("cat", "dog", "emu")
  for step in range(3):
    x, y = ds.get_labeled_batch(step)
    np.testing.assert_allclose(x[:, 0, 0, 0], np.array([0, 120, 240])[y] / 127.5 - 1, atol=1e-6)
  Image.fromarray(np.zeros((3, 3), np.uint8)).save(tmp_path / "loose.png")
  with pytest.raises(ValueError, match="one sub-folder per class, but 'loose.png'"):
    create_dataset(config, 2, seed=0, labeled=True)
  assert create_dataset(config, 2, seed=0).num_examples == 7  # unlabeled: every image


def test_tfds_label_feature(tmp_path):
  TinyImages(data_dir=tmp_path, file_format="array_record").download_and_prepare()
  config = _data_config(source="tfds", name="tiny_images", path=str(tmp_path), image_size=2)
  ds = _check_order(config, global_batch=2)
  assert ds.num_classes == 6
  x, y = ds.get_labeled_batch(0)
  np.testing.assert_allclose(x[:, 0, 0, 0], 30 * y / 127.5 - 1, atol=1e-6)
  config.label_feature = "digit"
  with pytest.raises(ValueError, match="no class label feature 'digit' .*'label'"):
    create_dataset(config, 2, seed=0, labeled=True)


def test_tfds_cifar10_labels_under_mock_data():
  with tfds.testing.mock_data(num_examples=8):
    ds = create_dataset(_data_config(source="tfds", name="cifar10"), 4, seed=0, labeled=True)
    _, y = ds.get_labeled_batch(0)
  assert ds.num_classes == 10 and np.all((0 <= y) & (y < 10))


def test_builtin_labels():
  from sklearn.datasets import load_digits

  digits_config = _data_config(source="builtin", name="digits", image_size=8, num_channels=1)
  digits = create_dataset(digits_config, 5, 0, labeled=True)
  x, y = digits.get_labeled_batch(0)
  sk = load_digits()
  for image, label in zip(x, y, strict=True):
    # find the image among sklearn's and check its target
    match = np.all(np.abs(sk.images / 16 * 2 - 1 - image[..., 0]) < 0.01, axis=(1, 2))
    assert label in sk.target[match]
  toy = _data_config(source="builtin", name="gaussian_mixture", num_points=64)
  ds = _check_order(toy, global_batch=8)
  x, y = ds.get_labeled_batch(0)
  angles = 2 * np.pi * y / 8
  centres = np.stack([np.cos(angles), np.sin(angles)], -1)
  assert np.max(np.abs(x - centres)) < 0.6  # 0.1 std around the component's mean
  moons = create_dataset(_data_config(source="builtin", name="moons"), 64, 0, labeled=True)
  x, y = moons.get_labeled_batch(0)
  assert moons.class_names == ("upper_moon", "lower_moon")
  assert x[y == 0, 1].mean() > 0.3 > x[y == 1, 1].mean()
  with pytest.raises(ValueError, match="builtin 'swiss_roll' has no class labels"):
    create_dataset(_data_config(source="builtin", name="swiss_roll"), 4, 0, labeled=True)
  with pytest.raises(ValueError, match="no class labels; create it with labeled=True"):
    create_dataset(toy, 4, 0).iterate(0, labeled=True)
