"""Reads PyTorch weight files into NumPy arrays without PyTorch.

Two formats: safetensors, read by the `safetensors` package (the format's reference loader), and
`torch.save` state dicts, either the zip archive torch writes since 1.6 or the older stream of
pickles (magic number, protocol version, sys info, the tensors, the list of storage keys, then the
storages' bytes).

No pickle of a weight file can run code: the tensor pickle goes through an unpickler that knows
only torch's tensor and storage globals and OrderedDict, every other pickle through one that
refuses all globals, and each value is checked to be of the kind its place holds. Tensors are
checked to lie inside their storage's bytes before they are read.
"""

import collections
import os
import pickle
import reprlib
import zipfile
import zlib

import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy

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
_LEGACY_PROTOCOL = 1001  # the only protocol version the legacy format has had


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
  """Reads every tensor of a safetensors file with the format's reference loader.

  Returns:
    {name: array}, in the file's dtypes (BF16 as ml_dtypes.bfloat16).

  Raises:
    ValueError: one line naming the file and what is wrong with it.
  """
  path = os.fspath(path)
  try:
    # The loader asks NumPy for each dtype by name; "bfloat16" resolves because this module
    # imports ml_dtypes, which registers it.
    return safetensors.numpy.load_file(path)
  except safetensors.SafetensorError as e:
    raise ValueError(f"{path}: not a valid safetensors file: {_one_line(str(e))}") from None
  except (AttributeError, TypeError) as e:
    # A dtype NumPy lacks (e.g. F8_E4M3) fails in the name lookup.
    raise ValueError(
      f"{path}: holds a dtype NumPy cannot represent ({_one_line(str(e))})"
    ) from None


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a state dict that `torch.save` wrote, in the zip or the legacy format.

  Returns:
    {name: array}; a checkpoint that nests the state dict (e.g. under "state_dict") is unwrapped
    when it holds exactly one dict of tensors.

  Raises:
    ValueError: one line naming the file and what is wrong with it, or what it asked for and was
      refused (a pickle that names anything but a tensor).
  """
  path = os.fspath(path)
  try:
    if zipfile.is_zipfile(path):
      return _read_torch_zip(path)
    return _read_torch_legacy(path)
  except _Refused as e:
    raise ValueError(f"{path}: refused to load: {_one_line(str(e))}") from None
  except _Damaged as e:
    raise ValueError(f"{path}: {_one_line(str(e))}") from None


class _Refused(Exception):
  """The file asks for something a weight file may not hold, such as a callable."""


class _Damaged(Exception):
  """The file is cut short, inconsistent, or not laid out as torch.save writes."""


def _one_line(text: str, limit: int = 300) -> str:
  # Parts of the message come from the file, which may hold newlines or megabytes of text.
  text = " ".join(text.split())
  return text if len(text) <= limit else text[: limit - 3] + "..."


class _Unpickled:
  """Base of the objects the unpickler hands to a pickle."""

  def __setstate__(self, state):
    # BUILD would otherwise overwrite the checked fields (a storage's bytes, a tensor's strides).
    raise _Refused("the pickle sets the state of a tensor or storage")


class _StorageType(_Unpickled):
  """A torch storage class the pickle names, e.g. torch.FloatStorage: the storage's dtype."""

  def __init__(self, name):
    self.dtype = np.dtype(_TORCH_STORAGE_DTYPES[name])


class _Storage(_Unpickled):
  """A typed storage; its bytes come from the zip archive or after the legacy pickles."""

  def __init__(self, dtype):
    self.dtype = dtype
    self.raw = None

  def elements(self) -> np.ndarray:
    if self.raw is None or len(self.raw) % self.dtype.itemsize:
      raise _Damaged("a tensor's storage is missing or not a whole number of elements")
    return np.frombuffer(self.raw, self.dtype)


class _StorageView(_Unpickled):
  """`numel` elements of a storage from `offset` on (legacy files only)."""

  def __init__(self, base, offset, numel):
    self.base, self.offset, self.numel = base, offset, numel

  def elements(self) -> np.ndarray:
    flat = self.base.elements()
    if self.offset + self.numel > len(flat):
      raise _Damaged("a storage view reaches past the end of its storage")
    return flat[self.offset : self.offset + self.numel]


class _PendingTensor(_Unpickled):
  """A tensor whose storage bytes may come after the pickle (the legacy format)."""

  def __init__(self, storage, storage_offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, storage_offset, size, stride

  def materialize(self) -> np.ndarray:
    flat = self.storage.elements()
    if 0 in self.size:
      return np.zeros(self.size, flat.dtype)
    # as_strided trusts its arguments: check that the last element lies inside the storage, or
    # a crafted size or stride would read memory past the file's bytes.
    last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True))
    if last >= len(flat):
      raise _Damaged(f"a tensor of size {self.size} reaches past the end of its storage")
    strides = tuple(s * flat.dtype.itemsize for s in self.stride)
    try:
      return np.array(np.lib.stride_tricks.as_strided(flat[self.offset :], self.size, strides))
    except (ValueError, OverflowError, MemoryError) as e:
      raise _Damaged(f"a tensor of size {self.size} cannot be built ({e})") from None


def _is_index(x) -> bool:
  return type(x) is int and x >= 0


def _rebuild_tensor(storage, storage_offset, size, stride, *unused_args):
  """Stands in for torch._utils._rebuild_tensor_v2."""
  if not (
    isinstance(storage, _Storage | _StorageView)
    and _is_index(storage_offset)
    and isinstance(size, tuple)
    and isinstance(stride, tuple)
    and len(size) == len(stride)
    and all(_is_index(n) for n in size + stride)
  ):
    raise _Damaged("a tensor has a malformed storage, offset, size or stride")
  return _PendingTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *unused_args):
  """Stands in for torch._utils._rebuild_parameter: a parameter is its tensor."""
  return data


class _PlainUnpickler(pickle.Unpickler):
  """Builds only what pickle encodes by itself: numbers, strings, bytes, tuples, lists, dicts.

  Every global and every persistent id is refused, so the pickle never reaches a callable; the
  caller then checks that the value is of the kind its position holds.
  """

  def __init__(self, file, what: str):
    super().__init__(file)
    self.what = what

  def find_class(self, module, name):
    raise _Refused(f"the {self.what} pickle names {module}.{name}, which is not a plain value")

  def persistent_load(self, pid):
    raise _Refused(f"the {self.what} pickle refers to a storage, which is not a plain value")


class _WeightsUnpickler(_PlainUnpickler):
  """Builds tensors from storages; refuses every other global a pickle may name."""

  def __init__(self, file, load_storage):
    super().__init__(file, "tensor")
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
    raise _Refused(f"the {self.what} pickle names {module}.{name}, which is not a tensor")

  def persistent_load(self, pid):
    # zip: ('storage', type, key, location, numel); legacy adds view_metadata, which is None
    # or (view_key, element_offset, numel) for a view into the storage `key`.
    if not (
      isinstance(pid, tuple)
      and len(pid) in (5, 6)
      and pid[0] == "storage"
      and isinstance(pid[1], _StorageType)
      and isinstance(pid[2], str | int)
    ):
      raise _Damaged(f"unexpected persistent id {reprlib.repr(pid)}")
    storage = self._load_storage(pid[1].dtype, str(pid[2]))
    view = pid[5] if len(pid) == 6 else None
    if view is None:
      return storage
    if not (isinstance(view, tuple) and len(view) == 3 and all(map(_is_index, view[1:]))):
      raise _Damaged(f"unexpected storage view {reprlib.repr(view)}")
    return _StorageView(storage, view[1], view[2])


def _unpickle(unpickler: _PlainUnpickler):
  try:
    return unpickler.load()
  except (_Refused, _Damaged):
    raise
  except Exception as e:  # a damaged pickle fails in many ways: EOFError, KeyError, struct.error...
    raise _Damaged(f"the {unpickler.what} pickle is unreadable ({type(e).__name__}: {e})") from None


def _read_member(archive: zipfile.ZipFile, name: str) -> bytes:
  try:
    return archive.read(name)
  except KeyError:
    raise _Damaged(f"the archive has no {reprlib.repr(name)}") from None


# What zipfile raises for a damaged archive: bad headers or CRC, a broken deflate stream, an
# unknown compression method, an encrypted member (RuntimeError).
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError)


def _read_torch_zip(path):
  try:
    with zipfile.ZipFile(path) as archive:
      return _read_torch_archive(archive)
  except _ZIP_ERRORS as e:
    raise _Damaged(f"an unreadable zip archive ({e})") from None


def _read_torch_archive(archive: zipfile.ZipFile):
  names = archive.namelist()
  pickle_name = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
  if pickle_name is None:
    raise _Damaged("a zip file but not a torch checkpoint (no data.pkl)")
  prefix = pickle_name[: -len("data.pkl")]
  byteorder = prefix + "byteorder"
  if byteorder in names and _read_member(archive, byteorder) != b"little":
    raise _Damaged("saved big-endian; only little-endian files are supported")
  storages = {}

  def load_storage(dtype, key):
    if key not in storages:
      storages[key] = _Storage(dtype)
      storages[key].raw = _read_member(archive, f"{prefix}data/{key}")
    return storages[key]

  with archive.open(pickle_name) as f:
    return _state_dict(_unpickle(_WeightsUnpickler(f, load_storage)))


def _is_sys_info(value) -> bool:
  """Whether `value` is what torch.save writes as sys info, e.g. {'little_endian': True, ...}."""

  def is_entry(x):
    if isinstance(x, dict):
      return all(isinstance(k, str) and type(v) is int for k, v in x.items())
    return type(x) in (bool, int, str)

  return isinstance(value, dict) and all(
    isinstance(k, str) and is_entry(v) for k, v in value.items()
  )


def _read_torch_legacy(path):
  with open(path, "rb") as f:
    file_size = os.fstat(f.fileno()).st_size
    try:
      magic = _unpickle(_PlainUnpickler(f, "magic number"))
    except _Damaged:
      magic = None
    if type(magic) is not int or magic != _LEGACY_MAGIC:
      raise _Damaged("neither a safetensors file nor a torch.save checkpoint")
    version = _unpickle(_PlainUnpickler(f, "protocol version"))
    if type(version) is not int:
      raise _Damaged(f"the protocol version is a {type(version).__name__}, not an int")
    if version != _LEGACY_PROTOCOL:
      raise _Damaged(f"protocol version {version}; torch.save writes {_LEGACY_PROTOCOL}")
    sys_info = _unpickle(_PlainUnpickler(f, "sys info"))
    if not _is_sys_info(sys_info):
      raise _Damaged("the sys info is not a dict of str to bool, int, str or dict of ints")
    if sys_info.get("little_endian", True) is not True:
      raise _Damaged("saved big-endian; only little-endian files are supported")
    storages = {}

    def load_storage(dtype, key):
      return storages.setdefault(key, _Storage(dtype))

    obj = _unpickle(_WeightsUnpickler(f, load_storage))
    keys = _unpickle(_PlainUnpickler(f, "storage key list"))
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
      raise _Damaged("the storage key list is not a list of str")
    # The storages follow in the order listed: each an int64 element count, then its bytes.
    for key in keys:
      if key not in storages:
        raise _Damaged(f"the storage key list names {reprlib.repr(key)}, which no tensor uses")
      count = f.read(8)
      nbytes = int.from_bytes(count, "little") * storages[key].dtype.itemsize
      if len(count) < 8 or nbytes > file_size - f.tell():
        raise _Damaged(f"the file ends inside storage {reprlib.repr(key)}")
      storages[key].raw = f.read(nbytes)
  return _state_dict(obj)


def _state_dict(obj) -> dict[str, np.ndarray]:
  """The dict of tensors in `obj`: obj itself, or the only dict inside it (at any depth)."""
  while isinstance(obj, dict):
    if obj and all(isinstance(v, _PendingTensor) for v in obj.values()):
      return {k: v.materialize() for k, v in obj.items()}
    nested = [v for v in obj.values() if isinstance(v, dict)]
    if len(nested) != 1:
      break
    obj = nested[0]
  raise _Damaged("holds no state dict of tensors")
