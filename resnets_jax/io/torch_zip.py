"""Read PyTorch checkpoints without torch: torch's zip archive, the legacy formats told apart,
and the state dict chosen in a training checkpoint as timm chooses it.

Mirrors ``torch.load(path, map_location="cpu", weights_only=True)`` for torch's zip format (the
``torch.save`` default since torch 1.6: ``<dir>/data.pkl``, ``<dir>/data/<key>`` storages,
``<dir>/byteorder``), with ``argparse.Namespace`` allowed as timm's ``_torch_load`` does
(``timm/models/_helpers.py``). The pickle goes through ``torch_pickle``'s allowlisting
unpickler; each storage entry is read once, straight into one numpy buffer. Not read without
torch: TorchScript archives and the legacy pre-1.6 format (``allow_torch_fallback=True`` hands
that one to ``torch.load(weights_only=True)`` when torch is installed).
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import zipfile

import numpy as np

from .._optional import available, missing_extra_message, optional_import
from .errors import CheckpointError
from .kinds import PICKLE, TORCH_LEGACY, TORCH_TAR, TORCH_ZIP, TORCHSCRIPT, open_checkpoint
from .torch_pickle import (
    _ALLOWED,
    _TORCH_DTYPES,
    LegacyFormatError,
    PickledModuleError,
    TorchFileError,
    TorchScriptError,
    UnsafePickleError,
    _Dtype,
    _Inert,
    _pickle_globals,
    _refusal,
    _Storage,
    _Tensor,
    _Unpickler,
)

__all__ = [
    "LegacyFormatError",
    "PickledModuleError",
    "TorchFileError",
    "TorchScriptError",
    "UnsafePickleError",
    "checkpoint_state_dict",
    "clean_key",
    "clean_state_dict",
    "load_torch_file",
]

# --------------------------------------------------------------------------- zip archive


def _safe_name(name):
    parts = name.split("/")
    return (name and not name.startswith(("/", "\\")) and "\\" not in name and ".." not in parts
            and ":" not in parts[0] and "" not in parts[:-1])


class _Archive:
    """torch's zip layout: every record under one folder; storages stored (or deflated)."""

    def __init__(self, path, file):
        self.path, self.file = path, file
        try:
            self.zip = zipfile.ZipFile(file)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise TorchFileError(f"{path}: not a readable zip archive ({e})") from e
        names = self.zip.namelist()
        bad = [n for n in names if not _safe_name(n)]
        if bad:
            raise TorchFileError(f"{path}: zip entry {bad[0]!r} points outside the archive; "
                                 "refused")
        self.infos = {i.filename: i for i in self.zip.infolist()}
        roots = sorted({n.split("/")[0] for n in names if n.count("/") == 1
                        and n.endswith("/data.pkl")})
        if len(roots) != 1:
            raise TorchFileError(f"{path}: a zip archive but not a torch checkpoint (expected one "
                                 f"<folder>/data.pkl, found {len(roots)}: {names[:5]})")
        self.root = roots[0] + "/"
        outside = [n for n in names if not n.startswith(self.root)]
        if outside:
            raise TorchFileError(f"{path}: entry {outside[0]!r} is outside the archive folder "
                                 f"{self.root!r}")
        self.size = os.fstat(file.fileno()).st_size
        byteorder = self.read_small("byteorder")
        if byteorder not in (None, b"little", b"big"):
            raise TorchFileError(f"{path}: unknown byteorder {byteorder!r}")
        # torch: without a byteorder record, the data is taken as native.
        self.swap = byteorder is not None and byteorder.decode() != sys.byteorder
        self.storages: dict[str, _Storage] = {}

    def read_small(self, name):
        info = self.infos.get(self.root + name)
        return None if info is None else self._read_entry(info, info.file_size).tobytes()

    def _read_entry(self, info, nbytes):
        """The first `nbytes` of an entry, in one fresh uint8 buffer (one read, no copy)."""
        if info.file_size < nbytes:
            raise TorchFileError(f"{self.path}: truncated storage {info.filename!r}: "
                                 f"{info.file_size} bytes, the tensors need {nbytes}")
        if info.compress_type != zipfile.ZIP_STORED:
            data = self.zip.read(info)  # decompresses and checks the CRC
            return np.frombuffer(bytearray(data[:nbytes]), np.uint8)
        self.file.seek(info.header_offset)
        header = self.file.read(30)
        if len(header) != 30 or header[:4] != b"PK\x03\x04":
            raise TorchFileError(f"{self.path}: bad zip local header for {info.filename!r}")
        start = (info.header_offset + 30 + int.from_bytes(header[26:28], "little")
                 + int.from_bytes(header[28:30], "little"))
        if start + nbytes > self.size:
            raise TorchFileError(f"{self.path}: truncated storage {info.filename!r}: the file "
                                 f"ends {start + nbytes - self.size} bytes before its data does")
        buf = np.empty(nbytes, np.uint8)
        self.file.seek(start)
        if self.file.readinto(memoryview(buf)) != nbytes:
            raise TorchFileError(f"{self.path}: truncated storage {info.filename!r}")
        return buf

    def storage(self, key, dtype, numel):
        """`persistent_load`: the storage `data/<key>`, read once however many tensors share it."""
        nbytes = numel * dtype.itemsize
        cached = self.storages.get(key)
        if cached is not None:
            if cached.buf.nbytes < nbytes:
                raise TorchFileError(f"{self.path}: storage {key!r} is referenced with two sizes")
            return _Storage(key, cached.buf, dtype)
        if not key or not key.replace("_", "").isalnum():
            raise TorchFileError(f"{self.path}: storage key {key!r} refused (not a plain name)")
        info = self.infos.get(f"{self.root}data/{key}")
        if info is None:
            raise TorchFileError(f"{self.path}: storage data/{key} is missing from the archive")
        buf = self._read_entry(info, nbytes)
        if self.swap and dtype.itemsize > 1:
            unit = dtype.itemsize // 2 if dtype.kind == "c" else dtype.itemsize
            buf.view(f"u{unit}").byteswap(inplace=True)
        self.storages[key] = storage = _Storage(key, buf, dtype)
        return storage


# --------------------------------------------------------------------------- public


def _finalize(obj, memo=None):
    """Replace `_Tensor`/`_Storage`/dtype stand-ins by numpy objects, in place where mutable."""
    memo = {} if memo is None else memo
    if isinstance(obj, _Tensor):
        return obj.array
    if isinstance(obj, _Storage):
        return obj.buf.view(obj.dtype)[: obj.buf.nbytes // obj.dtype.itemsize]
    if isinstance(obj, _Dtype):
        return obj.np
    if isinstance(obj, _Inert):
        return repr(obj)
    if not isinstance(obj, list | tuple | dict | argparse.Namespace):
        return obj
    if id(obj) in memo:
        return memo[id(obj)]
    memo[id(obj)] = obj
    if isinstance(obj, list):
        obj[:] = [_finalize(v, memo) for v in obj]
    elif isinstance(obj, dict):
        for k, v in obj.items():
            obj[k] = _finalize(v, memo)
    elif isinstance(obj, argparse.Namespace):
        for k, v in vars(obj).items():
            setattr(obj, k, _finalize(v, memo))
    else:
        memo[id(obj)] = obj = tuple(_finalize(v, memo) for v in obj)
    return obj


def torch_to_numpy(obj):
    """Torch tensors (in dicts, lists, tuples, a Namespace) to numpy arrays, every dtype torch has
    (bfloat16 and float8 via ml_dtypes, which numpy lacks): after a torch fallback load, and for a
    state dict of tensors given to ``convert_timm_state_dict``."""
    torch = optional_import("torch", "torch tensors")

    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        name = str(t.dtype).removeprefix("torch.")
        if name.startswith(("bfloat16", "float8")):  # numpy has no such dtype: via raw bytes
            raw = t.reshape(-1).contiguous().view(torch.uint8).numpy()
            return raw.view(_TORCH_DTYPES[name]).reshape(t.shape)
        return t.numpy()
    if isinstance(obj, dict):
        return type(obj)((k, torch_to_numpy(v)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return type(obj)(torch_to_numpy(v) for v in obj)
    if isinstance(obj, argparse.Namespace):
        return argparse.Namespace(**{k: torch_to_numpy(v) for k, v in vars(obj).items()})
    return obj


def load_torch_file(path, *, allow_torch_fallback: bool = False):
    """Read a PyTorch checkpoint (``pytorch_model.bin``, ``.pth``, ``.pth.tar``) without torch.

    Mirrors ``torch.load(path, map_location="cpu", weights_only=True)`` with
    ``argparse.Namespace`` allowlisted (timm's ``_torch_load`` in ``timm/models/_helpers.py``).

    Args:
      path: a torch file (zip, legacy pickle or tar), as a path or the ``kinds.CheckpointFile``
        that ``kinds.open_checkpoint`` returned.
      allow_torch_fallback: for the legacy pre-zip format only, read it with
        ``torch.load(weights_only=True)`` when torch is importable (tensors then converted to
        numpy). Never used for any other kind of file.

    Returns:
      The unpickled object: dicts / OrderedDicts / lists / tuples / ``argparse.Namespace`` /
      scalars / strings as pickled, every tensor a numpy array of the tensor's dtype
      (bfloat16 and float8 as ``ml_dtypes``), shape and strides (layout as in torch, e.g. NCHW
      conv weights, channels-last strides kept; tensors that shared a storage share memory).

    Raises:
      UnsafePickleError: a global outside the allowlist (e.g. ``os.system``, ``builtins.eval``,
        a model class); nothing in the file was called. ``PickledModuleError`` (a subclass)
        when the file is a pickled ``nn.Module``: names the classes and gives the fix.
      LegacyFormatError: the pre-zip torch format (or the older tar format) without the fallback
        (or without torch: names the extra to install).
      TorchScriptError: a TorchScript archive (``torch.jit.save``): says what to save instead.
      TorchFileError: not a torch file (a file of no known kind: ``kinds.open_checkpoint``'s
        message), a truncated or inconsistent archive, an entry pointing
        outside the archive, or a tensor kind numpy cannot hold (quantized, sparse, ...).
      OSError: the file cannot be opened.
    """
    try:
        file = open_checkpoint(path)
    except CheckpointError as e:  # not a file of any known kind: for this reader, not a torch file
        raise e if isinstance(e, TorchFileError) else TorchFileError(str(e)) from None
    path = file.path
    if file.kind == TORCHSCRIPT:
        raise TorchScriptError(
            f"{path}: a TorchScript archive (torch.jit.save: a compiled program, not a weights file), which "
            "resnets_jax does not run. Save its weights instead: torch.save(torch.jit.load(path).state_dict(), "
            "'weights.pth') or safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')")
    if file.kind == TORCH_ZIP:
        with open(path, "rb") as f:
            archive = _Archive(path, f)
            data = archive.read_small("data.pkl")
            try:
                return _finalize(_Unpickler(data, archive.storage).load())
            except UnsafePickleError as e:
                raise _refusal(path, data, e) from None
            except TorchFileError as e:
                raise e if str(e).startswith(path) else type(e)(f"{path}: {e}") from None
            except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError,
                    IndexError, KeyError, RecursionError) as e:
                raise TorchFileError(f"{path}: malformed data.pkl ({type(e).__name__}: {e})") from e
    if file.kind not in (TORCH_LEGACY, TORCH_TAR, PICKLE):
        raise TorchFileError(f"{path}: not a torch checkpoint (a {file.kind} file)")
    with open(path, "rb") as f:
        data = f.read()
    if file.kind in (TORCH_LEGACY, TORCH_TAR):
        names, _ = _pickle_globals(data) if file.kind == TORCH_LEGACY else ([], set())
        if any(g not in _ALLOWED for g in names):  # named by parsing only, as for a zip
            raise _refusal(path, data, "refused")
        if allow_torch_fallback and available("torch"):
            torch = optional_import("torch", "reading a legacy torch file")
            with torch.serialization.safe_globals([argparse.Namespace]):
                return torch_to_numpy(torch.load(path, map_location="cpu", weights_only=True))
        raise LegacyFormatError(
            f"{path}: the legacy {'pre-zip' if file.kind == TORCH_LEGACY else 'tar'} torch format (torch < 1.6 "
            f"or _use_new_zipfile_serialization=False) {missing_extra_message('reading it', 'torch')}, or re-save "
            "it with torch >= 1.6 (torch.save(torch.load(path, weights_only=True), new_path))")
    # A bare pickle: torch.load refuses it too ("Invalid magic number"). Say why, by parsing
    # only, so that a hostile bare pickle is named as such.
    names, _ = _pickle_globals(data)
    if any(g not in _ALLOWED for g in names):
        raise _refusal(path, data, "refused")
    raise TorchFileError(f"{path}: not a torch checkpoint (a pickle, but neither torch's zip format nor its "
                         f"legacy format; starts with {data[:8]!r})")


# timm's clean_state_dict: torch.compile wrapping DDP, DDP, torch.compile; each at most once, in order
_CLEAN_PREFIXES = ("_orig_mod.", "module.", "_orig_mod.")


def clean_key(key: str) -> str:
    """One key as timm's ``clean_state_dict`` leaves it (see there)."""
    if key.startswith(_CLEAN_PREFIXES):
        for prefix in _CLEAN_PREFIXES:
            key = key.removeprefix(prefix)
    return key


def clean_state_dict(state_dict):
    """timm's ``clean_state_dict`` (``timm/models/_helpers.py``): strip the DDP ``module.`` and
    torch.compile ``_orig_mod.`` prefixes, wrapped in either order (``_orig_mod.``, then
    ``module.``, then ``_orig_mod.``, each at most once). A new dict, same values."""
    return {clean_key(k): v for k, v in state_dict.items()}


def checkpoint_state_dict(obj, use_ema: bool = True):
    """The state dict in a loaded checkpoint, chosen as timm's ``load_state_dict`` chooses it.

    Mirrors ``timm/models/_helpers.py`` ``load_state_dict`` + ``clean_state_dict``: when
    ``use_ema`` and ``state_dict_ema`` (else ``model_ema``) is present and not None, that one;
    else ``state_dict``; else ``model``; else the object itself. Prefixes are then stripped by
    :func:`clean_state_dict`.

    Args:
      obj: what :func:`load_torch_file` returned.
      use_ema: prefer the EMA weights when the checkpoint has them (timm's default: True).

    Returns:
      ``(state_dict, key)``: a dict ``{name: numpy array}`` (torch layout, e.g. OIHW convs) and
      the key it was taken from (``"state_dict_ema"``, ``"model_ema"``, ``"state_dict"``,
      ``"model"``), or ``None`` when the object itself is the state dict. Tell the user which.

    Raises:
      TorchFileError: the chosen object is not a dict of arrays with string keys (names the
        first offending entry and the keys that were there).
    """
    key = None
    if isinstance(obj, dict):
        if use_ema and obj.get("state_dict_ema") is not None:
            key = "state_dict_ema"
        elif use_ema and obj.get("model_ema") is not None:
            key = "model_ema"
        elif "state_dict" in obj:
            key = "state_dict"
        elif "model" in obj:
            key = "model"
    state_dict = obj[key] if key else obj
    where = f"checkpoint[{key!r}]" if key else "the checkpoint"
    if not isinstance(state_dict, dict):
        raise TorchFileError(f"{where} is a {type(state_dict).__name__}, expected a state dict "
                             "(a dict of tensors)")
    for k, v in state_dict.items():
        if not isinstance(k, str) or not isinstance(v, np.ndarray):
            raise TorchFileError(
                f"{where} is not a state dict: entry {k!r} is a {type(v).__name__}, expected a "
                f"tensor (keys found: {list(state_dict)[:8]}; a checkpoint keeps its weights "
                "under 'state_dict', 'state_dict_ema', 'model_ema' or 'model')")
    return clean_state_dict(state_dict), key
