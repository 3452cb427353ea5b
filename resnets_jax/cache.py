"""Where resnets_jax keeps what it can compute again but should not have to: one folder per
kind under ``$RESNETS_JAX_CACHE_DIR`` (default ``$XDG_CACHE_HOME/resnets_jax``, i.e.
``~/.cache/resnets_jax``). Setting ``RESNETS_JAX_CACHE_DIR`` to an empty string turns every
cache off."""
import os
from typing import Optional

CACHE_ENV = "RESNETS_JAX_CACHE_DIR"


def cache_dir(kind: str) -> Optional[str]:
    """The folder for ``kind`` (e.g. ``'shapes'``), or None when caching is off. Not created here."""
    root = os.environ.get(CACHE_ENV)
    if root is None:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "resnets_jax")
    return os.path.join(root, kind) if root else None
