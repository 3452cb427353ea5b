"""Writing files so that a reader, or a run killed mid-write, sees the old file or the new one,
never half of one: a temporary file beside the output, moved into place with ``os.replace``.
Every file the package writes (checkpoints, exports, embeddings, caches) goes through here."""
import contextlib
import os
import re
import secrets
import tempfile
from typing import Callable, Iterator, List, Optional, Tuple

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


# Names that say "PyTorch pickle": torch.load would be handed safetensors bytes, so refused.
PICKLE_SUFFIXES = (".pt", ".pth", ".pth.tar", ".bin", ".ckpt")


def check_output(output: str, force: bool = False) -> str:
    """The absolute output path, after the checks a write must pass: its name does not promise a
    PyTorch pickle (``PICKLE_SUFFIXES``: every file the package writes is safetensors, msgpack,
    npz or JSON, never a pickle), its directory can be written in (``check_writable_dir``), it
    is not a directory, and it does not exist unless ``force``, nor does its name end in a
    separator (a folder meant, e.g. ``-o new/``).
    Raises ``ValueError`` naming the path and the reason."""
    given = os.fspath(output)
    if given.endswith((os.sep, "/")) or (os.altsep and given.endswith(os.altsep)):
        raise ValueError(f"{given} names a directory (it ends in a separator); expected a file name")
    output = os.path.abspath(given)
    suffix = next((s for s in PICKLE_SUFFIXES if output.lower().endswith(s)), None)
    if suffix:
        raise ValueError(f"{output}: a {suffix} name says PyTorch pickle, but resnets_jax writes safetensors "
                         f"(or msgpack), never pickles; name it .safetensors (timm reads it as it is, torch "
                         f"with safetensors.torch.load_file)")
    check_writable_dir(os.path.dirname(output), output)
    if os.path.isdir(output):
        raise ValueError(f"{output} is a directory, expected a file name")
    if os.path.exists(output) and not force:
        raise ValueError(f"{output} exists; pass --force (force=True) to overwrite it")
    return output


# Every temporary file the package writes is `.NAME.<8 hex>.resnets-jax-tmp` beside its output
# NAME: recognisable, and removed by the next write to NAME once its writer is gone.
TEMP_SUFFIX = ".resnets-jax-tmp"
_TEMP_PATTERN = r"\.{name}\.[0-9a-f]{{8}}" + re.escape(TEMP_SUFFIX)


def check_writable_dir(directory: str, for_output: str) -> None:
    """``ValueError`` (naming ``for_output``, what is to be written) unless ``directory`` exists, is a
    directory, and a file can be created in it: tried, as permissions alone do not say (a
    read-only file system, root), so that a long run fails before its work rather than at its write."""
    if not os.path.isdir(directory):
        found = "is a file, not a directory" if os.path.exists(directory) else "does not exist"
        raise ValueError(f"{for_output}: the output directory {directory} {found}")
    try:
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-probe.", suffix=TEMP_SUFFIX)
    except OSError as e:
        raise ValueError(f"{for_output}: cannot write in the output directory {directory} ({e.strerror})") from None
    os.close(fd)
    os.remove(probe)


def _lock(fd: int, blocking: bool = True) -> bool:
    """An exclusive ``flock`` on ``fd``: held by a writer while it writes, released by the kernel
    when the writer dies (even by SIGKILL), so a temporary file whose lock can be taken is stale."""
    if fcntl is None:  # no flock (Windows): a temporary file is never taken for stale
        return blocking
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def remove_stale_temps(directory: str, name: Optional[str] = None) -> List[str]:
    """Remove the temporary files in ``directory`` that writes cut short by a kill left behind
    (those of output ``name``, or of every output), leaving those whose writer still runs.
    Returns the paths removed."""
    pattern = re.compile(_TEMP_PATTERN.format(name=re.escape(name) if name else ".+"))
    removed = []
    for entry in os.listdir(directory):
        if not pattern.fullmatch(entry):
            continue
        path = os.path.join(directory, entry)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:  # its writer finished meanwhile
            continue
        try:
            if _lock(fd, blocking=False):
                os.remove(path)
                removed.append(path)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)
    return removed


def _temp_beside(output: str) -> Tuple[str, int]:
    """A new temporary file beside ``output`` (after removing stale ones of ``output``), created
    with the permissions of any new file, locked by the returned descriptor."""
    directory, name = os.path.split(output)
    remove_stale_temps(directory, name)
    while True:
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # less the umask
        except FileExistsError:
            continue
        _lock(fd)
        return tmp, fd


@contextlib.contextmanager
def atomic_output(output: str, force: bool = True) -> Iterator[str]:
    """A temporary path beside ``output`` (``.NAME.<8 hex>.resnets-jax-tmp``) to write (and
    check) the file at; when the block ends without an exception it is moved onto ``output``
    with ``os.replace``, otherwise (an error, Ctrl-C) removed. Temporary files of ``output`` that
    a killed run left are removed first. Without ``force``, an ``output`` that appeared meanwhile
    is not replaced (``ValueError``)."""
    output = os.path.abspath(os.fspath(output))
    tmp, fd = _temp_beside(output)
    try:
        yield tmp
        if not force and os.path.exists(output):  # appeared while we were working
            raise ValueError(f"{output} exists; pass --force (force=True) to overwrite it")
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
        os.close(fd)


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
