"""Which kind of checkpoint a file is, told by its content (never by its name), and the one
entry point that reads any of them: ``load_state_dict``."""
import os
from typing import Mapping

import numpy as np

from .errors import CheckpointError
from .flax_checkpoint import _is_msgpack_map, is_flax_layout, read_flax_msgpack
from .safetensors import read_safetensors
from .torch_file import read_torch_checkpoint


def _file_kind(path: str) -> str:
    """'torch', 'msgpack' or 'safetensors' (anything else), from the first bytes."""
    with open(path, "rb") as f:
        magic = f.read(9)
    if magic[:4] == b"PK\x03\x04" or magic[:1] == b"\x80":  # torch zip archive / legacy pickle
        return "torch"
    if magic[8:9] == b"{":  # safetensors: an 8-byte header length, then the JSON header. Checked
        return "safetensors"  # first: the length's low byte may look like a msgpack map's first byte
    return "msgpack" if magic and _is_msgpack_map(magic) else "safetensors"

def is_flax_checkpoint(path: str) -> bool:
    """Whether ``path`` holds Flax variables (as ``save_checkpoint`` writes) rather than timm's
    state dict; reads only a safetensors header, never a whole pickle."""
    kind = _file_kind(path)
    return kind == "msgpack" or kind == "safetensors" and is_flax_layout(read_safetensors(path))

def load_state_dict(path: str, use_ema: bool = False) -> Mapping[str, np.ndarray]:
    """Any checkpoint file -> a ``key -> numpy array`` mapping, telling formats apart by content:
    timm's ``.safetensors`` (a lazy ``SafetensorsFile``), PyTorch pickles (``.bin``/``.pth``,
    with torch) and the Flax checkpoints ``save_checkpoint`` writes (safetensors or msgpack,
    keys ``params/...`` and ``batch_stats/...``). ``load_variables`` turns either layout into
    a model's variables."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: " + ("a directory, expected a checkpoint file" if os.path.isdir(path)
                                             else "no such file"))
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: empty file, expected a .safetensors, PyTorch or resnets_jax checkpoint")
    kind = _file_kind(path)
    if kind == "torch":
        return read_torch_checkpoint(path, use_ema=use_ema)
    if kind == "msgpack":
        return read_flax_msgpack(path)
    return read_safetensors(path)
