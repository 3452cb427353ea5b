"""``.safetensors`` files read and written without torch: a lazy reader that copies each tensor
straight into the layout the caller asks for, and a streaming writer that the ``safetensors``
library (and so timm) reads."""
import collections.abc
import dataclasses
import json
import mmap
import os
import struct
from typing import Mapping, Optional, Union

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

# The safetensors library refuses a longer header (``MAX_HEADER_SIZE`` in its ``tensor.rs``); the
# kind test reads a header whole, so it stops there too.
MAX_HEADER_BYTES = 100_000_000

@dataclasses.dataclass(frozen=True)
class SafetensorsHeader:
    """A parsed, checked safetensors header: ``entries`` ``key -> (numpy dtype, shape, start)``
    (``start``: the tensor's offset in the data section), ``metadata`` (``__metadata__``, strings)
    and ``data_start`` (8 + the header's length: where the data section begins)."""
    entries: dict
    metadata: dict
    data_start: int

def parse_header(path: str, f, size: int) -> Union[SafetensorsHeader, str]:
    """The header of the file open as ``f`` (``size`` bytes), read from its start, if its
    structure says safetensors: the first 8 bytes a little-endian length N with 2 <= N <=
    ``size`` - 8 (and <= ``MAX_HEADER_BYTES``), the next N bytes a UTF-8 JSON object. Returns a
    one-phrase reason (a ``str``) when it is not one. Raises ``CheckpointError`` when it is one
    whose entries are wrong: a tensor past the end of the file (truncated), a bad entry (not
    ``dtype``/``shape``/``data_offsets``), a byte count that does not match the shape."""
    f.seek(0)
    head = f.read(9)
    if len(head) < 9:
        return f"{size} bytes, too short for a safetensors header"
    (n,) = struct.unpack("<Q", head[:8])
    if head[8:9] != b"{":  # the library requires it (its header must start with '{')
        return "no JSON object after the first 8 bytes"
    if n < 2:  # '{}', the shortest header
        return f"a header length of {n}, shorter than any JSON object"
    if n > size - 8:
        return f"a safetensors file cut short? its header claims {n} bytes, the file has {size - 8} after the length"
    if n > MAX_HEADER_BYTES:
        return f"its header claims {n} bytes, more than the {MAX_HEADER_BYTES} safetensors allows"
    f.seek(8)
    try:
        header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"its {n}-byte header is not JSON ({e})"
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: corrupt safetensors header (__metadata__ must map strings to strings)")
    start, entries = 8 + n, {}
    for key, info in header.items():
        entries[key] = _entry(path, key, info, start, size)
    return SafetensorsHeader(entries, dict(metadata), start)

def _entry(path: str, key: str, info, data_start: int, size: int) -> tuple:
    try:
        dtype = _safetensors_dtype(info["dtype"])
        shape = tuple(info["shape"])
        begin, end = info["data_offsets"]
        if not all(type(d) is int and d >= 0 for d in (*shape, begin, end)) or begin > end:
            raise ValueError(f"shape {info['shape']}, data_offsets {info['data_offsets']}")
    except (TypeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors header (bad entry {key!r}: {e})") from None
    if end - begin != int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize:
        raise CheckpointError(f"{path}: corrupt safetensors header ({key}: {end - begin} bytes for shape "
                              f"{shape} of {info['dtype']})")
    if data_start + end > size:
        raise CheckpointError(f"{path}: truncated safetensors file ({key} needs bytes up to {data_start + end}, "
                              f"the file has {size})")
    return dtype, shape, begin

class SafetensorsFile(collections.abc.Mapping):
    """A ``.safetensors`` file as a read-only mapping ``key -> numpy array``, without torch.

    The header is read and checked against the file size up front (``parse_header``: a
    truncated file fails here, naming the first tensor that does not fit), or taken as given
    (``header``: the one ``io.kinds.open_checkpoint`` parsed when it told the file's kind);
    each tensor is read from the file when it is looked up, into a fresh array the caller owns.
    So a conversion holds one tensor of the file at a time instead of the whole file
    (memory-mapped pages count as resident memory). ``metadata``: the header's
    ``__metadata__`` (strings). Raises ``CheckpointError`` for a file that is not safetensors."""

    def __init__(self, path: str, header: Optional[SafetensorsHeader] = None):
        self.path = os.fspath(path)
        if header is None:
            with open(self.path, "rb") as f:
                header = parse_header(self.path, f, os.fstat(f.fileno()).st_size)
            if isinstance(header, str):
                raise CheckpointError(f"{self.path}: not a safetensors file ({header})")
        self.metadata = dict(header.metadata)
        self._start = header.data_start
        self._entries = header.entries

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

def read_safetensors(path: str, header: Optional[SafetensorsHeader] = None) -> SafetensorsFile:
    """A ``.safetensors`` file as a lazy ``key -> numpy array`` mapping (see ``SafetensorsFile``)."""
    return SafetensorsFile(path, header)

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
