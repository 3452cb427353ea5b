"""Writing files so that a reader, or a run killed mid-write, sees the old file or the new one,
never half of one: a temporary file beside the output, moved into place with ``os.replace``."""
import os
import tempfile
from typing import Callable


def _temp_beside(output: str) -> str:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(output), prefix=f".{os.path.basename(output)}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; the result should look like any new file
    return tmp


def _commit(tmp: str, output: str, force: bool) -> None:
    if not force and os.path.exists(output):  # appeared while we were working
        raise ValueError(f"{output} exists; pass --force (force=True) to overwrite it")
    os.replace(tmp, output)


def write_atomic(output: str, write: Callable[[str], None], force: bool = True) -> str:
    """``write(path)`` to a temporary file beside ``output``, then moved onto ``output`` with
    ``os.replace``: a reader (or a run killed mid-write) sees the old file or the new one, never
    half of one. Without ``force``, an ``output`` that appeared meanwhile is not replaced."""
    output = os.path.abspath(os.fspath(output))
    tmp = _temp_beside(output)
    try:
        write(tmp)
        _commit(tmp, output, force)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return output
