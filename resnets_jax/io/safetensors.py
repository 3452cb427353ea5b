"""``.safetensors`` files read and written without torch: a lazy reader that copies each tensor
straight into the layout the caller asks for, and a streaming writer that the ``safetensors``
library (and so timm) reads."""
import collections.abc
import json
import mmap
import os
import struct
from typing import Mapping, Optional

import numpy as np

from .arrays import permuted_copy
from .errors import CheckpointError

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}

def _safetensors_dtype(name: str):
    if name == "BF16":
        import ml_dtypes
        return ml_dtypes.bfloat16
    if name not in _SAFETENSORS_DTYPES:
        raise CheckpointError(f"unsupported safetensors dtype {name}")
    return _SAFETENSORS_DTYPES[name]

_SAFETENSORS_NAMES = {np.dtype(v): k for k, v in _SAFETENSORS_DTYPES.items()}

def _safetensors_name(dtype) -> str:
    if dtype.name == "bfloat16":
        return "BF16"
    if np.dtype(dtype) not in _SAFETENSORS_NAMES:
        raise CheckpointError(f"cannot write dtype {dtype} to safetensors")
    return _SAFETENSORS_NAMES[np.dtype(dtype)]

class SafetensorsFile(collections.abc.Mapping):
    """A ``.safetensors`` file as a read-only mapping ``key -> numpy array``, without torch.

    The header is read and checked against the file size up front (a truncated file fails
    here, naming the first tensor that does not fit); each tensor is read from the file when it
    is looked up, into a fresh array the caller owns. So a conversion holds one tensor of the
    file at a time instead of the whole file (memory-mapped pages count as resident memory).
    ``metadata``: the header's ``__metadata__`` (strings)."""

    def __init__(self, path: str):
        self.path = os.fspath(path)
        size = os.path.getsize(self.path)
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{self.path}: {size} bytes is too short to be a safetensors file")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise CheckpointError(f"{self.path}: not a safetensors file (header claims {n} bytes, "
                                      f"file has {size})")
            try:
                header = json.loads(f.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise CheckpointError(f"{self.path}: not a safetensors file (bad header: {e})") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: not a safetensors file (header is not a JSON object)")
        self.metadata = dict(header.pop("__metadata__", None) or {})
        self._start = 8 + n
        self._entries = {}
        for key, info in header.items():
            try:
                dtype = _safetensors_dtype(info["dtype"])
                shape = tuple(int(d) for d in info["shape"])
                start, end = (int(o) for o in info["data_offsets"])
            except (TypeError, KeyError, ValueError) as e:
                raise CheckpointError(f"{self.path}: not a safetensors file (bad entry {key!r}: {e})") from None
            if self._start + end > size:
                raise CheckpointError(f"{self.path}: truncated ({key} needs bytes up to {self._start + end}, "
                                      f"file has {size})")
            if end - start != int(np.prod(shape)) * np.dtype(dtype).itemsize:
                raise CheckpointError(f"{self.path}: corrupt header ({key}: {end - start} bytes for shape "
                                      f"{shape} of {info['dtype']})")
            self._entries[key] = (dtype, shape, start)

    def __getitem__(self, key: str) -> np.ndarray:
        return self.read(key)

    def read(self, key: str, perm: Optional[tuple] = None) -> np.ndarray:
        """The tensor as a new aligned array with its axes permuted by ``perm``, copied in one
        pass from a memory map of the file (no intermediate copy in the file's layout)."""
        dtype, shape, start = self._entries[key]
        offset = self._start + start
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if not nbytes:
            return permuted_copy(np.empty(shape, dtype), perm)
        page = offset - offset % mmap.ALLOCATIONGRANULARITY  # a map starts on a page boundary
        try:
            with open(self.path, "rb") as f, mmap.mmap(f.fileno(), offset + nbytes - page, offset=page,
                                                       access=mmap.ACCESS_READ) as mapped:
                src = np.frombuffer(mapped, np.uint8, nbytes, offset - page).view(dtype).reshape(shape)
                out = permuted_copy(src, perm)
                del src  # the map closes only once no array points into it
                return out
        except ValueError as e:  # the file shrank since its header was read
            raise CheckpointError(f"{self.path}: truncated while reading {key} ({e})") from None

    def shape(self, key: str) -> tuple:
        return self._entries[key][1]

    def __iter__(self):
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"SafetensorsFile({self.path!r}, {len(self)} tensors)"

def read_safetensors(path: str) -> SafetensorsFile:
    """A ``.safetensors`` file as a lazy ``key -> numpy array`` mapping (see ``SafetensorsFile``)."""
    return SafetensorsFile(path)

def write_safetensors(path: str, tensors: Mapping[str, np.ndarray], metadata: Optional[Mapping[str, str]] = None):
    """Write a ``.safetensors`` file streaming one tensor at a time (no second copy in memory),
    in the layout the ``safetensors`` library reads: sorted keys, an 8-byte-aligned header."""
    header, offset, order = {}, 0, sorted(tensors)
    for key in order:
        arr = tensors[key]
        header[key] = {"dtype": _safetensors_name(arr.dtype), "shape": list(arr.shape),
                       "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for key in order:
            f.write(np.ascontiguousarray(tensors[key]).reshape(-1).view(np.uint8).data)
