"""Writing files so that a reader, or a run killed mid-write, sees the old file or the new one,
never half of one: a temporary file beside the output, moved into place with ``os.replace``.
Every file the package writes (checkpoints, exports, embeddings, caches) goes through here."""
import contextlib
import os
import tempfile
from typing import Callable, Iterator


def check_output(output: str, force: bool = False) -> str:
    """The absolute output path, after the checks a write must pass: its directory exists, it is
    not a directory, and it does not exist unless ``force``. Raises ``ValueError`` naming the path."""
    output = os.path.abspath(os.fspath(output))
    directory = os.path.dirname(output)
    if not os.path.isdir(directory):
        raise ValueError(f"{output}: the output directory {directory} does not exist")
    if os.path.isdir(output):
        raise ValueError(f"{output} is a directory, expected a file name")
    if os.path.exists(output) and not force:
        raise ValueError(f"{output} exists; pass --force (force=True) to overwrite it")
    return output


def _temp_beside(output: str) -> str:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(output), prefix=f".{os.path.basename(output)}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; the result should look like any new file
    return tmp


@contextlib.contextmanager
def atomic_output(output: str, force: bool = True) -> Iterator[str]:
    """A temporary path beside ``output`` to write (and check) the file at; when the block ends
    without an exception it is moved onto ``output`` with ``os.replace``, otherwise removed.
    Without ``force``, an ``output`` that appeared meanwhile is not replaced (``ValueError``)."""
    output = os.path.abspath(os.fspath(output))
    tmp = _temp_beside(output)
    try:
        yield tmp
        if not force and os.path.exists(output):  # appeared while we were working
            raise ValueError(f"{output} exists; pass --force (force=True) to overwrite it")
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_atomic(output: str, write: Callable[[str], None], force: bool = True) -> str:
    """``write(path)`` to a temporary file beside ``output``, then moved onto ``output`` (see
    ``atomic_output``). Returns the absolute output path."""
    with atomic_output(output, force) as tmp:
        write(tmp)
    return os.path.abspath(os.fspath(output))


def write_text_atomic(path: str, text: str) -> str:
    """``text`` (UTF-8) to ``path`` atomically, creating its folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    return write_atomic(path, write)
