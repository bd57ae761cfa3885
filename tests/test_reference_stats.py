"""Reference statistics of datasets: exact uint8 round trip, NumPy equality, caching, metadata."""

import os

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from diffusion_jax import data
from diffusion_jax.configs import default
from diffusion_jax.metrics import feature_nets, reference_stats, scores


def _data_config(**overrides):
  config = default.get_config().data
  config.update(overrides)
  return config


def _digits_config():
  return _data_config(source="builtin", name="digits", image_size=8, num_channels=1)


def _mean_pixel_net(name="mean_pixel"):
  """Features: the mean pixel of each channel; logits: the top-left pixel."""

  def apply(images_BxHxWxC):
    x = images_BxHxWxC.astype(jnp.float32)
    return x.mean(axis=(1, 2)), x[:, 0, 0, :]

  return feature_nets.FeatureNet(name, apply, feature_dim=3, num_classes=3)


def _exploding_net(name, feature_dim=3):
  """A net that must not run: stands in for one whose statistics are cached."""

  def apply(images_BxHxWxC):
    raise AssertionError("the cached statistics should have been used")

  return feature_nets.FeatureNet(name, apply, feature_dim, num_classes=10)


def test_pipeline_floats_map_back_to_the_original_digit_pixels():
  from sklearn.datasets import load_digits

  ds = data.create_dataset(_digits_config(), 64, seed=0)
  batches = reference_stats._dataset_uint8_batches(ds, 500, 1797)
  expected = np.round(load_digits().images * (255 / 16)).astype(np.uint8)[..., None]
  np.testing.assert_array_equal(np.concatenate(list(batches)), expected)


def test_digits_stats_equal_numpy_and_are_cached(tmp_path):
  from sklearn.datasets import load_digits

  net = feature_nets.create_feature_net("digits", cache_dir=str(tmp_path))
  stats = reference_stats.dataset_reference_stats(
    _digits_config(), net, num_examples=300, batch_size=128, cache_dir=str(tmp_path)
  )
  images = np.round(load_digits().images[:300] * (255 / 16)).astype(np.uint8)[..., None]
  features = feature_nets.compute_features(net, [images])[0].astype(np.float64)
  np.testing.assert_allclose(stats.mu, features.mean(axis=0), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(stats.sigma, np.cov(features, rowvar=False), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(stats.features, features, rtol=1e-6, atol=1e-7)
  assert stats.metadata["net"] == net.name and stats.metadata["num_examples"] == 300
  assert os.path.dirname(stats.path) == str(tmp_path / "reference_stats")
  assert os.path.basename(stats.path).startswith(f"builtin_digits_train_8px_1ch_300_{net.name}_")

  cached = reference_stats.dataset_reference_stats(
    _digits_config(), _exploding_net(net.name, 64), num_examples=300, cache_dir=str(tmp_path)
  )
  assert cached.path == stats.path
  np.testing.assert_array_equal(cached.sigma, stats.sigma)
  np.testing.assert_array_equal(cached.features, stats.features)


def _write_pngs(folder, images):
  folder.mkdir()
  for i, image in enumerate(images):
    Image.fromarray(image).save(folder / f"{i:03d}.png")
  return str(folder)


def _write_npz(path, images):
  np.savez(path, images=images)
  return str(path)


@pytest.mark.parametrize("source, write", [("folder", _write_pngs), ("npz", _write_npz)])
def test_folder_and_npz_stats_equal_numpy(tmp_path, source, write):
  images = np.random.default_rng(0).integers(0, 256, (11, 6, 6, 3), dtype=np.uint8)
  path = write(tmp_path / f"images.{source}", images)
  config = _data_config(source=source, path=path, image_size=6, num_channels=3)
  stats = reference_stats.dataset_reference_stats(
    config, _mean_pixel_net(), batch_size=4, cache_dir=str(tmp_path / "cache")
  )
  features = images.astype(np.float64).mean(axis=(1, 2))
  np.testing.assert_allclose(stats.mu, features.mean(axis=0), rtol=1e-6)
  np.testing.assert_allclose(stats.sigma, np.cov(features, rowvar=False), rtol=1e-5)
  assert stats.metadata["num_examples"] == 11 and stats.metadata["source"] == source


def test_cache_is_reused_and_mismatched_metadata_refused(tmp_path):
  images = np.random.default_rng(1).integers(0, 256, (9, 4, 4, 3), dtype=np.uint8)
  config = _data_config(source="npz", path=_write_npz(tmp_path / "x.npz", images), image_size=4)
  cache_path = str(tmp_path / "stats.npz")
  first = reference_stats.dataset_reference_stats(
    config, _mean_pixel_net(), cache_path=cache_path, progress=False
  )
  mtime = os.stat(cache_path).st_mtime_ns
  again = reference_stats.dataset_reference_stats(
    config, _exploding_net("mean_pixel"), cache_path=cache_path
  )
  np.testing.assert_array_equal(again.features, first.features)
  assert os.stat(cache_path).st_mtime_ns == mtime

  with pytest.raises(ValueError, match=r"other settings \(net: 'mean_pixel' \(wanted 'other'\)\)"):
    reference_stats.dataset_reference_stats(config, _mean_pixel_net("other"), cache_path=cache_path)
  with pytest.raises(ValueError, match=r"num_examples: 9 \(wanted 5\)"):
    reference_stats.dataset_reference_stats(
      config, _mean_pixel_net(), num_examples=5, cache_path=cache_path
    )
  redone = reference_stats.dataset_reference_stats(
    config, _mean_pixel_net(), num_examples=5, cache_path=cache_path, overwrite=True
  )
  np.testing.assert_array_equal(redone.features, first.features[:5])
  assert scores.load_stats(cache_path).metadata["num_examples"] == 5


def test_stats_from_images_returns_logits_and_counts(tmp_path):
  images = np.random.default_rng(2).integers(0, 256, (7, 3, 3, 3), dtype=np.uint8)
  stats, logits = reference_stats.stats_from_images(
    [images[:4], images[4:]], _mean_pixel_net(), metadata={"what": "samples"}
  )
  np.testing.assert_array_equal(logits, images[:, 0, 0, :])
  assert stats.metadata == {
    "what": "samples",
    "net": "mean_pixel",
    "feature_dim": 3,
    "num_examples": 7,
  }


def test_point_data_is_refused():
  with pytest.raises(ValueError, match="need image data"):
    reference_stats.dataset_reference_stats(
      _data_config(source="builtin", name="moons", num_points=16), _mean_pixel_net()
    )
