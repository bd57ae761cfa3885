"""compute_features: batches split over 4 simulated devices, padding dropped, exact outputs; the
ImageNet label map that names Inception's logits, and accuracy from named logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import sharding
from diffusion_jax.metrics import digits_classifier, feature_nets, imagenet_labels, sample_quality


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


LABEL_MAP = """# -*- protobuffer -*-
entry {
  target_class: 5
  target_class_string: "n01440764"
}
entry {
  target_class: 1
  target_class_string: "n01443537"
}
entry {
  target_class: 3
  target_class_string: "n01484850"
}
entry {
  target_class: 2
  target_class_string: "n01491361"
}
"""


def test_the_inception_label_map_names_outputs_by_synset(tmp_path):
  path = tmp_path / "imagenet_2012_challenge_label_map_proto.pbtxt"
  path.write_text(LABEL_MAP)
  names = imagenet_labels.read_label_map(path, 7)
  assert names == ("", "n01443537", "n01491361", "n01484850", "", "n01440764", "")
  with pytest.raises(ValueError, match="output 5 is out of range 0..4"):
    imagenet_labels.read_label_map(path, 5)
  path.write_text(LABEL_MAP.replace("target_class: 3", "target_class: 1"))
  with pytest.raises(ValueError, match="or named twice"):
    imagenet_labels.read_label_map(path, 7)
  weights = tmp_path / "pt_inception.pth"
  weights.write_bytes(b"")  # the map is read before the weights
  with pytest.raises(ValueError, match="no Inception label map at"):
    feature_nets.create_feature_net(
      "inception", inception_weights=str(weights), inception_label_map=str(tmp_path / "none")
    )


def test_accuracy_on_synset_named_classes_from_named_logits(tmp_path):
  """A stand-in of Inception's shape: 7 outputs, 4 named by synset, the top one the image's first
  pixel and the runner-up always output 5. The top-1 is taken over the named outputs only."""
  path = tmp_path / "labels.pbtxt"
  path.write_text(LABEL_MAP)

  def apply(x):
    logits = 2.0 * jax.nn.one_hot(x[:, 0, 0, 0], 7) + 0.5 * jax.nn.one_hot(5, 7)[None]
    return x[:, 0, 0, :].astype(jnp.float32), logits

  names = imagenet_labels.read_label_map(path, 7)
  net = feature_nets.FeatureNet("stand_in", apply, 1, 7, class_names=names)
  run_classes = ("n01484850", "n01440764", "n01443537")  # outputs 3, 5, 1
  pixels = np.array([3, 5, 1, 1, 2, 0, 5, 3], np.uint8)  # 2 names a synset the run lacks
  _, logits = feature_nets.compute_features(net, [pixels.reshape(8, 1, 1, 1)])
  predicted = sample_quality.predicted_classes(net, logits, 3, run_classes)
  np.testing.assert_array_equal(predicted, [0, 1, 2, 2, -1, 1, 1, 0])  # unnamed 0: output 5
  got = sample_quality.class_accuracy(predicted, np.array([0, 1, 2, 0, 1, 2, 1, 1]), 3)
  assert got == {"accuracy": 0.5, "per_class_accuracy": [0.5, 0.5, 0.5]}
  assert sample_quality.predicted_classes(net, logits, 2, ("n01440764", "n09999999")) is None
  assert sample_quality.predicted_classes(net, logits, 3, ()) is None
  digits_like = feature_nets.FeatureNet("stand_in", apply, 1, 7)  # no names: classes in order
  np.testing.assert_array_equal(sample_quality.predicted_classes(digits_like, logits, 7), pixels)
  assert sample_quality.predicted_classes(digits_like, logits, 3) is None
