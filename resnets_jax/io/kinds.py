"""Which kind of file a checkpoint is, decided once by its structure (never by its name, nor by
one byte), and the typed handle that carries the decision: ``open_checkpoint(path)`` ->
``CheckpointFile``. Readers take the handle; no later code sniffs the same bytes again.

The tests, in order (each is a structure, so no format's bytes can pass for another's):

1. safetensors: the first 8 bytes a little-endian length N that fits the file, the next N bytes
   a JSON object of tensor entries (``dtype``, ``shape``, ``data_offsets``) inside the file,
   plus the optional ``__metadata__`` (``safetensors.parse_header``). N's low byte may be any
   value (0x80 is pickle's PROTO, 0x81-0x8f a msgpack map, 0x50 'P' a zip's first byte): the
   length decides nothing alone.
2. zip (``PK\\x03\\x04`` / ``PK\\x05\\x06`` at the start, as torch and numpy write, with a
   readable central directory): ``.npy`` entries only -> numpy's ``.npz`` (Google's BiT files);
   one ``<folder>/data.pkl`` -> torch's archive, or a TorchScript program when it also holds
   ``constants.pkl`` / ``code/`` (``torch.jit.save``).
3. pickle: pickle's PROTO opcode (protocol 2-5) followed by a valid opcode -> torch's legacy
   format when it starts with torch's magic number, else a bare pickle.
4. tar: torch's oldest format.
5. msgpack: a map header (fixmap, map16, map32) whose first key is a string
   (``flax.serialization``).

Anything else is one ``CheckpointError`` naming what was found and what was expected.
"""
from __future__ import annotations

import dataclasses
import io as _stdio
import os
import pickletools
import tarfile
import zipfile
from typing import Optional

from .errors import CheckpointError
from .safetensors import SafetensorsHeader, parse_header

SAFETENSORS = "safetensors"
TORCH_ZIP = "torch_zip"            # torch.save since torch 1.6
TORCHSCRIPT = "torchscript"        # torch.jit.save: a program, not weights (refused with a hint)
NPZ = "npz"                        # numpy's savez (Google's BiT checkpoints)
TORCH_LEGACY = "torch_legacy"      # torch.save before 1.6 (pickles after torch's magic number)
TORCH_TAR = "torch_tar"            # torch's oldest tar format
PICKLE = "pickle"                  # a bare pickle (torch.load refuses it: diagnosed, never run)
MSGPACK = "msgpack"                # flax.serialization (our msgpack checkpoints)
TORCH_KINDS = (TORCH_ZIP, TORCH_LEGACY, TORCH_TAR, PICKLE)  # read by ``torch_zip.load_torch_file``

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header; an empty archive's end record
# torch's legacy format starts with this number, pickled as a LONG1 after PROTO 2 (torch/serialization.py)
TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_PICKLE_OPS = 3  # opcodes parsed to call a file a pickle: PROTO, then (FRAME and) the first of its body
_SNIFF_BYTES = 4096  # enough for a pickle's first opcodes and a msgpack map's first key
EXPECTED = ("expected safetensors (an 8-byte header length, then a JSON header), a zip (torch.save's "
            "archive or numpy's .npz), a torch pickle, or a msgpack map (flax.serialization)")


@dataclasses.dataclass(frozen=True)
class CheckpointFile(os.PathLike):
    """A checkpoint file whose kind is decided (``open_checkpoint``): a path-like (``os.fspath``
    gives the path, so it goes wherever a path does), its ``kind`` (one of this module's kind
    constants), ``size`` in bytes and the parsed header of a safetensors file (``safetensors``)."""
    path: str
    kind: str
    size: int
    safetensors: Optional[SafetensorsHeader] = dataclasses.field(default=None, repr=False)

    def __fspath__(self) -> str:
        return self.path

    def __str__(self) -> str:
        return self.path


def open_checkpoint(path) -> CheckpointFile:
    """The kind of the checkpoint at ``path`` (a path or a ``CheckpointFile``, returned as is),
    decided by structure (see the module docstring). Raises ``CheckpointError`` for a missing or
    empty file, a directory, a damaged zip, and a file of no known kind (naming what it found
    and what was expected); a safetensors file whose header does not fit it (truncated, corrupt
    entries) fails here too, naming the tensor."""
    if isinstance(path, CheckpointFile):
        return path
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: " + ("a directory, expected a checkpoint file" if os.path.isdir(path)
                                             else "no such file"))
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise CheckpointError(f"{path}: empty file, expected a .safetensors, PyTorch or resnets_jax checkpoint")
        header = parse_header(path, f, size)
        if not isinstance(header, str):
            return CheckpointFile(path, SAFETENSORS, size, safetensors=header)
        f.seek(0)
        head = f.read(_SNIFF_BYTES)
    if head[:4] in _ZIP_MAGIC and head[8:9] != b"{":  # bytes 8-9 of a zip: its compression method
        # (0 stored, 8 deflated, ...), never '{': that is a safetensors header cut short
        return _zip_kind(path, size)
    if _is_pickle(head, size):
        return CheckpointFile(path, TORCH_LEGACY if head.startswith(TORCH_LEGACY_MAGIC) else PICKLE, size)
    if tarfile.is_tarfile(path):
        return CheckpointFile(path, TORCH_TAR, size)
    if _is_msgpack_map(head):
        return CheckpointFile(path, MSGPACK, size)
    hint = f"; {header}" if head[8:9] == b"{" else ""  # it looked like safetensors: say why it is not
    raise CheckpointError(f"{path}: not a checkpoint file (found {size} bytes starting with {head[:12]!r}{hint}); "
                          f"{EXPECTED}")


def _zip_kind(path: str, size: int) -> CheckpointFile:
    try:
        with zipfile.ZipFile(path) as z:
            names = tuple(z.namelist())
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path}: a zip archive cut short or corrupt ({e}; an interrupted download?)") from None
    if names and all(n.endswith(".npy") for n in names):
        return CheckpointFile(path, NPZ, size)
    roots = {n.split("/")[0] for n in names if n.count("/") == 1 and n.endswith("/data.pkl")}
    if len(roots) == 1:
        root = roots.pop() + "/"
        script = root + "constants.pkl" in names or any(n.startswith(root + "code/") for n in names)
        return CheckpointFile(path, TORCHSCRIPT if script else TORCH_ZIP, size)
    raise CheckpointError(f"{path}: a zip archive but neither torch.save's (one <folder>/data.pkl) nor numpy's "
                          f".npz (.npy entries only); found {len(names)} entries: {list(names[:5])}")


def _is_pickle(head: bytes, size: int) -> bool:
    """PROTO 2-5 (every torch.save pickle starts so), then valid opcodes (up to
    ``_PICKLE_OPS``, or STOP), a FRAME no longer than the file."""
    if len(head) < 3 or head[0] != 0x80 or not 2 <= head[1] <= 5:
        return False
    try:
        for i, (op, arg, _) in enumerate(pickletools.genops(_stdio.BytesIO(head))):
            if op.name == "FRAME" and arg > size:
                return False  # a frame longer than the file
            if op.name == "STOP" or i + 1 == _PICKLE_OPS:
                return True
    except ValueError:  # an unknown opcode, or one cut short
        return False
    return False  # fewer opcodes than _PICKLE_OPS and no STOP: cut short


def _is_msgpack_map(head: bytes) -> bool:
    """A msgpack map (fixmap 0x81-0x8f, map16 0xde, map32 0xdf) whose first key is a string.
    (0x80, the empty fixmap, holds no weights, and is pickle's PROTO.)"""
    if not head or not (0x81 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF)):
        return False
    import msgpack  # flax's serializer: installed with flax
    unpacker = msgpack.Unpacker(_stdio.BytesIO(head), raw=False)
    try:
        unpacker.read_map_header()
        return isinstance(unpacker.unpack(), str)
    except (ValueError, msgpack.UnpackException, msgpack.OutOfData):
        return False
