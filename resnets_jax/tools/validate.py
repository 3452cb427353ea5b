"""``resnets-jax validate MODEL FOLDER``: top-1 / top-5 accuracy, loss and throughput on a
labelled folder, as timm's ``validate.py``.

    resnets-jax validate resnetv2_50.a1h_in1k imagenet/val
    resnets-jax validate resnetv2_18 flowers/ --weights runs/flowers      # a fine-tuning run: its best export

* Data: ``FOLDER`` holds one sub-folder per class (or is a split root: its ``val/`` folder, as
  timm's ``_search_split``), read on Grain (``data.grain_pipeline.eval_dataset``) with the
  eval transform of the data config: the weights file's record where it has one, else the
  tag's test size / crop (``use_test_size``, timm's default; ``--use-train-size``).
* Labels: class folders are the model's classes by the weights file's ``label_names`` when it
  records them (a folder not among them is an error), else in sorted order (timm's ImageFolder).
* Metrics as timm's: top-1 and top-5 in % (top-k with k = min(5, num_classes)), the mean
  cross-entropy, images/s (the loop's wall time, after a compile warm-up, as timm's warm-up
  batch), the image count. An unreadable image is listed apart (``failed``), not counted.
* Devices and processes: every device of every process (``DataParallel``), each process
  decoding its rows of every batch; launched as several processes, ``jax.distributed``
  (``parallel.initialize``) and sums gathered at the end.
"""
import dataclasses
import json
import os
import sys
import time
from typing import Callable, List, Optional, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from .._optional import require
from ..data import ImageFolder, create_transform
from ..data.image_folder import split_folders
from ..io.files import check_output, write_text_atomic
from ..parallel import DataParallel, initialize
from .weights import load_model

TOP5 = 5  # timm's validate.py: accuracy(output, target, topk=(1, 5))
DEFAULT_BATCH_SIZE = 256  # timm's validate.py --batch-size
VALIDATE_NEEDS = ("validate's input pipeline (Grain)", "grain")  # the train extra


@dataclasses.dataclass
class ValidateResult:
    """timm's validate.py results (``top1``, ``top1_err``, ``top5``, ``top5_err``, ``param_count``
    in millions, ``img_size``, ``crop_pct``, ``interpolation``) plus ``loss``, ``count``,
    ``images_per_s`` and the unreadable files (``failed``)."""
    model: str
    top1: float
    top1_err: float
    top5: float
    top5_err: float
    loss: float
    count: int
    images_per_s: float
    param_count: float
    img_size: int
    crop_pct: float
    interpolation: str
    failed: List[str]
    weights: Optional[str] = None


def _log(message: str) -> None:
    tqdm.write(message, file=sys.stderr)  # above the progress bar, not through it


def labelled_folder(folder: str, label_names: Optional[Sequence[str]], num_classes: int,
                    log: Callable[[str], None] = _log) -> ImageFolder:
    """``folder`` (a split root: its validation folder, said through ``log``) as an
    ``ImageFolder`` labelled with the model's classes: by ``label_names`` when given, else the
    sorted class folders in order. ``ValueError`` when a class folder is not among
    ``label_names``, or there are more class folders than ``num_classes``."""
    splits = split_folders(folder)
    if splits is not None and splits[1] is not None:
        log(f"{folder}: a split root; validating on {splits[1]}")
        folder = splits[1]
    if label_names:
        return ImageFolder(folder, classes=list(label_names))
    dataset = ImageFolder(folder)
    if len(dataset.classes) > num_classes:
        raise ValueError(f"{folder}: {len(dataset.classes)} class folders for a model of {num_classes} classes; "
                         "expected at most one folder per class (give the weights with --weights)")
    return dataset


def validate(model, variables, folder: str, *, data_config: dict, label_names: Optional[Sequence[str]] = None,
             batch_size: int = DEFAULT_BATCH_SIZE, workers: Optional[int] = None, dp: Optional[DataParallel] = None,
             progress: bool = True, log: Callable[[str], None] = _log) -> ValidateResult:
    """timm's ``validate.py`` on ``folder`` (see the module docstring) with ``model`` and
    ``variables``, preprocessing with ``data_config`` (timm's ``resolve_data_config`` dict).
    ``batch_size``: global, over every device of every process. Every process must call it
    with the same folder. Raises ``ValueError`` for a folder that does not fit the model, and
    when no image could be read."""
    from ..data.grain_pipeline import eval_dataset, eval_rows, to_iter_dataset  # the train extra: checked first
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive; got {batch_size}")
    if not model.num_classes:
        raise ValueError(f"validate needs a classifier; {model.variant} has num_classes=0")
    dp = dp or DataParallel()
    dataset = labelled_folder(folder, label_names, model.num_classes, log)
    procs = jax.process_count() if dp.multi_process else 1
    c, h, w = data_config["input_size"]
    transform = create_transform(**data_config)
    ds = eval_dataset(dataset, batch_size, transform, data_config["input_size"], "RGB" if c == 3 else "L",
                      jax.process_index() if dp.multi_process else 0, procs, log)
    variables = dp.replicate(variables)
    share = eval_rows(len(dataset), batch_size, procs)
    dp.predict(model, variables, np.zeros((share, h, w, c), np.float32), pad_to=share)  # compile: the warm-up
    k5 = min(TOP5, model.num_classes)
    sums = np.zeros(4)  # loss, top-1 correct, top-k correct, images
    failed = np.zeros(len(dataset), bool)
    bar = tqdm(total=len(dataset), unit="img", file=sys.stderr, dynamic_ncols=True,
               disable=not (progress and jax.process_index() == 0))
    start = time.perf_counter()
    for i, batch in enumerate(to_iter_dataset(ds, threads=workers or min(8, os.cpu_count() or 1))):
        logits = np.asarray(dp.predict(model, variables, batch["image"], pad_to=share), np.float64)
        ok, labels = batch["ok"], batch["label"]
        failed[batch["index"][(~ok) & (batch["index"] >= 0)]] = True
        logits, labels = logits[ok], labels[ok]
        log_probs = logits - logits.max(-1, keepdims=True)
        log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
        rank = (logits > logits[np.arange(len(labels)), labels][:, None]).sum(-1)  # classes scored above the label
        sums += [-log_probs[np.arange(len(labels)), labels].sum(), (rank < 1).sum(), (rank < k5).sum(), len(labels)]
        bar.update(min(share * procs, len(dataset) - i * share * procs))
    seconds = time.perf_counter() - start
    bar.close()
    # gathered as 32-bit (JAX's default): the counts as integers, exact; the loss sum to fp32
    counts = dp.allgather(sums[1:].astype(np.int32)).sum(0)
    loss = float(dp.allgather(np.float32(sums[0])).astype(np.float64).sum())
    failed = dp.allgather(failed).any(0)
    top1, top5, count = int(counts[0]), int(counts[1]), int(counts[2])
    if not count:
        raise ValueError(f"{folder}: none of its {len(dataset)} images could be read")
    top1, top5 = 100 * top1 / count, 100 * top5 / count
    params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(variables["params"]))
    return ValidateResult(model=model.variant, top1=round(top1, 4), top1_err=round(100 - top1, 4), top5=round(top5, 4),
                          top5_err=round(100 - top5, 4), loss=loss / count, count=count,
                          images_per_s=count / max(seconds, 1e-9), param_count=round(params / 1e6, 2), img_size=int(w),
                          crop_pct=float(data_config["crop_pct"]), interpolation=data_config["interpolation"],
                          failed=[dataset.samples[i][0] for i in np.flatnonzero(failed)])


def run_validate(name: str, folder: str, weights: Optional[str] = None, *, num_classes: Optional[int] = None,
                 use_ema: bool = True, use_test_size: bool = True, results_file: Optional[str] = None,
                 force: bool = False, **kwargs) -> ValidateResult:
    """``validate`` with the model ``name`` and ``weights`` (``weights.load_model``: a file or a
    fine-tuning run directory, its recorded classes and data config used; default: the tag's
    hub weights), under ``jax.distributed`` when launched as several processes. With
    ``results_file``, process 0 writes the results there as JSON (atomically; an existing file
    is replaced only with ``force``). What ``resnets-jax validate`` runs."""
    require(*VALIDATE_NEEDS)  # before any work
    initialize()
    if results_file:
        results_file = check_output(results_file, force)  # before any work
    loaded = load_model(name, weights, num_classes=num_classes, use_ema=use_ema, use_test_size=use_test_size)
    result = validate(loaded.model, loaded.variables, folder, data_config=loaded.data_config,
                      label_names=loaded.metadata.label_names, **kwargs)
    result.weights = loaded.weights
    if results_file and jax.process_index() == 0:
        write_text_atomic(results_file, json.dumps(dataclasses.asdict(result), indent=1) + "\n")
    return result
