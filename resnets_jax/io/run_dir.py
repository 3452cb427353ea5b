"""A fine-tuning run directory where a weights file is asked for: it stands for its best
export, else its latest (the names timm's train.py gives ``model_best.pth.tar`` and
``last.pth.tar``, as safetensors), else the one checkpoint file it holds."""
import os
import sys
from typing import Callable

from .errors import CheckpointError

BEST_EXPORT_NAME = "model_best.safetensors"  # the best epoch by the run's best_metric (timm: model_best.pth.tar)
LAST_EXPORT_NAME = "last.safetensors"        # the run's final weights (timm: last.pth.tar)
_CHECKPOINT_SUFFIXES = (".safetensors", ".msgpack")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def resolve_checkpoint_path(path, log: Callable[[str], None] = _stderr):
    """``path`` itself when it is not a directory; for a directory, its ``BEST_EXPORT_NAME``,
    else ``LAST_EXPORT_NAME``, else its only ``.safetensors`` / ``.msgpack`` file, said through
    ``log`` (stderr). ``CheckpointError`` for a directory with none of these, listing what was
    looked for and what it holds."""
    if not os.path.isdir(path):
        return path
    for name in (BEST_EXPORT_NAME, LAST_EXPORT_NAME):
        candidate = os.path.join(path, name)
        if os.path.isfile(candidate):
            log(f"{path}: a directory; using {candidate}")
            return candidate
    files = sorted(f for f in os.listdir(path) if f.endswith(_CHECKPOINT_SUFFIXES)
                   and os.path.isfile(os.path.join(path, f)))
    if len(files) == 1:
        candidate = os.path.join(path, files[0])
        log(f"{path}: a directory; using {candidate}, its only checkpoint file")
        return candidate
    found = f"it holds {len(files)} checkpoint files ({', '.join(files)}): name one" if files else \
        f"it holds {', '.join(sorted(os.listdir(path))[:8]) or 'nothing'}"
    unfinished = " (a run that did not finish? export it with export_timm_checkpoint(*load_finetuned(dir), ...))" \
        if os.path.isdir(os.path.join(path, "checkpoints")) and not files else ""
    raise CheckpointError(f"{path}: a directory without weights to load; looked for {BEST_EXPORT_NAME}, "
                          f"{LAST_EXPORT_NAME} or a single *.safetensors / *.msgpack file, but {found}{unfinished}")
