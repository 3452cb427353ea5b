"""The fine-tuning input pipeline as Grain: the image folder as a ``RandomAccessDataSource``, the
order of ``image_folder.epoch_order`` (a function of ``(seed, epoch)``), each process its own slice
of every global batch, timm's training transform (``image_folder.train_transform``, its random
draws from ``sample_rng(seed, epoch, image)``) in threads or worker processes, and an iterator
whose state (``get_state`` / ``set_state``, or ``grain.checkpoint.CheckpointSave`` in an Orbax
checkpoint) resumes at the same example.

    ds = train_dataset(ImageFolderSource(folder), train_idx, batch_size=32, seed=0, epochs=10, transform=t)
    it = iter(to_iter_dataset(ds, workers=4))    # batches of {"image": (b, H, W, C) float32, "label": (b,) int32}
    ev = eval_dataset(ImageFolder(val_dir), 64, eval_transform, (3, 224, 224))   # validation, every image once

The batches equal ``image_folder.Batches``' (the same images, crops and flips), each process
receiving rows ``[p * b, (p + 1) * b)`` of each global batch of ``b * process_count`` rows.

An iterator's state is a position, whatever decodes the images: ``iterator_state`` turns a state
saved by threads into one for worker processes, or for another worker count, and back. Worker
processes end with the training process, even when it is killed (``_die_with_parent``).
"""
import functools
import os
import signal
import threading
import time
from typing import Callable, Optional

import numpy as np

from .._optional import optional_import
from .image_folder import ImageFolder, epoch_order, sample_rng

grain = optional_import("grain", "fine-tuning's input pipeline (resnets_jax.data.grain_pipeline)")


class ImageFolderSource:
    """An ``ImageFolder`` as Grain's ``RandomAccessDataSource``: ``source[i]`` is ``{"image": PIL
    image in ``mode``, "label": int, "index": i}`` (decoded when read; paths are picklable, so
    worker processes open the files themselves)."""

    def __init__(self, folder: ImageFolder, mode: str = "RGB"):
        self.folder, self.mode = folder, mode

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        return {"image": self.folder.load(index, self.mode), "label": int(self.folder.labels[index]), "index": index}

    def __repr__(self) -> str:  # Grain logs it
        return f"ImageFolderSource({self.folder.root!r}, {len(self)} images, mode={self.mode!r})"


class _Position(grain.transforms.Map):
    """Element ``j`` of a process's stream -> ``(epoch, image index)``: step ``j // b``, row
    ``p * b + j % b`` of that step's global batch in ``epoch_order(indices, seed, epoch)``."""

    def __init__(self, indices: np.ndarray, seed: int, local_batch: int, process_index: int, process_count: int):
        self.indices, self.seed, self.local_batch = np.asarray(indices), seed, local_batch
        self.process_index, self.global_batch = process_index, local_batch * process_count
        self.steps_per_epoch = len(self.indices) // self.global_batch

    @functools.lru_cache(maxsize=2)
    def _order(self, epoch: int) -> np.ndarray:
        return epoch_order(self.indices, self.seed, epoch)

    def map(self, j):
        step, row = divmod(int(j), self.local_batch)
        epoch, b = divmod(step, self.steps_per_epoch)
        return epoch, int(self._order(epoch)[b * self.global_batch + self.process_index * self.local_batch + row])


class _LoadAndTransform(grain.transforms.Map):
    def __init__(self, source: ImageFolderSource, transform: Callable, seed: int):
        self.source, self.transform, self.seed = source, transform, seed

    def map(self, element):
        epoch, index = element
        item = self.source[index]
        return {"image": np.asarray(self.transform(item["image"], sample_rng(self.seed, epoch, index)), np.float32),
                "label": np.int32(item["label"])}


def train_dataset(source: ImageFolderSource, indices: np.ndarray, batch_size: int, seed: int, epochs: int,
                  transform: Callable, process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
    """Every training batch of ``epochs`` epochs over ``source[indices]`` for one process, as a
    ``grain.MapDataset`` of ``{"image": (b, H, W, C) float32, "label": (b,) int32}`` with ``b =
    batch_size // process_count`` (``batch_size`` is global). An epoch has ``len(indices) //
    batch_size`` batches (the incomplete last one dropped, as timm's training loader).
    ``transform(pil_image, random.Random) -> (H, W, C)``. Raises ``ValueError`` when the batch
    does not split over the processes or the images cannot fill one batch."""
    if batch_size % process_count:
        raise ValueError(f"batch size {batch_size} does not split over {process_count} processes")
    if len(indices) < batch_size:
        raise ValueError(f"{len(indices)} training images cannot fill one batch of {batch_size}: "
                         "lower the batch size (or the validation fraction)")
    local = batch_size // process_count
    position = _Position(indices, seed, local, process_index, process_count)
    return (grain.MapDataset.range(epochs * position.steps_per_epoch * local)
            .map(position).map(_LoadAndTransform(source, transform, seed))
            .batch(local, drop_remainder=True))


class _LoadForEval(grain.transforms.Map):
    """A slot (an image index, or -1: padding) -> ``{"image", "label", "index", "ok"}``; an image
    that cannot be read comes back as zeros with ``ok`` False (and is said through ``log``)."""

    def __init__(self, folder: ImageFolder, transform: Callable, input_size, mode: str, log: Callable):
        self.folder, self.transform, self.mode, self.log = folder, transform, mode, log
        c, h, w = input_size
        self.blank = np.zeros((h, w, c), np.float32)

    def map(self, slot):
        slot = int(slot)
        if slot >= 0:
            try:
                image = np.asarray(self.transform(self.folder.load(slot, self.mode)), np.float32)
                return {"image": image, "label": np.int32(self.folder.labels[slot]), "index": np.int64(slot),
                        "ok": np.bool_(True)}
            except (ValueError, OSError, SyntaxError) as e:  # PIL's errors for a damaged file
                self.log(f"warning: {e}; left out")
        return {"image": self.blank, "label": np.int32(-1), "index": np.int64(slot), "ok": np.bool_(False)}


def eval_rows(num_images: int, batch_size: int, process_count: int = 1) -> int:
    """A process's rows in each batch of ``eval_dataset``."""
    return -(-min(batch_size, num_images) // process_count)


def eval_dataset(folder: ImageFolder, batch_size: int, transform: Callable, input_size, mode: str = "RGB",
                 process_index: int = 0, process_count: int = 1,
                 log: Callable[[str], None] = lambda s: None) -> grain.MapDataset:
    """Every image of ``folder`` once, in order, through the eval ``transform``, for one process:
    global batch ``i`` is images ``[i * B, (i + 1) * B)`` with ``B = min(batch_size, len(folder))``
    rounded up to a multiple of ``process_count``, and each process gets its ``B /
    process_count`` rows of every batch, as ``{"image": (b, H, W, C) float32, "label": (b,)
    int32, "index": (b,) int64, "ok": (b,) bool}``. Every batch of every process has ``b`` rows:
    past the last image, rows are padding (``index`` -1, ``ok`` False), as are unreadable images
    (``ok`` False, their ``index`` kept). ``input_size``: (C, H, W)."""
    n = len(folder)
    share = eval_rows(n, batch_size, process_count)
    step = share * process_count
    slots = np.arange(-(-n // step) * step).reshape(-1, process_count, share)[:, process_index].reshape(-1)
    slots = np.where(slots < n, slots, -1)
    return (grain.MapDataset.source(slots).map(_LoadForEval(folder, transform, input_size, mode, log))
            .batch(share, drop_remainder=False))


def to_iter_dataset(ds: grain.MapDataset, workers: Optional[int] = None, threads: int = 8,
                    prefetch: int = 2) -> grain.IterDataset:
    """``ds`` as an iterable whose iterators checkpoint their position: decoded by ``threads``
    threads of the calling process, or, with ``workers`` > 0, by that many worker processes
    (Grain's ``mp_prefetch``; each keeps ``prefetch`` batches ready). The batches and their
    order do not depend on ``workers`` or ``threads``."""
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads))
    if workers:
        from absl import flags
        if not flags.FLAGS.is_parsed():  # Grain's worker start reads an absl flag; outside absl.app: defaults
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=prefetch),
                            worker_init_fn=_init_worker)
    return it


# How often a worker process checks that the training process is alive: a killed run's workers
# (and, through them, multiprocessing's resource tracker) are gone within about this long.
PARENT_POLL_S = 0.5


def _init_worker(worker_index: int, worker_count: int) -> None:
    """Grain's ``worker_init_fn``: Ctrl-C is the main process's to handle, and a worker ends with it."""
    _ignore_ctrl_c()
    _die_with_parent(worker_index)


def _ignore_ctrl_c() -> None:
    """In each worker process: Ctrl-C (SIGINT, sent to the terminal's whole process group) is the
    main process's to handle (it prints one line and shuts the workers down), not a traceback per
    worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _die_with_parent(worker_index: int) -> None:
    """End this worker process when its parent, the training process,
    is gone. Grain starts its workers as ``daemon`` processes, which multiprocessing ends only when
    the parent exits normally; after a SIGKILL a worker blocks forever on its full output queue
    (it holds both ends of the pipe), and the resource tracker waits for the worker. A thread
    polls ``os.getppid()`` (portable, unlike Linux's ``PR_SET_PDEATHSIG``, which fires when the
    parent *thread* that started the worker ends; Grain starts workers from a thread pool)."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(1)  # no cleanup to wait for: the resource tracker frees shared memory left behind

    threading.Thread(target=watch, name=f"grain-worker-{worker_index}-watch-parent", daemon=True).start()


def _position(state: dict) -> int:
    """The number of batches an iterator of ``to_iter_dataset`` has given, from its Grain state:
    ``{"next_index": n}`` (threads), or ``mp_prefetch``'s interleave of ``k`` worker shards, shard
    ``i`` reading elements ``i, i + k, ...`` in turn (``{"iterators_in_use_states": [{"next_index":
    c_i}, ...], ...}``). Raises ``ValueError`` for any other state."""
    if isinstance(state, dict) and set(state) == {"next_index"}:
        return int(state["next_index"])
    shards = state.get("iterators_in_use_states") if isinstance(state, dict) else None
    if isinstance(shards, list) and shards and all(isinstance(c, dict) and set(c) == {"next_index"} for c in shards):
        counts = [int(c["next_index"]) for c in shards]
        n = sum(counts)
        if state.get("iterators_in_use_indices") == list(range(len(counts))) and counts == _shard_counts(n, len(counts)):
            return n
    raise ValueError(f"not a Grain iterator state of resnets_jax's input pipeline: {str(state)[:200]}")


def _shard_counts(n: int, workers: int) -> list:
    """Elements ``0..n-1`` read round-robin by ``workers`` shards: how many each shard gave."""
    return [(n - i + workers - 1) // workers for i in range(workers)]


def iterator_state(state: dict, workers: int = 0) -> dict:
    """A Grain state saved by an iterator of ``to_iter_dataset(ds, workers=w)`` (any ``w``: threads
    or worker processes) as the state of ``to_iter_dataset(ds, workers=workers)``'s iterator at the
    same batch, for ``set_state``. Raises ``ValueError`` when ``state`` is not such a state."""
    n = _position(state)
    if not workers:
        return {"next_index": n}
    return {"next_index_in_cycle": n % workers, "next_index_in_datasets": workers,
            "iterators_in_use_indices": list(range(workers)),
            "iterators_in_use_states": [{"next_index": c} for c in _shard_counts(n, workers)],
            "exhausted": [0] * workers, "future_states": {}}
