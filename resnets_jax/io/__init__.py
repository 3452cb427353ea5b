"""Checkpoint files and the hub: a file's kind decided once by its structure
(``kinds.open_checkpoint`` -> a ``CheckpointFile`` handle), any kind read by
``formats.load_state_dict``, safetensors and PyTorch files read without running anything, our
Flax checkpoint format, one atomic writer (``files``) and all network access (``hub``).
Nothing here knows a model's structure: that is ``convert``'s job."""
from .errors import CheckpointError
from .flax_checkpoint import save_checkpoint
from .formats import is_flax_checkpoint, load_state_dict
from .kinds import CheckpointFile, open_checkpoint
from .formats import read_model_metadata
from .model_metadata import ModelMetadata

__all__ = ["CheckpointError", "CheckpointFile", "load_state_dict", "is_flax_checkpoint", "open_checkpoint",
           "save_checkpoint", "ModelMetadata", "read_model_metadata"]
