"""Checkpoint files and the hub: formats told apart by content (``formats.load_state_dict``),
safetensors and PyTorch files read without running anything, our Flax checkpoint format, one
atomic writer (``files``) and all network access (``hub``). Nothing here knows a model's
structure: that is ``convert``'s job."""
from .errors import CheckpointError
from .flax_checkpoint import save_checkpoint
from .formats import is_flax_checkpoint, load_state_dict

__all__ = ["CheckpointError", "load_state_dict", "is_flax_checkpoint", "save_checkpoint"]
