"""Images in class folders (torchvision's ``ImageFolder`` layout), timm's training transform, and
batches in an order that is a pure function of ``(seed, epoch)``.

    root/
      cat/ 001.jpg 002.png ...
      dog/ ...

Classes are the sorted sub-folder names (as torchvision's ``find_classes``); a class's images
are every file below its folder with one of ``IMAGE_EXTENSIONS``, in sorted order. The training
transform is ``data.create_transform(..., is_training=True)`` (``data.augment``), drawn from a
``random.Random`` seeded per ``(seed, epoch, image)`` (``sample_rng``: the same crop as timm's
with ``random.seed`` of that seed). Validation images get the eval transform of
``data.create_transform``.
"""
import os
import random
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from .augment import RRC_RATIO, RRC_SCALE, TrainTransform, rrc_params  # noqa: F401  (rrc_params: its old home)
from .images import to_model_mode

# What PIL decodes: torchvision's IMG_EXTENSIONS plus .gif (timm's ImageDataset lists only .png/.jpg/.jpeg).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ImageFolder:
    """``samples``: ``(path, class index)`` pairs; ``classes``: the sorted class folder names.
    A folder that is missing, has fewer than two classes, or a class without images, is refused
    with one error saying what was found."""

    def __init__(self, root: str, classes: Optional[Sequence[str]] = None):
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise ValueError(f"{root}: not a directory; expected a folder with one sub-folder of images per class")
        self.root = root
        folders = sorted(e.name for e in os.scandir(root) if e.is_dir())
        if classes is None:
            self.classes = folders
            if len(folders) < 2:
                found = f"only the class folder {folders[0]!r}" if folders else "no class folders"
                raise ValueError(f"{root}: {found}; expected at least two sub-folders of images, one per class")
        else:  # a validation split: its folders labelled as the training split's classes
            self.classes = list(classes)
            unknown = [f for f in folders if f not in self.classes]
            if unknown or not folders:
                raise ValueError(f"{root}: class folder(s) {', '.join(map(repr, unknown)) or '(none)'} not among the "
                                 f"training classes ({', '.join(self.classes[:8])}{', ...' if len(self.classes) > 8 else ''})")
        self.samples: List[Tuple[str, int]] = []
        empty = []
        for name in folders:
            files = sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(root, name), followlinks=True)
                           for f in fs if f.lower().endswith(IMAGE_EXTENSIONS))
            if not files:
                empty.append(name)
            self.samples += [(f, self.classes.index(name)) for f in files]
        if empty:
            raise ValueError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in class folder(s) "
                             f"{', '.join(map(repr, empty))}")
        self.labels = np.asarray([label for _, label in self.samples], np.int64)

    @classmethod
    def concat(cls, root: str, first: "ImageFolder", second: "ImageFolder") -> "ImageFolder":
        """Both folders' samples (``first``'s, then ``second``'s) under ``first``'s classes."""
        if second.classes != first.classes:
            raise ValueError(f"{second.root}: other classes than {first.root}")
        out = cls.__new__(cls)
        out.root, out.classes, out.samples = root, first.classes, first.samples + second.samples
        out.labels = np.concatenate([first.labels, second.labels])
        return out

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int, mode: str = "RGB") -> Image.Image:
        path = self.samples[index][0]
        try:
            with Image.open(path) as img:
                img.load()  # read now: the file closes when this block ends
                return to_model_mode(img, mode)
        except OSError as e:
            raise ValueError(f"{path}: cannot read the image ({e})") from None


# timm's split folder names (timm/data/dataset_factory.py, _TRAIN_SYNONYM / _EVAL_SYNONYM), searched in order
TRAIN_SPLITS = ("train", "training")
VAL_SPLITS = ("val", "valid", "validation", "eval", "evaluation")


def _find_split(root: str, name: Optional[str], synonyms: Sequence[str], flag: str) -> Optional[str]:
    if name:
        path = os.path.join(root, name)
        if not os.path.isdir(path):
            raise ValueError(f"{path}: no such folder ({flag} {name!r}); {root} holds "
                             f"{', '.join(sorted(os.listdir(root))[:8]) or 'nothing'}")
        return path
    return next((os.path.join(root, s) for s in synonyms if os.path.isdir(os.path.join(root, s))), None)


def _has_class_folders(path: str) -> bool:
    return any(e.is_dir() for e in os.scandir(path))


def split_folders(root: str, train_split: Optional[str] = None,
                  val_split: Optional[str] = None) -> Optional[Tuple[str, Optional[str]]]:
    """timm's split layout of ``root`` (``train/<class>/...`` and ``val/<class>/...``, the
    folder names of timm's ``_search_split``): ``(train folder, validation folder or None)``, or
    None when ``root`` is itself a folder of class folders. ``train_split`` / ``val_split``
    (timm's ``--train-split`` / ``--val-split``) name the folders; without them, a ``train``
    (or ``training``) folder that holds class folders makes the layout. ``ValueError`` for a
    named folder that is missing, and for ``train/`` and ``val/`` folders that hold images
    rather than class folders (neither layout: classes named after splits are refused)."""
    if not os.path.isdir(root):
        raise ValueError(f"{root}: not a directory; expected a folder with one sub-folder of images per class")
    train = _find_split(root, train_split, TRAIN_SPLITS, "--train-split")
    val = _find_split(root, val_split, VAL_SPLITS, "--val-split")
    if train is None:
        if val_split:
            raise ValueError(f"{root}: --val-split {val_split!r} but no training folder ({', '.join(TRAIN_SPLITS)}); "
                             "name it with --train-split")
        return None
    if not _has_class_folders(train):
        if train_split or val_split:
            raise ValueError(f"{train}: no class folders; expected {train}/<class>/<images>")
        if val is None:
            return None  # a class that happens to be named 'train'
        raise ValueError(f"{root}: its {os.path.basename(train)}/ and {os.path.basename(val)}/ folders hold images, "
                         f"not class folders. Read as timm's split layout, expected {train}/<class>/<images> and "
                         f"{val}/<class>/<images>; split folders are not taken for two classes")
    return train, val


def split_indices(labels: np.ndarray, val_fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """A held-out split, the same for the same ``(labels, val_fraction, seed)``: from each class,
    ``round(val_fraction * n)`` images drawn at random go to validation (at least one image of
    each class stays for training). Returns sorted ``(train, val)`` indices."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    rng = np.random.default_rng([seed, len(labels)])
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = min(int(round(val_fraction * len(idx))), len(idx) - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def training_data(root: str, train_split: Optional[str] = None, val_split: Optional[str] = None,
                  val_fraction: float = 0.1, seed: int = 0) -> Tuple[ImageFolder, np.ndarray, np.ndarray, str]:
    """Fine-tuning's data: ``(dataset, train indices, validation indices, what was found in a
    split root, '' for a folder of class folders)``.
    A split root (``split_folders``) trains on its training folder and validates on its
    validation folder (its class folders labelled by the training folder's classes); a folder of
    class folders, or a split root without a validation folder, holds out ``val_fraction`` of each
    class (``split_indices``). ``ValueError`` when a held-out fraction holds out no image."""
    splits = split_folders(root, train_split, val_split)
    if splits is not None and splits[1] is not None:
        train = ImageFolder(splits[0])
        val = ImageFolder(splits[1], classes=train.classes)
        n = len(train)
        return (ImageFolder.concat(root, train, val), np.arange(n), np.arange(n, n + len(val)),
                f"{root}: training on {splits[0]} ({n} images), validating on {splits[1]} ({len(val)} images)")
    folder = splits[0] if splits else root
    dataset = ImageFolder(folder)
    train_idx, val_idx = split_indices(dataset.labels, val_fraction, seed)
    if val_fraction and not len(val_idx):
        raise ValueError(f"val_fraction {val_fraction} holds out no image of {folder}; raise it (or use 0)")
    where = f"{root}: training on {folder}; no validation folder, so validating on {val_fraction:g} of each class " \
        f"({len(val_idx)} images)" if splits else ""
    return dataset, train_idx, val_idx, where


def epoch_order(indices: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """The training order of ``epoch``: a permutation of ``indices`` that depends only on
    ``(seed, epoch)``, so a resumed run sees the same batches."""
    return np.random.default_rng([seed, epoch]).permutation(indices)


def sample_rng(seed: int, epoch: int, index: int) -> random.Random:
    """The augmentation RNG of one image in one epoch (independent of batch and worker)."""
    return random.Random(int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0]))


def train_transform(img: Image.Image, rng: random.Random, size: Tuple[int, int], mean: Sequence[float],
                    std: Sequence[float], interpolation: str = "random", hflip: float = 0.5,
                    scale: Sequence[float] = RRC_SCALE, ratio: Sequence[float] = RRC_RATIO,
                    color_jitter=None) -> np.ndarray:
    """timm's training transform of an image already in the model's mode, drawn from ``rng``:
    ``data.augment.TrainTransform`` (what ``create_transform(..., is_training=True)`` returns),
    here without colour jitter unless ``color_jitter`` is given. ``(H, W, C)`` float32."""
    return TrainTransform(size, scale=scale, ratio=ratio, interpolation=interpolation, hflip=hflip,
                          color_jitter=color_jitter, mean=mean, std=std, mode=img.mode)(img, rng)


class Batches:
    """Training batches of ``dataset[indices]``: epoch ``e`` visits ``epoch_order(indices, seed,
    e)`` in batches of ``batch_size`` (the incomplete last batch dropped, as timm's training
    loader), each image through ``train_transform`` with ``sample_rng(seed, e, index)``."""

    def __init__(self, dataset: ImageFolder, indices: np.ndarray, batch_size: int, seed: int,
                 transform: Callable, mode: str = "RGB", workers: Optional[int] = None):
        if len(indices) < batch_size:
            raise ValueError(f"{len(indices)} training images cannot fill one batch of {batch_size}: "
                             "lower the batch size (or the validation fraction)")
        self.dataset, self.indices, self.batch_size, self.seed = dataset, np.asarray(indices), batch_size, seed
        self.transform, self.mode = transform, mode
        self.pool = ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1))  # PIL decodes without the GIL

    @property
    def steps_per_epoch(self) -> int:
        return len(self.indices) // self.batch_size

    def batch(self, epoch: int, step: int) -> dict:
        """Batch ``step`` of ``epoch``: ``{"image": (B, H, W, C) float32, "label": (B,) int32}``."""
        order = epoch_order(self.indices, self.seed, epoch)[step * self.batch_size:(step + 1) * self.batch_size]

        def one(i):
            return self.transform(self.dataset.load(int(i), self.mode), sample_rng(self.seed, epoch, int(i)))

        return {"image": np.stack(list(self.pool.map(one, order))),
                "label": self.dataset.labels[order].astype(np.int32)}


def eval_batches(dataset: ImageFolder, indices: np.ndarray, batch_size: int, transform: Callable,
                 mode: str = "RGB"):
    """``dataset[indices]`` in order, through the eval ``transform``, in batches (the last one
    may be smaller)."""
    labels = dataset.labels
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        yield {"image": np.stack([transform(dataset.load(int(i), mode)) for i in chunk]),
               "label": labels[chunk].astype(np.int32)}
