"""torch's file format (`torch.save`'s zip archive) written and read with numpy alone.

The coordinator's ServerApp aggregates numpy arrays and never needs torch (about 300 MiB
of memory per process that imports it), yet its checkpoints must stay ordinary `.pt`
files that `torch.load(path, weights_only=True)` reads. This module writes and reads that
format for what fedmed stores in it: dicts, lists, tuples, strings, numbers, booleans,
None and arrays (tensors in the file, numpy arrays here).

The archive is a zip (stored, not compressed) of `<name>/data.pkl`, a protocol-2 pickle
in which each tensor is `torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
requires_grad, hooks)` and each storage a persistent id `("storage", torch.<Type>Storage,
key, "cpu", numel)` whose bytes are the record `<name>/data/<key>`, plus small records
(`version`, `byteorder`). Reading accepts only those globals, as torch's `weights_only`
loader does, so a file cannot run code here.
"""

from __future__ import annotations

import collections
import io
import pickle
import uuid
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

# numpy dtype <-> torch's legacy storage type named in the pickle.
_STORAGE_OF = {
    np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.float16): "HalfStorage", np.dtype(np.int64): "LongStorage",
    np.dtype(np.int32): "IntStorage", np.dtype(np.int16): "ShortStorage",
    np.dtype(np.int8): "CharStorage", np.dtype(np.uint8): "ByteStorage",
    np.dtype(np.bool_): "BoolStorage",
}
_DTYPE_OF = {name: dtype for dtype, name in _STORAGE_OF.items()}
_FORMAT_VERSION = "3"  # torch's zip format version (torch.save writes 3)


class _Global:
    """A reference to a module-level name, pickled by name (torch need not be importable)."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args: Any) -> Any:  # pickle's reduce protocol wants a callable
        raise TypeError("a name to pickle, not to call")


class _Storage:
    def __init__(self, key: str, array: np.ndarray) -> None:
        self.key, self.array = key, array


_REBUILD = _Global("torch._utils", "_rebuild_tensor_v2")


class _Pickler(pickle._Pickler):  # the pure-Python pickler: it lets names be written as given
    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=2)
        self.storages: list[_Storage] = []

    def _save_global(self, obj: _Global) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))
        self.memoize(obj)

    dispatch[_Global] = _save_global

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, _Storage):
            storage = _Global("torch", _STORAGE_OF[obj.array.dtype])
            return ("storage", storage, obj.key, "cpu", int(obj.array.size))
        return None

    def reducer_override(self, obj: Any) -> Any:
        if not isinstance(obj, np.ndarray):
            return NotImplemented
        if obj.dtype not in _STORAGE_OF:
            raise TypeError(f"cannot store a {obj.dtype} array in a torch file")
        array = obj if obj.flags.c_contiguous else obj.copy(order="C")
        storage = _Storage(str(len(self.storages)), array)
        self.storages.append(storage)
        stride = tuple(s // array.itemsize for s in array.strides)
        return (_REBUILD, (storage, 0, tuple(array.shape), stride, False, collections.OrderedDict()))


def _plain(obj: Any) -> Any:
    """numpy scalars as Python numbers (torch's loader accepts no numpy globals)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


def write(path: Path, obj: Any) -> None:
    """Write `obj` as `torch.save` would, numpy arrays as CPU tensors (not atomic: the
    caller writes to a temporary name and renames)."""
    buffer = io.BytesIO()
    pickler = _Pickler(buffer)
    pickler.dump(_plain(obj))
    name = Path(path).stem.replace(".", "_") or "archive"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{name}/data.pkl", buffer.getvalue())
        archive.writestr(f"{name}/.format_version", "1")
        archive.writestr(f"{name}/byteorder", "little")
        for storage in pickler.storages:
            archive.writestr(f"{name}/data/{storage.key}", storage.array.astype(
                storage.array.dtype.newbyteorder("<"), copy=False).tobytes())
        archive.writestr(f"{name}/version", _FORMAT_VERSION)
        archive.writestr(f"{name}/.data/serialization_id", f"{uuid.uuid4().int:040d}"[:40])


class _StorageType:
    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple, stride: tuple,
                    _requires_grad: bool = False, _hooks: Any = None, *_more: Any) -> np.ndarray:
    size, stride = tuple(int(n) for n in size), tuple(int(n) for n in stride)
    # A tensor must lie inside its storage: as_strided would read any memory it is told to.
    if len(size) != len(stride) or min((offset, *size, *stride), default=0) < 0 or \
            (0 not in size and offset + sum((n - 1) * s for n, s in zip(size, stride)) >= storage.size):
        raise pickle.UnpicklingError("a tensor outside its storage")
    if not size:
        return storage[offset:offset + 1].reshape(()).copy()
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                           strides=tuple(s * storage.itemsize for s in stride))
    return view.copy()


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _DTYPE_OF:
            return _StorageType(_DTYPE_OF[name])
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a model file")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError("unsupported storage in a model file")
        _, kind, key, _location, numel = pid
        raw = self.archive.read(f"{self.prefix}/data/{key}")
        return np.frombuffer(raw, dtype=kind.dtype.newbyteorder("<"), count=int(numel)).astype(kind.dtype)


def read(path: Path) -> Any:
    """What `write` (or `torch.save` of the same kinds of values) stored, tensors as numpy
    arrays; ValueError for anything else."""
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError("not a torch zip archive")
        prefix = pickles[0].split("/")[0]
        names = set(archive.namelist())
        if f"{prefix}/byteorder" in names and archive.read(f"{prefix}/byteorder") != b"little":
            raise ValueError("a big-endian torch file")
        return _Unpickler(archive.read(pickles[0]), archive, prefix).load()


__all__ = ["read", "write"]
