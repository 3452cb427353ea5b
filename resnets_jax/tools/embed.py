"""The batch job: pooled embeddings (or top-k predictions) of every image under a folder,
sharded over every device of every process, resumable.

    resnets-jax embed photos/ --model resnetv2_50.a1h_in1k --output emb.npz [--top-k 5]

    out = np.load("emb.npz")
    out["paths"]        # (N,) str: image paths relative to the folder, sorted
    out["embeddings"]   # (N, num_features) float32: forward_head(forward_features(x), pre_logits=True)
    # with --top-k K instead: out["indices"] (N, K) int32, out["probabilities"] (N, K) float32,
    # out["labels"] (N, K) str; always out["failed"]: files that could not be read (left out above)

* Files: every file under the folder (recursively) with an extension in ``IMAGE_EXTENSIONS``,
  sorted by relative path. A file PIL cannot read is reported (stderr) and listed in
  ``failed``; the job goes on. An empty or missing folder is an error.
* Sharding: global batch ``i`` is files ``[i * B, (i + 1) * B)``; each process decodes its
  contiguous share of it and the batch runs over all devices (``DataParallel``); process 0
  receives every row and writes the results. Every process must see the same folder.
* Pipeline: a thread pool decodes and transforms the next batches (PIL releases the GIL in
  decode and resize) while the devices run the current one.
* Resumption: finished batches are written by process 0 as ``<output>.parts/chunk-NNNNNN.npz``
  (each through a temporary file and ``os.replace``, so a kill leaves no half chunk), beside a
  ``manifest.json`` of the job's settings (file list, model, a digest of the weights, batch
  size, mode). Run the same command again and the done batches are skipped; at the end the
  chunks are assembled into the output (atomically) and the parts folder is removed. A
  parts folder from other settings is refused unless ``force``; an existing output is
  replaced only with ``force``.
"""
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
import zipfile
from typing import Callable, List, Optional

import jax
import numpy as np
from tqdm.auto import tqdm

from ..data import create_transform, resolve_data_config
from ..io.files import check_output, remove_stale_temps, write_atomic
from ..parallel import DataParallel, initialize
from .images import decoded_batches, list_images, stack_readable
from .predict import check_top_k, class_names, top_k
from .weights import load_model

MANIFEST_VERSION = 1
# Test hook: after this many chunks written in a run, write the next chunk's temporary file and
# exit at once (os._exit, no cleanup), as a kill in the middle of a write would.
EXIT_AFTER_ENV = "RESNETS_JAX_EMBED_EXIT_AFTER"
EXIT_HOOK_STATUS = 75
# top-k output arrays: (name in the file, key in predict.top_k's records, dtype)
TOP_K_FIELDS = (("indices", "index", np.int32), ("probabilities", "probability", np.float32), ("labels", "label", str))


@dataclasses.dataclass
class EmbedResult:
    output: str
    images: int          # rows in the output (readable images)
    failed: List[str]    # files that could not be read
    computed: int        # images embedded in this invocation (readable ones; process 0's count)
    resumed: int         # images taken from batches an earlier run had done (readable ones)
    seconds: float


def pooled_features(module, x):
    """The model's pooled features: its head's input (``pre_logits``), as timm's ``forward_head``."""
    return module.forward_head(module.forward_features(x), pre_logits=True)


@dataclasses.dataclass
class _Job:
    folder: str
    output: str
    files: List[str]
    force: bool

    @classmethod
    def check(cls, folder: str, output: str, force: bool) -> "_Job":
        """The checks a job must pass before any model is loaded."""
        output = check_output(output, force)
        if not output.endswith(".npz"):
            raise ValueError(f"{output}: expected a .npz file name")
        return cls(folder=folder, output=output, files=list_images(folder), force=force)

    @property
    def parts(self) -> str:
        return self.output + ".parts"


def embed_folder(model, variables, folder: str, output: str, **kwargs) -> EmbedResult:
    """Embeddings (or, with ``k``, top-k predictions) of every image under ``folder`` into
    ``output`` (a ``.npz``); see the module docstring. Keyword arguments: ``k``,
    ``batch_size`` (global, over all devices; default 64), ``force``, ``workers`` (decode
    threads; default: CPU count), ``dp`` (a ``DataParallel``; default all devices),
    ``progress``, ``log``, ``use_test_size`` (default True: the tag's ``test_input_size`` /
    ``test_crop_pct`` where it has them, as timm's ``inference.py``), ``data_config`` (instead
    of the tag's), ``label_names`` (of the top-k classes; default: the tag's)."""
    return _run(_Job.check(folder, output, kwargs.pop("force", False)), model, variables, **kwargs)


def run_embed(name: str, folder: str, output: str, weights: Optional[str] = None, force: bool = False,
              use_ema: bool = True, num_classes: Optional[int] = None, use_test_size: bool = True,
              **kwargs) -> EmbedResult:
    """``embed_folder`` with the model ``name`` and ``weights`` (``weights.load_model``: a
    checkpoint file or a fine-tuning run directory, its recorded class names and data config
    used; default: the tag's pretrained hub weights), checking the folder and the output before
    loading anything, under ``jax.distributed`` when launched as several processes
    (``parallel.initialize``). What ``resnets-jax embed`` runs."""
    initialize()
    job = _Job.check(folder, output, force)
    loaded = load_model(name, weights, num_classes=num_classes, use_ema=use_ema, use_test_size=use_test_size)
    return _run(job, loaded.model, loaded.variables, data_config=loaded.data_config,
                label_names=loaded.label_names, **kwargs)


def _digest(strings) -> str:
    h = hashlib.sha256()
    for s in strings:
        h.update(s.encode() + b"\0")
    return h.hexdigest()


def _variables_digest(variables) -> str:
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
        h.update(jax.tree_util.keystr(path).encode())
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return h.hexdigest()


def _write_atomic(path: str, write: Callable, force: bool = True, exit_hook: bool = False) -> None:
    """``write(file)`` into a temporary file beside ``path``, then moved into place;
    ``exit_hook``: exit abruptly before the move, as a kill would."""
    def to_file(tmp):
        with open(tmp, "wb") as f:
            write(f)
        if exit_hook:
            os._exit(EXIT_HOOK_STATUS)
    write_atomic(path, to_file, force)


def _chunk_path(parts: str, i: int) -> str:
    return os.path.join(parts, f"chunk-{i:06d}.npz")


def _prepare_parts(job: _Job, manifest: dict, num_batches: int, log: Callable) -> np.ndarray:
    """Process 0: the parts folder with this job's manifest; returns which batches are done."""
    path = os.path.join(job.parts, "manifest.json")
    if os.path.exists(path):
        try:
            with open(path) as f:
                old = json.load(f)
            changed = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
            why = f"other settings ({', '.join(changed)} differ)" if changed else ""
        except (OSError, ValueError) as e:  # damaged since: its run's settings are unknown
            why = f"settings that cannot be read (manifest.json: {e})"
        if why:
            if not job.force:
                raise ValueError(f"{job.parts} holds an unfinished run with {why}; run it as it was, "
                                 "or pass --force (force=True) to start over")
            log(f"discarding {job.parts}: an unfinished run with {why}")
            shutil.rmtree(job.parts)
    os.makedirs(job.parts, exist_ok=True)
    remove_stale_temps(job.parts)  # writes cut short by a kill
    if not os.path.exists(path):
        _write_atomic(path, lambda f: f.write(json.dumps(manifest, indent=1).encode()))
    done = np.array([os.path.exists(_chunk_path(job.parts, i)) for i in range(num_batches)])
    for i in np.flatnonzero(done):  # a chunk damaged since it was written (each is written whole)
        damage = _chunk_damage(_chunk_path(job.parts, i))
        if damage:
            log(f"warning: {_chunk_path(job.parts, i)} is damaged ({damage}); computing its batch again")
            os.remove(_chunk_path(job.parts, i))
            done[i] = False
    return done


def _chunk_damage(path: str) -> Optional[str]:
    """Why the chunk at ``path`` cannot be read back whole (None when it can)."""
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        return f"{type(e).__name__}: {e}"
    missing = {"index", "failed"} - set(arrays)
    return f"no {', '.join(sorted(missing))}" if missing else None


def _agree(dp: DataParallel, error: Optional[BaseException]) -> None:
    """Raise on every process when any failed (the others would wait in a collective)."""
    failed = dp.allgather(np.bool_(error is not None))
    if error is not None:
        raise error
    if failed.any():
        raise RuntimeError(f"process {int(np.argmax(failed))} failed (see its error); stopping")


def _run(job: _Job, model, variables, k: Optional[int] = None, batch_size: int = 64, workers: Optional[int] = None,
         dp: Optional[DataParallel] = None, progress: bool = True, log: Optional[Callable] = None,
         use_test_size: bool = True, data_config: Optional[dict] = None,
         label_names: Optional[List[str]] = None) -> EmbedResult:
    log = log or _log
    start = time.perf_counter()
    if batch_size < 1:
        raise ValueError(f"batch size {batch_size}: expected a positive number of images")
    if k is not None:
        check_top_k(k, model.num_classes)
    dp = dp or DataParallel()
    main_process = jax.process_index() == 0
    cfg = data_config or resolve_data_config(model, use_test_size=use_test_size)
    transform = create_transform(**cfg)
    n_files, procs, me = len(job.files), jax.process_count() if dp.multi_process else 1, jax.process_index()
    share = -(-batch_size // procs)  # a process's files in a batch
    num_batches = -(-n_files // batch_size)
    manifest = dict(version=MANIFEST_VERSION, files=_digest(job.files), num_files=n_files, batch_size=batch_size,
                    model=model.variant, weights=_variables_digest(variables), data_config=repr(sorted(cfg.items())),
                    mode="top_k" if k else "embeddings", k=k)
    done, error = np.zeros(num_batches, bool), None
    if main_process:
        try:
            done = _prepare_parts(job, manifest, num_batches, log)
        except (ValueError, OSError) as e:
            error = e
    if dp.multi_process:  # go on only if process 0 could, and every process lists the same files
        _agree(dp, error)
        digests = dp.allgather(np.frombuffer(bytes.fromhex(manifest["files"]), np.uint8))
        if (digests != digests[0]).any():
            raise ValueError(f"{job.folder}: the processes see different files; every process needs the same folder")
        done = dp.allgather(done)[0]  # process 0's record
    elif error is not None:
        raise error

    todo = [i for i in range(num_batches) if not done[i]]
    resumed = sum(min(batch_size, n_files - i * batch_size) for i in range(num_batches) if done[i])  # files
    if resumed and main_process:
        log(f"resuming: {num_batches - len(todo)} of {num_batches} batches ({resumed} files) already done in {job.parts}")
    variables = dp.replicate(variables)
    names = (label_names or class_names(model)) if k else None
    method = None if k else pooled_features
    exit_after = int(os.environ.get(EXIT_AFTER_ENV, "-1"))

    def my_files(i):  # this process's share of batch i: file indices
        lo = i * batch_size + me * share
        return range(lo, max(lo, min(lo + share, (i + 1) * batch_size, n_files)))

    bar = _progress_bar(n_files, resumed, progress and main_process)
    computed, unreadable = 0, 0  # images embedded now, files of this run that could not be read
    paths = [os.path.join(job.folder, f) for f in job.files]
    batches = decoded_batches(paths, [my_files(i) for i in todo], transform, workers, log)
    for j, (i, (_, images)) in enumerate(zip(todo, batches)):
        x, ok = stack_readable(images, share, cfg["input_size"])
        rows = dp.predict_all(model, variables, x, method=method, pad_to=share)
        oks = dp.allgather(ok)  # (processes, share): which files of the batch were read
        batch = np.arange(i * batch_size, min((i + 1) * batch_size, n_files))
        if main_process:
            valid = np.concatenate([oks[p][:len(batch[p * share:(p + 1) * share])] for p in range(procs)])
            computed, unreadable = computed + int(valid.sum()), unreadable + int((~valid).sum())
            arrays = dict(index=batch[valid], failed=batch[~valid])
            if k:
                preds = top_k(rows, k, names)
                arrays.update({name: np.array([[r[key] for r in p] for p in preds], dtype).reshape(-1, k)
                               for name, key, dtype in TOP_K_FIELDS})
            else:
                arrays.update(embeddings=rows.astype(np.float32))
            _write_atomic(_chunk_path(job.parts, i), lambda f: np.savez(f, **arrays), exit_hook=j == exit_after)
            bar.update(len(batch))
    bar.close()
    result = EmbedResult(output=job.output, images=0, failed=[], computed=computed, resumed=0,
                         seconds=time.perf_counter() - start)
    if main_process:
        _assemble(job, num_batches, k, result)
        shutil.rmtree(job.parts)
        result.resumed = result.images - computed
        rate = computed / max(result.seconds, 1e-9)
        log(f"embedded {computed} images in {result.seconds:.1f}s ({rate:.1f} images/s over {dp.num_devices} "
            f"device(s)); {result.resumed} resumed; {len(result.failed)} unreadable "
            f"({unreadable} in this run), left out")
    return result


def _assemble(job: _Job, num_batches: int, k: Optional[int], result: EmbedResult) -> None:
    """Process 0: the chunks, in order, into the output file (atomically)."""
    chunks = [dict(np.load(_chunk_path(job.parts, i))) for i in range(num_batches)]
    keys = [name for name, _, _ in TOP_K_FIELDS] if k else ["embeddings"]
    index = np.concatenate([c["index"] for c in chunks])
    failed = np.concatenate([c["failed"] for c in chunks])
    files = np.array(job.files, str)
    arrays = {key: np.concatenate([c[key] for c in chunks]) for key in keys}
    _write_atomic(job.output, lambda f: np.savez(f, paths=files[index], failed=files[failed], **arrays), job.force)
    result.images, result.failed = len(index), list(files[failed])


def _log(message: str) -> None:
    tqdm.write(message, file=sys.stderr)  # above the progress bar, not through it


def _progress_bar(total: int, initial: int, enabled: bool):
    return tqdm(total=total, initial=initial, unit="img", file=sys.stderr, dynamic_ncols=True, disable=not enabled)
