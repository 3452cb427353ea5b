"""The allowlisting unpickler of torch checkpoints: tensors become numpy arrays, nothing in the
file runs. ``torch_zip.load_torch_file`` is the entry point; this module holds the stand-ins and
the pickle-level checks.

The unpickler resolves globals from a fixed table of stand-ins written here (never by import):
torch's tensor rebuild functions (``torch._utils._rebuild_tensor_v2`` and kin, whose semantics
follow ``torch/_utils.py``), storage classes, dtypes, ``torch.Size``, ``torch.device``,
``collections.OrderedDict``/``Counter``, ``builtins.set``/``bytearray``/``complex``,
``_codecs.encode`` (latin-1 only) and ``argparse.Namespace``: the globals torch's
``torch/_weights_only_unpickler.py`` allows for tensors and containers, plus the ``args`` of
timm's ``train.py`` checkpoints (timm's ``_torch_load`` allowlists ``argparse.Namespace`` too).
Any other global is refused by name before anything is called. Tensors are rebuilt as numpy
views of one buffer per storage (storage offset, size and stride honoured, so views,
channels-last tensors and storages shared between tensors read as torch reads them).

dtypes: float64/32/16, bfloat16 and float8 (via ml_dtypes), complex64/128, int64/32/16/8,
uint64/32/16/8, bool. Not read (clear error): quantized, sparse, nested, meta and tensor-subclass
tensors.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import collections
import pickle
import pickletools

import ml_dtypes
import numpy as np

from .errors import CheckpointError

__all__ = ["LegacyFormatError", "PickledModuleError", "TorchFileError", "TorchScriptError", "UnsafePickleError"]


class TorchFileError(CheckpointError):
    """A file that is not a torch checkpoint this reader can read (corrupt, truncated, unsupported)."""


class UnsafePickleError(TorchFileError):
    """The pickle names a global outside the allowlist; nothing in it was called."""


class PickledModuleError(UnsafePickleError):
    """The file holds a pickled ``nn.Module`` (``torch.save(model, ...)``), not a state dict."""


class TorchScriptError(TorchFileError):
    """The file is a TorchScript archive (``torch.jit.save``): a program, not a weights file."""


class LegacyFormatError(TorchFileError):
    """The pre-zip torch format (torch < 1.6, or ``_use_new_zipfile_serialization=False``)."""


# --------------------------------------------------------------------------- allowlisted stand-ins

# torch's legacy typed storage classes (torch.storage._dtype_to_storage_type_map), as numpy dtypes.
_STORAGE_DTYPES = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "ComplexFloatStorage": np.dtype(np.complex64),
    "ComplexDoubleStorage": np.dtype(np.complex128),
    "UntypedStorage": np.dtype(np.uint8),  # torch reads an UntypedStorage as uint8 bytes
}
_QUANTIZED_STORAGES = {"QInt8Storage", "QInt32Storage", "QUInt8Storage", "QUInt4x2Storage",
                       "QUInt2x4Storage"}

# `torch.<name>` dtype globals (rebuild_tensor_v3 passes one; torch pickles a dtype by name).
_TORCH_DTYPES = {
    "float64": np.float64, "double": np.float64, "float32": np.float32, "float": np.float32,
    "float16": np.float16, "half": np.float16, "bfloat16": ml_dtypes.bfloat16,
    "complex64": np.complex64, "cfloat": np.complex64, "complex128": np.complex128,
    "cdouble": np.complex128, "int64": np.int64, "long": np.int64, "int32": np.int32,
    "int": np.int32, "int16": np.int16, "short": np.int16, "int8": np.int8, "uint8": np.uint8,
    "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64, "bool": np.bool_,
    **{n: getattr(ml_dtypes, n) for n in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
                                          "float8_e5m2fnuz", "float8_e8m0fnu")
       if hasattr(ml_dtypes, n)},  # float8_e8m0fnu needs ml_dtypes >= 0.5
}
# torch dtypes that torch's allowlist names but numpy cannot hold.
_NO_NUMPY_DTYPES = {
    "qint8", "qint32", "quint8", "quint4x2", "quint2x4", "complex32", "chalf", "bcomplex32",
    "float4_e2m1fn_x2", "bits8", "bits16", "bits1x8", "bits2x4", "bits4x2",
    *(f"uint{i}" for i in range(1, 8)), *(f"int{i}" for i in range(1, 8)),
}
# torch-allowlisted rebuild functions for tensors that have no numpy equivalent.
_UNSUPPORTED_TORCH = {
    "torch._utils._rebuild_qtensor": "a quantized tensor",
    "torch._utils._rebuild_sparse_tensor": "a sparse tensor",
    "torch._utils._rebuild_nested_tensor": "a nested tensor",
    "torch._utils._rebuild_meta_tensor_no_storage": "a meta tensor (no data)",
    "torch._utils._rebuild_wrapper_subclass": "a tensor subclass",
    "torch._utils._rebuild_device_tensor_from_numpy": "a tensor pickled through numpy",
    "torch._utils._rebuild_device_tensor_from_cpu_tensor": "a device tensor",
    "torch.serialization._get_layout": "a sparse tensor layout",
}


class _Inert:
    """Base of every object the unpickler may create: a pickle BUILD on it is refused."""

    __slots__ = ()

    def __setstate__(self, state):
        raise UnsafePickleError(f"the pickle tries to set state on {self!r}; refused")


class _Dtype(_Inert):
    __slots__ = ("name", "np")

    def __init__(self, name, np_dtype):
        self.name, self.np = name, np.dtype(np_dtype)

    def __repr__(self):
        return f"torch.{self.name}"


class _StorageType(_Inert):
    __slots__ = ("dtype", "name")

    def __init__(self, name, dtype):
        self.name, self.dtype = name, dtype

    def __repr__(self):
        return f"torch.{self.name}"


class _Marker(_Inert):
    """`torch.Tensor` / `torch.nn.parameter.Parameter`: only used as `_rebuild_from_type_v2`'s type."""

    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


class _Storage(_Inert):
    """One storage: its raw bytes (uint8 numpy buffer, read once) and the dtype it was saved as."""

    __slots__ = ("buf", "dtype", "key")

    def __init__(self, key, buf, dtype):
        self.key, self.buf, self.dtype = key, buf, dtype

    def __repr__(self):
        return f"<storage {self.key!r}>"


class _Tensor(_Inert):
    """A rebuilt tensor, held in a wrapper until the pickle is done (no numpy object is ever
    reachable from the pickle: `ndarray.__setstate__` and `dtype.__setstate__` must stay out of
    reach of a BUILD opcode)."""

    __slots__ = ("array",)
    __hash__ = None  # torch allows tensors as dict keys; weights files never use them

    def __init__(self, array):
        self.array = array

    def __repr__(self):
        return f"<tensor {self.array.dtype}{list(self.array.shape)}>"


_TENSOR_MARKER = _Marker("torch.Tensor")
_PARAMETER_MARKER = _Marker("torch.nn.parameter.Parameter")


def _int_tuple(values, what):
    if not isinstance(values, tuple | list) or not all(
            type(v) is int and v >= 0 for v in values):
        raise TorchFileError(f"tensor {what} must be non-negative ints, found {values!r}")
    return tuple(values)


def _rebuild_tensor(storage, storage_offset, size, stride, dtype=None):
    """`torch._utils._rebuild_tensor`: `storage[offset:]` viewed with `size` and `stride` (in
    elements). Returns a `_Tensor` wrapping a numpy view of the storage's buffer."""
    if not isinstance(storage, _Storage):
        raise TorchFileError(f"tensor storage must come from the archive, found {storage!r}")
    dtype = storage.dtype if dtype is None else dtype
    size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if type(storage_offset) is not int or storage_offset < 0 or len(size) != len(stride):
        raise TorchFileError(f"bad tensor geometry: offset {storage_offset!r}, size {size}, "
                             f"stride {stride}")
    numel = storage.buf.nbytes // dtype.itemsize
    end = storage_offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
    if 0 not in size and end > numel:
        raise TorchFileError(
            f"truncated storage {storage.key!r}: a tensor of size {list(size)} (stride "
            f"{list(stride)}, offset {storage_offset}) needs {end} {dtype} elements, the storage "
            f"holds {numel}")
    array = np.ndarray(size, dtype, buffer=storage.buf,
                       offset=storage_offset * dtype.itemsize if 0 not in size else 0,
                       strides=tuple(s * dtype.itemsize for s in stride))
    return _Tensor(array)


def _check_metadata(metadata):
    if metadata:  # `get_tensor_metadata`: only the conj / neg bits, never set in weights
        raise TorchFileError(f"tensor with metadata {metadata!r} (a lazy conj/neg view) is not "
                             "read without torch")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       metadata=None):
    """`torch._utils._rebuild_tensor_v2`; requires_grad and (always empty) hooks are dropped."""
    _check_metadata(metadata)
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
    """`torch._utils._rebuild_tensor_v3`: an UntypedStorage (bytes) viewed as `dtype`."""
    _check_metadata(metadata)
    if not isinstance(dtype, _Dtype):
        raise TorchFileError(f"tensor dtype must be a torch dtype, found {dtype!r}")
    return _rebuild_tensor(storage, storage_offset, size, stride, dtype.np)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    """`torch._utils._rebuild_parameter(_with_state)`: a Parameter reads as its data."""
    if not isinstance(data, _Tensor):
        raise TorchFileError(f"Parameter data must be a tensor, found {data!r}")
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    """`torch._tensor._rebuild_from_type_v2`: a Tensor/Parameter with Python attributes; the
    attributes (`state`) are dropped, the data is kept."""
    if func not in _REBUILDERS or new_type not in (_TENSOR_MARKER, _PARAMETER_MARKER):
        raise UnsafePickleError(f"_rebuild_from_type_v2({func!r}, {new_type!r}) refused: only "
                                "plain tensors and parameters are read")
    if not isinstance(args, tuple):
        raise TorchFileError(f"_rebuild_from_type_v2 args must be a tuple, found {args!r}")
    return func(*args)


def _torch_size(dims=()):
    return _int_tuple(tuple(dims), "torch.Size")


def _torch_device(kind, index=None):
    if not isinstance(kind, str) or not (index is None or type(index) is int):
        raise TorchFileError(f"bad torch.device({kind!r}, {index!r})")
    return kind if index is None else f"{kind}:{index}"


def _codecs_encode(text, encoding="utf-8"):
    """`_codecs.encode`, as protocol-2 pickles use it for bytes: latin-1 only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"_codecs.encode({type(text).__name__}, {encoding!r}) refused: "
                                "only the latin-1 form pickle uses for bytes is allowed")
    return text.encode("latin-1")


def _bytearray(source=b"", encoding=None):
    """`builtins.bytearray`, from bytes or a str only (no `bytearray(10**12)`)."""
    if not isinstance(source, bytes | bytearray | str) or encoding not in (
            None, "latin1", "latin-1", "utf-8"):
        raise UnsafePickleError(f"bytearray({type(source).__name__}, {encoding!r}) refused")
    return bytearray(source, encoding) if isinstance(source, str) else bytearray(source)


_REBUILDERS = (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter)

_ALLOWED = {
    "collections.OrderedDict": collections.OrderedDict,
    "collections.Counter": collections.Counter,
    "argparse.Namespace": argparse.Namespace,  # timm's train.py `args`; timm allowlists it too
    "builtins.set": set,
    "builtins.bytearray": _bytearray,
    "builtins.complex": complex,
    "_codecs.encode": _codecs_encode,
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
    "torch.Size": _torch_size,
    "torch.device": _torch_device,
    "torch.Tensor": _TENSOR_MARKER,
    "torch.nn.parameter.Parameter": _PARAMETER_MARKER,
    **{f"torch.{n}": _StorageType(n, d) for n, d in _STORAGE_DTYPES.items()},
    "torch.storage.UntypedStorage": _StorageType("UntypedStorage", np.dtype(np.uint8)),
    **{f"torch.{n}": _Dtype(n, d) for n, d in _TORCH_DTYPES.items()},
}


def _global_name(module, name):
    """`module.name` after pickle's Python 2 renames (protocol 2, torch's default, writes
    `__builtin__.set`), as `pickle.Unpickler.find_class` applies them."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


class _Unpickler(pickle.Unpickler):
    """The C unpickler with every global resolved from `_ALLOWED` (never imported)."""

    def __init__(self, data: bytes, storage_loader):
        import io  # stdlib; imported here because this package has an `io` subpackage
        super().__init__(io.BytesIO(data), encoding="utf-8")  # torch.load's default encoding
        self._storage_loader = storage_loader

    def find_class(self, module, name):
        full = _global_name(module, name)
        if full in _ALLOWED:
            return _ALLOWED[full]
        if module == "torch" and name in _QUANTIZED_STORAGES:
            raise TorchFileError(f"{full}: quantized tensors are not read without torch")
        if module == "torch" and (name in _NO_NUMPY_DTYPES or name.startswith("float8")):
            raise TorchFileError(f"{full}: this dtype has no numpy equivalent")
        if full in _UNSUPPORTED_TORCH:
            raise TorchFileError(f"{full}: {_UNSUPPORTED_TORCH[full]}, which is not read "
                                 "without torch")
        raise UnsafePickleError(
            f"refused global {full}: not allowed in a weights file (only tensors and plain "
            "containers are read; nothing from the file was called)")

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel): torch/serialization.py `_load`
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")):
            raise TorchFileError(f"unknown persistent id {pid!r}: only storages are read")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise TorchFileError(f"bad storage type {storage_type!r}")
        if not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise TorchFileError(f"bad storage reference {pid!r}")
        return self._storage_loader(key, storage_type.dtype, numel)


# --------------------------------------------------------------------------- diagnostics


def _pickle_globals(data: bytes):
    """Globals named and strings held by the pickles at the start of `data` (one, or the
    several the legacy format concatenates), by parsing only (`pickletools.genops`)."""
    import io  # stdlib (this package has an `io` subpackage)

    found, strings, start = [], set(), 0
    while data[start:start + 1] == b"\x80":  # PROTO: another pickle follows
        memo, recent, start_next = {}, [], None
        stream = io.BytesIO(data)
        stream.seek(start)
        try:
            for op, arg, pos in pickletools.genops(stream):
                if op.name in ("GLOBAL", "INST"):
                    found.append(_global_name(*arg.split(" ", 1)))
                elif isinstance(arg, str) and "UNICODE" in op.name:
                    strings.add(arg)
                    recent = (recent + [arg])[-2:]
                elif op.name in ("BINPUT", "LONG_BINPUT", "PUT") and recent:
                    memo[arg] = recent[-1]
                elif op.name == "MEMOIZE" and recent:
                    memo[len(memo)] = recent[-1]
                elif op.name in ("BINGET", "LONG_BINGET", "GET") and arg in memo:
                    recent = (recent + [memo[arg]])[-2:]
                elif op.name == "STACK_GLOBAL" and len(recent) == 2:
                    found.append(_global_name(*recent))
                if op.name == "STOP":
                    start_next = pos + 1
                    break
        except (ValueError, EOFError):  # a malformed pickle: report what was parsed so far
            start_next = None
        if start_next is None:
            break
        start = start_next
    return list(dict.fromkeys(found)), strings


def _refusal(path, data, error):
    """Turn a refused global into the error naming every refused global (and a pickled module)."""
    names, strings = _pickle_globals(data)
    refused = [g for g in names if g not in _ALLOWED]
    if any(g.startswith("torch.nn.modules.") for g in refused) or {
            "_modules", "_parameters"} <= strings:
        return PickledModuleError(
            f"{path} holds a pickled module (torch.save(model, ...)) rather than a state dict: "
            f"unpickling it would import and call {_some(refused)}, which a weights reader "
            "never does. Fix: where the model class is importable, load it and save its weights "
            "with torch.save(model.state_dict(), 'weights.pth').")
    if refused:
        return UnsafePickleError(
            f"{path}: refused global {refused[0]}: not allowed in a weights file (the pickle "
            f"names {_some(refused)}; only tensors and plain containers are read, nothing from "
            "the file was called)")
    return UnsafePickleError(f"{path}: {error}")


_NAMES_SHOWN = 3  # globals named in a refusal: enough to recognise the file, short enough to read


def _some(names) -> str:
    """The first few names, and how many more: a message stays one readable line."""
    more = len(names) - _NAMES_SHOWN
    return ", ".join(names[:_NAMES_SHOWN]) + (f" and {more} more" if more > 0 else "")
