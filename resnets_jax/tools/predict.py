"""Classify images: preprocessing from the model's data config, jitted forward, top-k labels;
files, folders and globs in batches, an unreadable file listed apart (``predict_files``)."""
import dataclasses
import sys
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from ..data import (
    create_transform,
    imagenet_class_names,
    resolve_data_config,
    synset_lemmas,
)
from ..registry import get_pretrained_cfg
from ..xla import jit
from .images import decoded_batches, load_image, stack_readable

__all__ = ["load_images", "load_image", "class_names", "top_k", "predict", "predict_files", "Predictions"]


def load_images(model, paths: Sequence[str], use_test_size: bool = True, exif_transpose: bool = False) -> np.ndarray:
    """Images -> a normalized (N, H, W, C) float32 batch, with the eval transform of the model's
    tag: its ``test_input_size`` / ``test_crop_pct`` where it has them (as timm's inference.py),
    the train size with ``use_test_size=False``. ``ValueError`` naming an unreadable file."""
    transform = create_transform(**resolve_data_config(model, use_test_size=use_test_size),
                                 exif_transpose=exif_transpose)
    return np.stack([load_image(p, transform) for p in paths])


def class_names(model) -> Optional[List[str]]:
    """The labels of the model's classes: an hf-hub model's own ``label_names`` when its
    config has them, else ImageNet-1k / ImageNet-21k names by class count, else None."""
    n = model.num_classes
    cfg = get_pretrained_cfg(model.variant) if getattr(model, "variant", "") else {}
    labels, descriptions = cfg.get("label_names"), cfg.get("label_descriptions") or {}
    if isinstance(labels, dict):  # class index -> name where there are gaps
        labels = [labels.get(str(i), labels.get(i, str(i))) for i in range(n)]
    if isinstance(labels, list) and len(labels) == n:
        descriptions = descriptions or synset_lemmas()  # ImageNet synsets ('n01440764') read as words
        return [str(descriptions.get(x, x)) for x in labels]
    try:
        return imagenet_class_names(n)
    except ValueError:
        return None


DEFAULT_TOP_K = 5  # as timm's inference.py; fewer when the model has fewer classes


def resolve_top_k(k: Optional[int], num_classes: int) -> int:
    """``k``, checked (``check_top_k``); None: ``DEFAULT_TOP_K``, or ``num_classes`` if fewer."""
    k = min(DEFAULT_TOP_K, num_classes) if k is None and num_classes else k
    check_top_k(k, num_classes)
    return k


def check_top_k(k: int, num_classes: int) -> None:
    """``ValueError`` unless ``1 <= k <= num_classes`` (a model without a classifier has none)."""
    if not num_classes:
        raise ValueError(f"top-k {k}: the model has no classifier (num_classes=0)")
    if not 1 <= k <= num_classes:
        raise ValueError(f"top-k {k}: expected 1 to {num_classes}, the model's number of classes")


def top_k(logits: np.ndarray, k: int = 5, names: Optional[Sequence[str]] = None) -> List[List[dict]]:
    """Per image, the k most probable classes: index, label (``names``, else ImageNet's when the
    class count says so, else the index), probability. ``ValueError`` (``check_top_k``) unless
    ``1 <= k <= num_classes``."""
    logits = np.asarray(logits, np.float64)
    check_top_k(k, logits.shape[-1])
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    if names is None:
        try:
            names = imagenet_class_names(logits.shape[-1])
        except ValueError:
            names = None
    out = []
    for p in probs:
        idx = np.argsort(-p)[:k]
        out.append([{"index": int(i), "label": names[i] if names else str(i), "probability": float(p[i])}
                    for i in idx])
    return out


def predict(model, variables, paths: Sequence[str], k: Optional[int] = None, exif_transpose: bool = False,
            use_test_size: bool = True) -> List[List[dict]]:
    """Top-``k`` classes of each image (see ``top_k``). ``use_test_size``: the tag's
    ``test_input_size`` / ``test_crop_pct`` where it has them, as timm's ``inference.py`` and
    ``validate.py`` by default (their ``--use-train-size`` is ``use_test_size=False``).
    ``k``: None gives ``DEFAULT_TOP_K`` (fewer for fewer classes); ``ValueError`` unless
    ``1 <= k <= model.num_classes``, checked before any image is read."""
    k = resolve_top_k(k, model.num_classes)
    x = load_images(model, paths, use_test_size=use_test_size, exif_transpose=exif_transpose)
    logits = jit(model.apply)(variables, x)
    return top_k(np.asarray(logits), k, names=class_names(model))


@dataclasses.dataclass
class Predictions:
    results: List[Tuple[str, List[dict]]]  # (path, top-k records as ``top_k``'s) of each readable image, in order
    failed: List[Tuple[str, str]]          # (path, why) of each file that could not be read


def predict_files(model, variables, paths: Sequence[str], k: Optional[int] = None, batch_size: int = 32,
                  data_config: Optional[dict] = None, label_names: Optional[Sequence[str]] = None,
                  use_test_size: bool = True, exif_transpose: bool = False, workers: Optional[int] = None,
                  dp=None, log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> Predictions:
    """Top-``k`` classes of each file of ``paths`` (``images.expand_image_args`` turns folders and
    globs into them), ``batch_size`` images per step over every device (``DataParallel``; every
    step padded to one shape, so it compiles once), decoded in threads ahead of the device
    (``images.decoded_batches``). A file that cannot be read is listed in ``failed`` (and
    warned of through ``log``); the others go on. ``data_config``: the eval data config
    (default: the tag's, its test size with ``use_test_size``); ``label_names``: of the classes
    (default: ``class_names(model)``)."""
    from ..parallel import DataParallel
    if batch_size < 1:
        raise ValueError(f"batch size {batch_size}: expected a positive number of images")
    k = resolve_top_k(k, model.num_classes)
    cfg = data_config or resolve_data_config(model, use_test_size=use_test_size)
    transform = create_transform(**cfg, exif_transpose=exif_transpose)
    names = list(label_names) if label_names else class_names(model)
    dp = dp or DataParallel()
    variables = dp.replicate(variables)
    batches = [range(i, min(i + batch_size, len(paths))) for i in range(0, len(paths), batch_size)]
    out = Predictions([], [])
    for indices, images in decoded_batches(paths, batches, transform, workers, log):
        x, ok = stack_readable(images, len(indices), cfg["input_size"])
        logits = dp.predict(model, variables, x, pad_to=min(batch_size, len(paths))) if len(x) else \
            np.zeros((0, model.num_classes), np.float32)  # a batch of unreadable files only
        rows = top_k(logits, k, names)
        readable = iter(rows)
        for i, image, good in zip(indices, images, ok):
            if good:
                out.results.append((paths[i], next(readable)))
            else:
                out.failed.append((paths[i], str(image).removeprefix(f"{paths[i]}: ")))
    return out
