"""compute_features: batches split over 4 simulated devices, padding dropped, exact outputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import sharding
from diffusion_jax.metrics import digits_classifier, feature_nets


def _mean_pixel_net() -> feature_nets.FeatureNet:
  """Features: the mean pixel of each channel; logits: the top-left pixel."""

  def apply(images_BxHxWxC):
    x = images_BxHxWxC.astype(jnp.float32)
    return x.mean(axis=(1, 2)), x[:, 0, 0, :]

  return feature_nets.FeatureNet("mean_pixel", apply, feature_dim=3, num_classes=3)


def test_batches_not_divisible_by_the_device_count_match_numpy(capsys):
  assert jax.device_count() == 4
  rng = np.random.default_rng(0)
  batches = [rng.integers(0, 256, (n, 5, 5, 3), dtype=np.uint8) for n in (6, 6, 3, 9)]
  features, logits = feature_nets.compute_features(_mean_pixel_net(), batches, progress="test")
  images = np.concatenate(batches)
  np.testing.assert_allclose(features, images.mean(axis=(1, 2)), rtol=1e-6)
  np.testing.assert_array_equal(logits, images[:, 0, 0, :])
  assert features.dtype == logits.dtype == np.float32
  assert "test" in capsys.readouterr().err  # the progress bar


def test_outputs_are_split_over_the_mesh():
  seen = []

  def apply(images_BxHxWxC):
    jax.debug.inspect_array_sharding(images_BxHxWxC, callback=seen.append)
    return images_BxHxWxC.astype(jnp.float32).mean(axis=(1, 2, 3))[:, None], images_BxHxWxC[:, 0, 0]

  mesh = sharding.data_mesh()
  net = feature_nets.FeatureNet("probe", apply, feature_dim=1, num_classes=1)
  feature_nets.compute_features(net, [np.zeros((5, 2, 2, 1), np.uint8)], mesh=mesh)
  assert seen[0].is_equivalent_to(sharding.batch_sharding(mesh), 4)


def test_digits_net_through_the_sharded_path_equals_one_unsharded_call(tmp_path):
  net = feature_nets.create_feature_net("digits", cache_dir=str(tmp_path))
  params = digits_classifier.load_or_train(str(tmp_path))
  name = f"digits_classifier_{digits_classifier.fingerprint(params)}"
  assert (net.name, net.feature_dim, net.num_classes) == (name, 64, 10)
  images = digits_classifier.split_digits()[2][:22]
  features, logits = feature_nets.compute_features(net, [images[:10], images[10:]])
  expected_features, expected_logits = jax.jit(digits_classifier.features_and_logits)(
    params, images
  )
  np.testing.assert_allclose(features, expected_features, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(logits, expected_logits, rtol=1e-5, atol=1e-5)
  assert features.shape == (22, 64) and logits.shape == (22, 10)


def test_float_images_are_refused():
  with pytest.raises(ValueError, match=r"uint8 images \[B, H, W, C\] in 0..255, got float32"):
    feature_nets.compute_features(_mean_pixel_net(), [np.zeros((4, 2, 2, 3), np.float32)])


@pytest.mark.parametrize("weights", ["", "/nonexistent/pt_inception.pth"])
def test_inception_without_weights_names_the_file_to_download(weights):
  with pytest.raises(ValueError, match="pt_inception-2015-12-05-6726825d.pth and pass its path as"):
    feature_nets.create_feature_net("inception", inception_weights=weights)


def test_unknown_net_is_refused():
  with pytest.raises(ValueError, match="unknown feature net 'vgg'; valid: inception, digits"):
    feature_nets.create_feature_net("vgg")
