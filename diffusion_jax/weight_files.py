"""Reads PyTorch weight files into NumPy arrays without PyTorch.

Two formats: safetensors (an 8-byte little-endian header length, a JSON header naming each
tensor's dtype, shape and byte range, then the raw bytes) and `torch.save` state dicts, either the
zip archive torch writes since 1.6 or the older stream of pickles. Pickles are read by an unpickler
that only builds tensors and plain containers, so a weight file cannot run code.
"""

import collections
import json
import os
import pickle
import zipfile

import ml_dtypes
import numpy as np

_SAFETENSORS_DTYPES = {
  "F64": np.float64,
  "F32": np.float32,
  "F16": np.float16,
  "BF16": ml_dtypes.bfloat16,
  "I64": np.int64,
  "I32": np.int32,
  "I16": np.int16,
  "I8": np.int8,
  "U8": np.uint8,
  "BOOL": np.bool_,
}

# torch's typed-storage class names, which its pickles name to give a storage's dtype.
_TORCH_STORAGE_DTYPES = {
  "DoubleStorage": np.float64,
  "FloatStorage": np.float32,
  "HalfStorage": np.float16,
  "BFloat16Storage": ml_dtypes.bfloat16,
  "LongStorage": np.int64,
  "IntStorage": np.int32,
  "ShortStorage": np.int16,
  "CharStorage": np.int8,
  "ByteStorage": np.uint8,
  "BoolStorage": np.bool_,
}

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # what torch.save wrote first before the zip format


def read_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a `.safetensors` file or a `torch.save`d state dict (`.bin`, `.pth`, `.pt`).

  Returns:
    {name: array}, in the file's dtypes (bfloat16 as ml_dtypes.bfloat16).

  Raises:
    ValueError: one line saying what is wrong with the file.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ValueError(f"weight file {path} does not exist")
  if path.endswith(".safetensors"):
    return read_safetensors(path)
  return read_torch_state_dict(path)


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads every tensor of a safetensors file.

  Returns:
    {name: array}.
  """
  with open(path, "rb") as f:
    blob = f.read()
  if len(blob) < 8:
    raise ValueError(f"{path} is not a safetensors file: too short")
  header_len = int.from_bytes(blob[:8], "little")
  try:
    header = json.loads(blob[8 : 8 + header_len])
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path} is not a safetensors file: bad header ({e})") from None
  data = memoryview(blob)[8 + header_len :]
  arrays = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    if info["dtype"] not in _SAFETENSORS_DTYPES:
      raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
    start, end = info["data_offsets"]
    dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
    shape = tuple(info["shape"])
    if end - start != dtype.itemsize * int(np.prod(shape)) or end > len(data):
      raise ValueError(f"{path}: tensor {name} has inconsistent byte range {start}..{end}")
    arrays[name] = np.frombuffer(data[start:end], dtype).reshape(shape).copy()
  return arrays


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a state dict that `torch.save` wrote, in the zip or the legacy format.

  Returns:
    {name: array}; a checkpoint that nests the state dict (e.g. under "state_dict") is unwrapped
    when it holds exactly one dict of arrays.
  """
  if zipfile.is_zipfile(path):
    obj = _read_torch_zip(path)
  else:
    obj = _read_torch_legacy(path)
  return _as_state_dict(obj, path)


class _Storage:
  """A typed storage: its dtype, from the class name the pickle gives, and later its bytes."""

  def __init__(self, dtype, element_offset=0):
    self.dtype = np.dtype(dtype)
    self.element_offset = element_offset  # for legacy views into a larger storage
    self.base = None  # the storage a view lies in
    self.raw = None


class _PendingTensor:
  """A tensor whose storage bytes may come after the pickle (the legacy format)."""

  def __init__(self, storage, storage_offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, storage_offset, size, stride

  def materialize(self) -> np.ndarray:
    flat = np.frombuffer((self.storage.base or self.storage).raw, self.storage.dtype)
    start = self.storage.element_offset + self.offset
    strides = tuple(s * self.storage.dtype.itemsize for s in self.stride)
    return np.array(np.lib.stride_tricks.as_strided(flat[start:], tuple(self.size), strides))


def _rebuild_tensor(storage, storage_offset, size, stride, *unused_args):
  """Stands in for torch._utils._rebuild_tensor_v2."""
  return _PendingTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *unused_args):
  return data


def _materialize(obj):
  if isinstance(obj, _PendingTensor):
    return obj.materialize()
  if isinstance(obj, dict):
    return {k: _materialize(v) for k, v in obj.items()}
  if isinstance(obj, list | tuple):
    return type(obj)(_materialize(v) for v in obj)
  return obj


class _StorageType:
  def __init__(self, name):
    self.name = name


class _WeightsUnpickler(pickle.Unpickler):
  """Builds tensors from storages; refuses every other global a pickle may name."""

  def __init__(self, file, load_storage):
    super().__init__(file)
    self._load_storage = load_storage

  def find_class(self, module, name):
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    if module == "torch._utils" and name == "_rebuild_tensor_v2":
      return _rebuild_tensor
    if module == "torch._utils" and name == "_rebuild_parameter":
      return _rebuild_parameter
    if module == "torch" and name in _TORCH_STORAGE_DTYPES:
      return _StorageType(name)
    raise pickle.UnpicklingError(f"weight file names {module}.{name}, which is not a tensor")

  def persistent_load(self, pid):
    # zip: ('storage', type, key, location, numel); legacy adds view_metadata, which is None
    # or (view_key, element_offset, numel) for a view into the storage `key`.
    if not isinstance(pid, tuple) or pid[0] != "storage":
      raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
    storage = self._load_storage(_TORCH_STORAGE_DTYPES[pid[1].name], str(pid[2]))
    if len(pid) > 5 and pid[5] is not None:
      view = _Storage(storage.dtype, pid[5][1])
      view.base = storage
      return view
    return storage


def _read_torch_zip(path):
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pickle_name = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
    if pickle_name is None:
      raise ValueError(f"{path} is a zip file but not a torch checkpoint (no data.pkl)")
    prefix = pickle_name[: -len("data.pkl")]
    byteorder = prefix + "byteorder"
    if byteorder in names and archive.read(byteorder).decode() != "little":
      raise ValueError(f"{path} was saved big-endian; only little-endian files are supported")
    storages = {}

    def load_storage(dtype, key):
      if key not in storages:
        storages[key] = _Storage(dtype)
        storages[key].raw = archive.read(f"{prefix}data/{key}")
      return storages[key]

    with archive.open(pickle_name) as f:
      return _materialize(_WeightsUnpickler(f, load_storage).load())


def _read_torch_legacy(path):
  with open(path, "rb") as f:
    try:
      magic = pickle.load(f)
    except Exception:
      magic = None
    if magic != _LEGACY_MAGIC:
      raise ValueError(f"{path} is neither a safetensors file nor a torch.save checkpoint")
    pickle.load(f)  # protocol version
    pickle.load(f)  # sys info
    storages = {}

    def load_storage(dtype, key):
      return storages.setdefault(key, _Storage(dtype))

    obj = _WeightsUnpickler(f, load_storage).load()
    # The storages follow in the order listed: each an int64 element count, then its bytes.
    for key in pickle.load(f):
      numel = int.from_bytes(f.read(8), "little")
      storages[key].raw = f.read(numel * storages[key].dtype.itemsize)
  return _materialize(obj)


def _as_state_dict(obj, path) -> dict[str, np.ndarray]:
  if isinstance(obj, dict) and obj and all(isinstance(v, np.ndarray) for v in obj.values()):
    return dict(obj)
  if isinstance(obj, dict):
    nested = [v for v in obj.values() if isinstance(v, dict)]
    if len(nested) == 1:
      return _as_state_dict(nested[0], path)
  raise ValueError(f"{path} does not hold a state dict of tensors")
