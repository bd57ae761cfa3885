"""weight_files reads safetensors and torch.save files (zip and legacy) without torch.

The fixtures were written by tests/fixtures/make_weight_file_fixtures.py with torch.
"""

import collections
import io
import json
import os
import pickle
import pickletools
import zipfile

import numpy as np
import pytest

from diffusion_jax.pretrained import weight_files

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


class _MakesDir:
  """Unpickles into os.mkdir(marker): a file that runs code leaves the marker behind."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return (os.mkdir, (self.marker,))


# What the payload names once pickled ("posix.mkdir" on Linux).
_PAYLOAD_GLOBAL = f"{os.mkdir.__module__}.mkdir"

# torch.save's legacy layout: these five pickles, then the bytes of each storage.
_LEGACY_PICKLES = [
  "magic number",
  "protocol version",
  "sys info",
  "tensor tree",
  "storage key list",
]


def _legacy_parts() -> list[bytes]:
  """The legacy fixture cut into its five pickles and the storage bytes that follow them."""
  with open(os.path.join(FIXTURES, "tensors_legacy.pth"), "rb") as f:
    stream = io.BytesIO(f.read())
  parts = []
  for _ in _LEGACY_PICKLES:
    start = stream.tell()
    # genops only decodes opcodes up to STOP; nothing in the fixture is unpickled here.
    collections.deque(pickletools.genops(stream), maxlen=0)
    parts.append(stream.getvalue()[start : stream.tell()])
  parts.append(stream.read())
  return parts


def _zip_with_data_pkl(path, data_pkl: bytes):
  """Copies the zip fixture to `path` with its data.pkl replaced."""
  with (
    zipfile.ZipFile(os.path.join(FIXTURES, "tensors_zip.pth")) as good,
    zipfile.ZipFile(path, "w") as archive,
  ):
    for name in good.namelist():
      archive.writestr(name, data_pkl if name.endswith("/data.pkl") else good.read(name))


def _assert_refused(path, marker):
  with pytest.raises(ValueError, match="refused to load") as error:
    weight_files.read_weights(path)
  assert not marker.exists(), "opening the weight file ran its payload"
  message = str(error.value)
  assert str(path) in message and _PAYLOAD_GLOBAL in message and "\n" not in message


def test_legacy_layout_reads_from_its_parts():
  # The malicious files below are these parts with one replaced; the rest must stay valid.
  path = os.path.join(FIXTURES, "tensors_legacy.pth")
  with open(path, "rb") as f:
    assert b"".join(_legacy_parts()) == f.read()


@pytest.mark.parametrize("position", range(5), ids=_LEGACY_PICKLES)
def test_legacy_files_run_no_code_at_any_pickle(position, tmp_path):
  marker = tmp_path / "marker"
  payload = _MakesDir(marker)
  parts = _legacy_parts()
  parts[position] = pickle.dumps({"conv.weight": payload} if position == 3 else payload, 2)
  path = tmp_path / "evil.bin"
  path.write_bytes(b"".join(parts))
  _assert_refused(path, marker)


def _inst_pickle(marker):
  # Protocol 0's INST opcode names the callable and calls it, with no REDUCE.
  return (
    b"(S'" + str(marker).encode() + b"'\ni" + _PAYLOAD_GLOBAL.replace(".", "\n").encode() + b"\n."
  )


@pytest.mark.parametrize("form", ["protocol0", "protocol2", "protocol5", "inst"])
def test_header_refuses_every_way_to_name_a_global(form, tmp_path):
  marker = tmp_path / "marker"
  if form == "inst":
    payload = _inst_pickle(marker)
  else:
    payload = pickle.dumps({"little_endian": _MakesDir(marker)}, int(form[-1]))
  parts = _legacy_parts()
  parts[2] = payload
  path = tmp_path / "evil.bin"
  path.write_bytes(b"".join(parts))
  _assert_refused(path, marker)


@pytest.mark.parametrize("nested", [False, True], ids=["top", "nested"])
def test_zip_files_run_no_code(nested, tmp_path):
  marker = tmp_path / "marker"
  payload = _MakesDir(marker)
  path = tmp_path / "evil.pth"
  _zip_with_data_pkl(path, pickle.dumps({"w": [payload]} if nested else payload, 2))
  _assert_refused(path, marker)


def test_refuses_pickles_that_name_other_globals(tmp_path):
  path = tmp_path / "evil.pth"
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("archive/data.pkl", pickle.dumps({"w": _MakesDir(tmp_path / "marker")}))
  with pytest.raises(ValueError, match=f"evil.pth: refused to load: .*{_PAYLOAD_GLOBAL}.*tensor"):
    weight_files.read_weights(path)


@pytest.mark.parametrize(
  "position, value, match",
  [
    (1, "1001", "protocol version"),
    (1, 7, "protocol version"),
    (2, {"little_endian": False}, "big-endian"),
    (2, ["protocol_version"], "sys info"),
    (2, {"type_sizes": {"int": [4]}}, "sys info"),
    (4, {"a": 1}, "storage key list"),
    (4, [1, 2], "storage key list"),
  ],
)
def test_legacy_header_values_of_the_wrong_kind(position, value, match, tmp_path):
  parts = _legacy_parts()
  parts[position] = pickle.dumps(value, 2)
  path = tmp_path / "odd.bin"
  path.write_bytes(b"".join(parts))
  with pytest.raises(ValueError, match=match) as error:
    weight_files.read_weights(path)
  assert str(path) in str(error.value)


def test_tensors_stay_inside_their_storage(tmp_path):
  # conv.weight's storage cut in half: its size and strides now reach past the bytes it has.
  path = tmp_path / "short_storage.pth"
  with (
    zipfile.ZipFile(os.path.join(FIXTURES, "tensors_zip.pth")) as good,
    zipfile.ZipFile(path, "w") as archive,
  ):
    for name in good.namelist():
      data = good.read(name)
      archive.writestr(name, data[: len(data) // 2] if name.endswith("/data/0") else data)
  with pytest.raises(ValueError, match="short_storage.pth: .*past the end of its storage"):
    weight_files.read_weights(path)


def test_big_endian_zip_files(tmp_path):
  path = tmp_path / "big.pth"
  with (
    zipfile.ZipFile(os.path.join(FIXTURES, "tensors_zip.pth")) as good,
    zipfile.ZipFile(path, "w") as archive,
  ):
    for name in good.namelist():
      archive.writestr(name, b"big" if name.endswith("/byteorder") else good.read(name))
  with pytest.raises(ValueError, match="big.pth: saved big-endian"):
    weight_files.read_weights(path)


def test_truncated_legacy_file(tmp_path):
  path = tmp_path / "cut.pth"
  with open(os.path.join(FIXTURES, "tensors_legacy.pth"), "rb") as f:
    path.write_bytes(f.read()[:-50])
  with pytest.raises(ValueError, match="cut.pth: .*ends"):
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
  with pytest.raises(
    ValueError, match="(?i)short.safetensors: not a valid safetensors file: .*tensor"
  ):
    weight_files.read_weights(short)
  cut = tmp_path / "cut.safetensors"
  cut.write_bytes(len(header).to_bytes(8, "little") + header[:-3])
  with pytest.raises(ValueError, match="cut.safetensors: not a valid safetensors file: .*header"):
    weight_files.read_weights(cut)
