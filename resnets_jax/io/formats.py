"""The one entry point that reads any checkpoint, ``load_state_dict``, its kind decided once by
``kinds.open_checkpoint`` (by structure, never by name), and the questions asked of a kind."""
import os
from typing import Mapping

import numpy as np

from .arrays import view_state_dict
from .bit_npz import read_bit_npz
from . import kinds
from .flax_checkpoint import is_flax_layout, read_flax_msgpack
from .kinds import open_checkpoint
from .model_metadata import ModelMetadata, decode_model_metadata
from .run_dir import resolve_checkpoint_path
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


def is_bit_npz(path) -> bool:
    """Whether ``path`` (a path or ``kinds.CheckpointFile``) is a ``.npz`` (read as a BiT
    checkpoint by ``load_state_dict``). ``CheckpointError`` for a file of no known kind."""
    return open_checkpoint(path).kind == kinds.NPZ

def is_flax_checkpoint(path) -> bool:
    """Whether ``path`` (a path or ``kinds.CheckpointFile``) holds Flax variables (as
    ``save_checkpoint`` writes) rather than timm's state dict; reads only a safetensors header,
    never a whole pickle. ``CheckpointError`` for a file of no known kind."""
    file = open_checkpoint(path)
    return file.kind == kinds.MSGPACK or file.kind == kinds.SAFETENSORS and is_flax_layout(file.safetensors.entries)

def load_state_dict(path: str, use_ema: bool = True) -> Mapping[str, np.ndarray]:
    """Any checkpoint file -> a ``key -> numpy array`` mapping, its kind told by structure once
    (``kinds.open_checkpoint``; ``path`` may be the ``CheckpointFile`` it returned).

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
    subclasses) naming the file and what is wrong with it: a file of no known kind names what it
    found and what was expected; a TorchScript archive says what to save instead."""
    file = open_checkpoint(path)
    if file.kind in kinds.TORCH_KINDS or file.kind == kinds.TORCHSCRIPT:
        state_dict, source = checkpoint_state_dict(load_torch_file(file, allow_torch_fallback=True), use_ema)
        return StateDict(state_dict, "torch", source)
    if file.kind == kinds.NPZ:
        return StateDict(read_bit_npz(file.path, {"num_classes": None}), "bit_npz")
    if file.kind == kinds.MSGPACK:
        return read_flax_msgpack(file.path)
    state_dict = read_safetensors(file.path, file.safetensors)
    if any(k.startswith(_CLEAN_PREFIXES) for k in state_dict):
        return view_state_dict(state_dict, rename=clean_key)
    return state_dict


def read_model_metadata(path) -> ModelMetadata:
    """The ``ModelMetadata`` of a checkpoint file (a path or ``kinds.CheckpointFile``): a
    safetensors header's (the header only is read), a msgpack Flax checkpoint's; other kinds
    (torch files, BiT ``.npz``) record none; a fine-tuning run directory stands for its best
    export (``run_dir.resolve_checkpoint_path``). ``CheckpointError`` for a file of no known kind."""
    if not isinstance(path, kinds.CheckpointFile):  # a handle is a file already
        path = resolve_checkpoint_path(os.fspath(path), log=lambda message: None)
    file = open_checkpoint(path)
    if file.kind == kinds.SAFETENSORS:
        meta = file.safetensors.metadata
    elif file.kind == kinds.MSGPACK:
        meta = read_flax_msgpack(file.path).metadata
    else:
        meta = {}
    return decode_model_metadata(meta, where=file.path)
