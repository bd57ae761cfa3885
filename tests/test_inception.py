"""The FID Inception-v3 port against pytorch-fid: a committed fixture, and torch where present."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.metrics import inception
from tests.fixtures import make_inception_fixture as ref

# torchvision's Inception3(num_classes=1008, aux_logits=False) with pytorch-fid's FID blocks:
# sum(p.numel() for p in model.parameters()) and the BatchNorm running means and variances.
NUM_PARAMS = 23_850_960
NUM_BN_STATS = 34_432
NUM_TORCH_TENSORS = 472  # 94 conv+BN layers x 5 tensors + fc weight and bias


def _reference_resize(x_HxW: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  """torch's bilinear resize (align_corners=False, no antialias) as dense interpolation matrices.

  Coordinates are float32 because torch computes them so; the matrix products are float64.
  """

  def matrix(n_in, n_out):
    scale = np.float32(n_in) / np.float32(n_out)
    src = scale * (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    src = np.maximum(src, 0).astype(np.float64)
    m = np.zeros((n_out, n_in))
    for o, s in enumerate(src):
      lo = min(int(s), n_in - 1)
      m[o, lo] += 1 - (s - lo)
      m[o, min(lo + 1, n_in - 1)] += s - lo  # past the last centre both taps are the edge pixel
    return m

  return matrix(x_HxW.shape[0], out_h) @ x_HxW.astype(np.float64) @ matrix(x_HxW.shape[1], out_w).T


RESIZES = [(32, 32, 299, 299), (512, 512, 299, 299), (300, 41, 299, 299), (7, 11, 13, 5)]


@pytest.mark.parametrize("h, w, out_h, out_w", RESIZES)
def test_resize_matches_reference(h, w, out_h, out_w):
  x = np.random.default_rng(h * w).random((2, h, w, 3), dtype=np.float32)
  got = np.asarray(inception.resize_bilinear(x, out_h, out_w))
  assert got.shape == (2, out_h, out_w, 3) and got.dtype == np.float32
  np.testing.assert_allclose(
    got[1, :, :, 2], _reference_resize(x[1, :, :, 2], out_h, out_w), atol=5e-7
  )


def test_resize_to_same_size_is_identity():
  x = np.random.default_rng(0).random((1, 299, 299, 1), dtype=np.float32)
  np.testing.assert_array_equal(inception.resize_bilinear(x, 299, 299), x)


def test_preprocess_scales_and_repeats_grayscale():
  gray = np.random.default_rng(0).integers(0, 256, (2, 299, 299, 1), dtype=np.uint8)
  x_gray = np.asarray(inception.preprocess_images(gray))
  assert x_gray.shape == (2, 299, 299, 3)
  np.testing.assert_allclose(x_gray, np.repeat(gray / 255 * 2 - 1, 3, axis=-1), atol=1e-6)
  small = gray[:, :40, :30]
  np.testing.assert_array_equal(
    inception.preprocess_images(small), inception.preprocess_images(np.repeat(small, 3, axis=-1))
  )


@pytest.mark.parametrize(
  "images, message",
  [
    (np.zeros((2, 32, 32, 3), np.float32), "uint8"),
    (np.zeros((2, 32, 32, 2), np.uint8), "channels"),
    (np.zeros((32, 32, 3), np.uint8), "channels"),
  ],
)
def test_preprocess_rejects_bad_images(images, message):
  with pytest.raises(ValueError, match=message):
    inception.preprocess_images(images)


def test_parameter_count_and_shapes():
  abstract = inception.abstract_variables()
  count = lambda tree: sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))
  assert count(abstract["params"]) == NUM_PARAMS
  assert count(abstract["batch_stats"]) == NUM_BN_STATS
  shapes = inception.torch_state_dict_shapes()
  assert len(shapes) == NUM_TORCH_TENSORS
  assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
  assert shapes["Mixed_6b.branch7x7_2.conv.weight"] == (128, 128, 1, 7)
  assert shapes["Mixed_7c.branch_pool.bn.running_var"] == (192,)
  assert shapes["fc.weight"] == (1008, 2048)
  assert abstract["params"]["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"].shape == (1, 7, 128, 128)


@pytest.fixture(scope="module")
def state_dict():
  return ref.random_state_dict(ref.SEED)


def test_state_dict_maps_onto_flax_layout(state_dict):
  variables = inception.variables_from_torch_state_dict(state_dict)
  kernel = np.asarray(variables["params"]["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"])
  torch_kernel = state_dict["Mixed_6b.branch7x7_2.conv.weight"]  # [out, in, kh, kw]
  assert kernel[0, 5, 17, 3] == torch_kernel[3, 17, 0, 5]
  np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], state_dict["fc.weight"].T)
  bn = "Mixed_5b.branch_pool.bn"
  np.testing.assert_array_equal(
    variables["params"]["Mixed_5b"]["branch_pool"]["bn"]["scale"], state_dict[f"{bn}.weight"]
  )
  np.testing.assert_array_equal(
    variables["batch_stats"]["Mixed_5b"]["branch_pool"]["bn"]["var"],
    state_dict[f"{bn}.running_var"],
  )
  structure = jax.tree.structure(inception.abstract_variables())
  assert jax.tree.structure(variables) == structure
  with_counters = {**state_dict, f"{bn}.num_batches_tracked": np.int64(7)}
  assert jax.tree.structure(inception.variables_from_torch_state_dict(with_counters)) == structure


def test_loader_refuses_wrong_tensors(state_dict):
  name = "Mixed_7b.branch3x3_2a.conv.weight"
  cases = [
    ({k: v for k, v in state_dict.items() if k != name}, "lack tensor Mixed_7b.branch3x3_2a"),
    ({**state_dict, "AuxLogits.fc.weight": np.zeros((1008, 768))}, "unexpected tensor AuxLogits"),
    ({**state_dict, name: state_dict[name][..., :2]}, "Mixed_7b.branch3x3_2a.conv.weight has"),
  ]
  for tampered, message in cases:
    with pytest.raises(ValueError, match=message):
      inception.variables_from_torch_state_dict(tampered)
  with pytest.raises(ValueError, match="does not exist"):
    inception.load_inception_params("no_such_inception.pth")


def test_features_match_pytorch_fid_fixture(state_dict):
  fixture = np.load(ref.OUT)
  assert ref.weights_checksum(state_dict) == pytest.approx(
    float(fixture["weights_checksum"]), rel=1e-12
  ), (
    "NumPy now draws different random weights than when the fixture was written; rerun "
    "tests/fixtures/make_inception_fixture.py"
  )
  variables = inception.variables_from_torch_state_dict(state_dict)
  pool3, logits = inception.inception_features(variables, fixture["images"])
  assert pool3.shape == (2, 2048) and logits.shape == (2, 1008)
  assert pool3.dtype == logits.dtype == jnp.float32
  _assert_close(pool3, fixture["pool3"])
  _assert_close(logits, fixture["logits"])


def _assert_close(got, want, rel=2e-6):
  """Max |got - want| within rel of max |want| (float32 accumulation-order differences)."""
  got = np.asarray(got)
  assert np.isfinite(got).all()
  np.testing.assert_allclose(got, want, rtol=0, atol=rel * np.abs(want).max())


# --- against torch itself (skipped where torch is absent, as in CI) ---


@pytest.mark.parametrize("h, w, out_h, out_w", RESIZES)
def test_resize_matches_torch(h, w, out_h, out_w):
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(h * w).random((2, h, w, 3), dtype=np.float32)
  want = torch.nn.functional.interpolate(
    torch.from_numpy(x).permute(0, 3, 1, 2), (out_h, out_w), mode="bilinear", align_corners=False
  )
  want = want.permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(inception.resize_bilinear(x, out_h, out_w), want, atol=2.5e-7)
  # The reference the torch-free test uses agrees with torch too.
  np.testing.assert_allclose(
    _reference_resize(x[0, :, :, 1], out_h, out_w), want[0, :, :, 1], atol=2.5e-7
  )


def test_fixture_is_pytorch_fid_output(state_dict):
  pytest.importorskip("torchvision")
  pytest.importorskip("pytorch_fid")
  fixture = np.load(ref.OUT)
  pool3, logits = ref.pytorch_fid_features(ref.pytorch_fid_networks(state_dict), fixture["images"])
  _assert_close(pool3, fixture["pool3"], rel=1e-6)
  _assert_close(logits, fixture["logits"], rel=1e-6)


def test_loads_torch_files_and_matches_pytorch_fid(tmp_path):
  torch = pytest.importorskip("torch")
  pytest.importorskip("torchvision")
  pytest.importorskip("pytorch_fid")
  networks = ref.pytorch_fid_networks(ref.random_state_dict(ref.SEED + 1))
  # The module's own state dict, as pytorch-fid's file holds it (with BatchNorm counters).
  torch_state = networks[1].state_dict()
  torch.save(torch_state, tmp_path / "zip.pth")
  torch.save(torch_state, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
  variables = inception.load_inception_params(tmp_path / "zip.pth")
  legacy = inception.load_inception_params(os.fspath(tmp_path / "legacy.pth"))
  jax.tree.map(np.testing.assert_array_equal, legacy, variables)

  rng = np.random.default_rng(3)
  batches = [
    rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8),  # upscaled
    rng.integers(0, 256, (1, 512, 512, 3), dtype=np.uint8),  # shrunk
    rng.integers(0, 256, (1, 37, 53, 1), dtype=np.uint8),  # grayscale, not square
  ]
  # One network compile for all sizes: preprocess each batch, then run the network once.
  x = jnp.concatenate([inception.preprocess_images(b) for b in batches])
  pool3, logits = jax.jit(inception.InceptionV3().apply)(variables, x)
  want = [ref.pytorch_fid_features(networks, b) for b in batches]
  _assert_close(pool3, np.concatenate([p for p, _ in want]))
  _assert_close(logits, np.concatenate([lg for _, lg in want]))
