"""Image files for the batch commands (``predict``, ``embed``): which files a command line
names (files, folders, globs), and their decoding in a thread pool a few batches ahead of the
device, an unreadable file given back as its error rather than stopping the run."""
import glob
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, List, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from ..data import IMAGE_EXTENSIONS

PREFETCH_BATCHES = 2  # decoded ahead of the device: one to feed it next, one to absorb slow files
_GLOB_CHARS = "*?["


def list_images(folder: str) -> List[str]:
    """Image files under ``folder`` (recursive), as sorted paths relative to it."""
    if not os.path.isdir(folder):
        raise ValueError(f"{folder}: no such folder")
    files = sorted(os.path.relpath(p, folder).replace(os.sep, "/")
                   for p in glob.iglob(os.path.join(glob.escape(folder), "**", "*"), recursive=True)
                   if p.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(p))
    if not files:
        raise ValueError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in it or below it")
    return files


def expand_image_args(args: Sequence[str]) -> List[str]:
    """A command line's images -> file paths, in order, without duplicates: a folder gives its
    image files (recursive, sorted), a glob (``'photos/*.jpg'``, ``'**'`` recursive) its matches
    (folders among them expanded), anything else is taken as a file (a missing one then fails
    as an unreadable image). ``ValueError`` for a folder without images, a glob matching
    nothing."""
    out = []
    for arg in args:
        if os.path.isdir(arg):
            paths = [os.path.join(arg, p) for p in list_images(arg)]
        elif any(c in arg for c in _GLOB_CHARS) and not os.path.exists(arg):
            matches = sorted(glob.glob(arg, recursive=True))
            if not matches:
                raise ValueError(f"{arg}: matches no file")
            paths = [p for m in matches for p in
                     ([os.path.join(m, f) for f in list_images(m)] if os.path.isdir(m) else [m])]
        else:
            paths = [arg]
        out += paths
    return list(dict.fromkeys(out))


def load_image(path: str, transform: Callable) -> np.ndarray:
    """One image file through ``transform``; a missing or unreadable file is a ValueError
    naming it."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such image file")
    try:
        with Image.open(path) as img:
            return transform(img)
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path}: not an image PIL can read ({e})") from None


Decoded = Union[np.ndarray, ValueError]  # an image, or why its file could not be read


def decoded_batches(paths: Sequence[str], batches: Iterable[Sequence[int]], transform: Callable,
                    workers=None, log: Callable[[str], None] = lambda s: None,
                    prefetch: int = PREFETCH_BATCHES) -> Iterator[Tuple[Sequence[int], List[Decoded]]]:
    """For each of ``batches`` (indices into ``paths``), in order: ``(indices, decoded)``, each
    entry the ``(H, W, C)`` float32 image (``load_image``) or, for a file that cannot be read,
    its ``ValueError`` (also said through ``log`` as a warning). A pool of ``workers`` threads
    (default: CPU count; PIL decodes without the GIL) decodes ``prefetch`` batches ahead."""
    def decode(i):
        try:
            return load_image(paths[i], transform)
        except ValueError as e:
            log(f"warning: {e}; left out")
            return e

    with ThreadPoolExecutor(workers or os.cpu_count()) as pool:
        pending, todo = deque(), iter(batches)

        def submit():
            indices = next(todo, None)
            if indices is not None:
                pending.append((indices, [pool.submit(decode, i) for i in indices]))

        for _ in range(prefetch):
            submit()
        while pending:
            indices, futures = pending.popleft()
            submit()
            yield indices, [f.result() for f in futures]


def stack_readable(decoded: Sequence[Decoded], rows: int, input_size: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
    """``(images, ok)``: the readable images stacked, ``(n, H, W, C)`` float32 (``(0, H, W, C)``
    when none; ``input_size`` is (C, H, W)), and which of ``rows`` entries were readable
    (``(rows,)`` bool, False past ``len(decoded)``)."""
    ok = np.zeros(rows, bool)
    ok[:len(decoded)] = [isinstance(x, np.ndarray) for x in decoded]
    good = [x for x in decoded if isinstance(x, np.ndarray)]
    c, h, w = input_size
    return (np.stack(good) if good else np.zeros((0, h, w, c), np.float32)), ok
