"""Which kind of checkpoint a file is, told by its content (never by its name), and the one
entry point that reads any of them: ``load_state_dict``."""
import os
import zipfile
from typing import Mapping

import numpy as np

from .arrays import view_state_dict
from .bit_npz import read_bit_npz
from .errors import CheckpointError
from .flax_checkpoint import _is_msgpack_map, is_flax_layout, read_flax_msgpack
from .safetensors import read_safetensors
from .torch_zip import (
    _CLEAN_PREFIXES,
    checkpoint_state_dict,
    clean_key,
    load_torch_file,
)


class StateDict(dict):
    """A state dict read from a torch or BiT file: ``{timm key: numpy array}`` (torch layout),
    and where it came from. ``kind``: ``'torch'`` or ``'bit_npz'``; ``source``: the checkpoint
    entry it was taken from (``'state_dict_ema'``, ``'model_ema'``, ``'state_dict'``, ``'model'``)
    or ``None`` for a file that is the state dict itself."""

    def __init__(self, items, kind: str, source=None):
        super().__init__(items)
        self.kind, self.source, self.metadata = kind, source, {}


def _is_npz(path: str) -> bool:
    """A zip whose entries are all ``*.npy`` (``np.savez``), as Google's BiT files are; torch's
    zip archives keep ``<dir>/data.pkl`` and never hold ``.npy`` entries."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False  # a damaged zip: the torch reader says what is wrong with it
    return bool(names) and all(n.endswith(".npy") for n in names)


def _file_kind(path: str) -> str:
    """'torch', 'npz', 'msgpack' or 'safetensors' (anything else), from the content."""
    with open(path, "rb") as f:
        magic = f.read(9)
    if magic[:4] == b"PK\x03\x04":  # a zip: torch's archive or numpy's .npz
        return "npz" if _is_npz(path) else "torch"
    if magic[:1] == b"\x80":  # a pickle: torch's legacy format (or a bare pickle, refused there)
        return "torch"
    if magic[8:9] == b"{":  # safetensors: an 8-byte header length, then the JSON header. Checked
        return "safetensors"  # first: the length's low byte may look like a msgpack map's first byte
    return "msgpack" if magic and _is_msgpack_map(magic) else "safetensors"

def is_bit_npz(path: str) -> bool:
    """Whether ``path`` is a ``.npz`` (read as a BiT checkpoint by ``load_state_dict``)."""
    return _file_kind(os.fspath(path)) == "npz"

def is_flax_checkpoint(path: str) -> bool:
    """Whether ``path`` holds Flax variables (as ``save_checkpoint`` writes) rather than timm's
    state dict; reads only a safetensors header, never a whole pickle."""
    kind = _file_kind(path)
    return kind == "msgpack" or kind == "safetensors" and is_flax_layout(read_safetensors(path))

def load_state_dict(path: str, use_ema: bool = True) -> Mapping[str, np.ndarray]:
    """Any checkpoint file -> a ``key -> numpy array`` mapping, telling formats apart by content.

    * timm's ``.safetensors``: a lazy ``SafetensorsFile`` (``module.`` / ``_orig_mod.`` prefixes
      stripped through a view, as timm's ``clean_state_dict``).
    * PyTorch files (``pytorch_model.bin``, ``.pth``, ``.pth.tar``): torch's zip format read
      without torch (``torch_zip.load_torch_file``), the legacy pre-1.6 format with torch when it
      is installed; then the state dict chosen as timm's ``load_state_dict``
      (``timm/models/_helpers.py``): ``state_dict_ema`` (else ``model_ema``) when ``use_ema``
      (timm's default, True) and present, else ``state_dict``, else ``model``, else the whole
      file; prefixes stripped. A ``StateDict`` whose ``source`` names the entry taken.
    * Google's BiT ``.npz`` (a zip of ``.npy`` arrays): ``bit_npz.read_bit_npz`` with the file's
      own head and RGB stem, a ``StateDict`` of ``kind='bit_npz'`` (``pretrained.fit_bit_npz``
      applies timm's head and ``in_chans`` rules for a model).
    * The Flax checkpoints ``save_checkpoint`` writes (safetensors or msgpack, keys
      ``params/...`` and ``batch_stats/...``).

    ``convert.load_variables`` turns either layout into a model's variables. Raises
    ``CheckpointError`` (a ``ValueError``; ``torch_pickle.TorchFileError`` and its kin are
    subclasses) naming the file and what is wrong with it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: " + ("a directory, expected a checkpoint file" if os.path.isdir(path)
                                             else "no such file"))
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: empty file, expected a .safetensors, PyTorch or resnets_jax checkpoint")
    kind = _file_kind(path)
    if kind == "torch":
        state_dict, source = checkpoint_state_dict(load_torch_file(path, allow_torch_fallback=True), use_ema)
        return StateDict(state_dict, "torch", source)
    if kind == "npz":
        return StateDict(read_bit_npz(path, {"num_classes": None}), "bit_npz")
    if kind == "msgpack":
        return read_flax_msgpack(path)
    state_dict = read_safetensors(path)
    if any(k.startswith(_CLEAN_PREFIXES) for k in state_dict):
        return view_state_dict(state_dict, rename=clean_key)
    return state_dict
