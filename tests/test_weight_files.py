"""weight_files reads safetensors and torch.save files (zip and legacy) without torch.

The fixtures were written by tests/fixtures/make_weight_file_fixtures.py with torch.
"""

import json
import os
import pickle
import zipfile

import numpy as np
import pytest

from diffusion_jax import weight_files

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "weight_files")


@pytest.fixture(scope="module")
def expected():
  with np.load(os.path.join(FIXTURES, "expected.npz")) as f:
    return dict(f)


@pytest.mark.parametrize(
  "name", ["tensors.safetensors", "tensors_zip.pth", "tensors_legacy.pth", "nested_zip.pth"]
)
def test_reads_every_tensor_exactly(name, expected):
  arrays = weight_files.read_weights(os.path.join(FIXTURES, name))
  assert sorted(arrays) == sorted(expected)
  for key, want in expected.items():
    got = arrays[key]
    assert got.shape == want.shape, key
    np.testing.assert_array_equal(got.astype(want.dtype), want, err_msg=key)
  assert arrays["half"].dtype == np.float16
  assert arrays["bfloat"].dtype.name == "bfloat16"
  assert arrays["counts"].dtype == np.int64


def test_views_are_independent_copies():
  arrays = weight_files.read_weights(os.path.join(FIXTURES, "tensors_zip.pth"))
  # dense.row_slice shares torch storage with dense.weight_t; the arrays must not alias.
  np.testing.assert_array_equal(arrays["dense.row_slice"], arrays["dense.weight_t"].T[2:4])
  arrays["dense.row_slice"][:] = 0
  assert np.any(arrays["dense.weight_t"] != 0)


class _RunsCode:
  def __reduce__(self):
    return (os.system, ("echo should-not-run",))


def test_refuses_pickles_that_name_other_globals(tmp_path):
  path = tmp_path / "evil.pth"
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("archive/data.pkl", pickle.dumps({"w": _RunsCode()}))
  with pytest.raises(pickle.UnpicklingError, match="not a tensor"):
    weight_files.read_weights(path)


def test_clear_errors_for_bad_files(tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    weight_files.read_weights(tmp_path / "missing.bin")
  junk = tmp_path / "junk.bin"
  junk.write_bytes(b"not a checkpoint at all")
  with pytest.raises(ValueError, match="neither a safetensors file nor a torch.save"):
    weight_files.read_weights(junk)
  header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}).encode()
  short = tmp_path / "short.safetensors"
  short.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
  with pytest.raises(ValueError, match="inconsistent byte range"):
    weight_files.read_weights(short)
