"""The digits classifier: held-out accuracy, determinism, its cache, and FID/IS on real digits."""

import jax
import numpy as np
import pytest
from PIL import Image

from diffusion_jax.metrics import digits_classifier, feature_nets, scores


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def params(cache_dir):
  return digits_classifier.load_or_train(cache_dir)


@pytest.fixture(scope="module")
def digits_outputs(params, cache_dir):
  """Features and logits of the train and held-out splits through the sharded feature path."""
  net = feature_nets.create_feature_net("digits", cache_dir=cache_dir)
  train_images, train_labels, test_images, test_labels = digits_classifier.split_digits()
  return {
    "train": (*feature_nets.compute_features(net, [train_images]), train_labels),
    "test": (*feature_nets.compute_features(net, [test_images]), test_labels),
  }


def test_held_out_accuracy(params):
  accuracy = digits_classifier.held_out_accuracy(params)
  print(f"digits classifier held-out accuracy {accuracy:.4f}")
  assert accuracy >= 0.97


def test_split_is_fixed():
  train_images, _, test_images, test_labels = digits_classifier.split_digits()
  assert train_images.shape == (1438, 8, 8, 1) and test_images.shape == (359, 8, 8, 1)
  assert train_images.dtype == np.uint8 and train_images.max() == 255
  assert set(np.unique(test_labels)) == set(range(10))
  np.testing.assert_array_equal(digits_classifier.split_digits()[3], test_labels)


def test_training_is_deterministic(params):
  first, second = digits_classifier.train(num_epochs=1), digits_classifier.train(num_epochs=1)
  for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second), strict=True):
    np.testing.assert_array_equal(a, b)
  # Other weights, another fingerprint (so reference statistics cached for them are not reused).
  assert digits_classifier.fingerprint(first) != digits_classifier.fingerprint(params)


def test_cache_round_trip_gives_identical_outputs(params, cache_dir, monkeypatch):
  def no_training(*args, **kwargs):
    raise AssertionError("the cached classifier should have been loaded")

  monkeypatch.setattr(digits_classifier, "train", no_training)
  loaded = digits_classifier.load_or_train(cache_dir)
  images = digits_classifier.split_digits()[2][:16]
  apply = jax.jit(digits_classifier.features_and_logits)
  for a, b in zip(apply(params, images), apply(loaded, images), strict=True):
    np.testing.assert_array_equal(a, b)
  assert digits_classifier.fingerprint(loaded) == digits_classifier.fingerprint(params)


def test_cache_of_another_version_is_retrained(params, tmp_path, monkeypatch):
  path = digits_classifier.cache_path(str(tmp_path))
  scores.write_npz_atomically(
    path, {"Dense_0/kernel": np.zeros((64, 32)), "version": np.array(0)}, overwrite=False
  )
  calls = []
  monkeypatch.setattr(digits_classifier, "train", lambda: calls.append(1) or params)
  assert digits_classifier.load_or_train(str(tmp_path)) is params and calls == [1]
  # The stale file was replaced: the next load reads the cache without training.
  digits_classifier.load_or_train(str(tmp_path))
  assert calls == [1]


def test_cache_dir_from_environment(monkeypatch, tmp_path):
  monkeypatch.setenv("DIFFUSION_JAX_CACHE", str(tmp_path))
  assert digits_classifier.cache_path() == str(tmp_path / "digits_classifier_v1.npz")


def _fid(features1, features2):
  return scores.frechet_distance(
    *scores.feature_statistics(features1), *scores.feature_statistics(features2)
  )


def test_fid_of_real_digits_is_small_next_to_noise_and_blank_images(digits_outputs, cache_dir):
  net = feature_nets.create_feature_net("digits", cache_dir=cache_dir)
  rng = np.random.default_rng(0)
  noise = rng.integers(0, 256, (359, 8, 8, 1), dtype=np.uint8)
  blank = np.zeros((359, 8, 8, 1), np.uint8)
  train_features, test_features = digits_outputs["train"][0], digits_outputs["test"][0]
  fid_real = _fid(test_features, train_features)
  fid_noise = _fid(feature_nets.compute_features(net, [noise])[0], train_features)
  fid_blank = _fid(feature_nets.compute_features(net, [blank])[0], train_features)
  print(f"digits FID: test vs train {fid_real:.3f}, noise {fid_noise:.1f}, blank {fid_blank:.1f}")
  assert fid_real < 0.05 * min(fid_noise, fid_blank)


def test_inception_score_of_real_digits_is_near_ten(digits_outputs):
  logits = np.concatenate([digits_outputs["train"][1], digits_outputs["test"][1]])
  score, std = scores.inception_score(logits, num_splits=10)
  print(f"digits IS of all 1797 real digits: {score:.3f} +- {std:.3f}")
  assert score > 9.0
  logits, labels = digits_outputs["train"][1:]
  threes, _ = scores.inception_score(logits[labels == 3], num_splits=10)
  assert threes < 1.5


def test_rgb_images_are_greyed(params):
  images = digits_classifier.split_digits()[2][:8]
  apply = jax.jit(digits_classifier.features_and_logits)
  np.testing.assert_allclose(
    apply(params, np.repeat(images, 3, axis=3))[1], apply(params, images)[1], atol=1e-4
  )


def test_16px_digits_are_resized_and_still_recognised(params):
  """As the data pipeline serves digits at image_size=16 (PIL bicubic), so a model samples them."""
  _, _, images, labels = digits_classifier.split_digits()
  big = np.stack(
    [np.asarray(Image.fromarray(x[..., 0]).resize((16, 16), Image.BICUBIC)) for x in images]
  )
  logits = jax.jit(digits_classifier.features_and_logits)(params, big[..., None])[1]
  accuracy = np.mean(np.argmax(logits, axis=-1) == labels)
  print(f"held-out accuracy at 16x16: {accuracy:.4f}")
  assert accuracy > 0.9


def test_float_images_are_refused(params):
  with pytest.raises(ValueError, match="takes uint8"):
    digits_classifier.features_and_logits(params, np.zeros((2, 8, 8, 1), np.float32))
