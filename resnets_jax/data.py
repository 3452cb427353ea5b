"""Eval preprocessing from a model's pretrained config, and ImageNet class names.

``create_transform(**resolve_data_config(name))`` reproduces timm's eval transform (resize the
short side to ``floor(size / crop_pct)``, center crop, ``/255``, normalize) with PIL and numpy,
returning NHWC-ready ``(H, W, 3)`` float32 arrays.
"""
import functools
import math
from importlib import resources
from typing import Callable, List, Optional, Sequence, Union

import numpy as np
from PIL import Image

from .registry import get_pretrained_cfg

_PIL_INTERPOLATION = {
    "nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
    "box": Image.BOX, "hamming": Image.HAMMING, "lanczos": Image.LANCZOS,
}
DEFAULT_CROP_PCT = 0.875  # timm's default when a config has none


def resolve_data_config(model_or_name, use_test_size: bool = False) -> dict:
    """The eval data config of ``'arch.tag'`` (or of a model from ``create_model``):
    ``input_size`` (C, H, W), ``interpolation``, ``mean``, ``std``, ``crop_pct``, ``crop_mode``.
    ``use_test_size`` takes the tag's ``test_input_size`` / ``test_crop_pct`` where it has them."""
    name = model_or_name if isinstance(model_or_name, str) else model_or_name.variant
    cfg = get_pretrained_cfg(name)
    input_size, crop_pct = cfg["input_size"], cfg.get("crop_pct", DEFAULT_CROP_PCT)
    if use_test_size and "test_input_size" in cfg:
        input_size = cfg["test_input_size"]
        crop_pct = cfg.get("test_crop_pct", crop_pct)
    if not isinstance(model_or_name, str):
        input_size = (model_or_name.in_chans, *input_size[1:])
    return dict(input_size=tuple(input_size), interpolation=cfg["interpolation"], mean=tuple(cfg["mean"]),
                std=tuple(cfg["std"]), crop_pct=crop_pct, crop_mode=cfg.get("crop_mode", "center"))


def create_transform(input_size=(3, 224, 224), interpolation: str = "bilinear",
                     mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225),
                     crop_pct: Optional[float] = None, crop_mode: str = "center", **_) -> Callable:
    """PIL image -> ``(H, W, 3)`` float32, normalized: timm's eval transform (center crop mode)."""
    if crop_mode != "center":
        raise NotImplementedError(f"crop_mode {crop_mode!r}: only 'center' is implemented")
    size = input_size[-2:] if isinstance(input_size, (tuple, list)) else (input_size, input_size)
    crop_pct = crop_pct or DEFAULT_CROP_PCT
    return functools.partial(_eval_transform, size=tuple(size), crop_pct=crop_pct,
                             resample=_PIL_INTERPOLATION[interpolation],
                             mean=np.asarray(mean, np.float32), std=np.asarray(std, np.float32))


def _eval_transform(img: Image.Image, size, crop_pct, resample, mean, std) -> np.ndarray:
    if img.mode != "RGB":
        img = img.convert("RGB")
    th, tw = size
    scale_h, scale_w = math.floor(th / crop_pct), math.floor(tw / crop_pct)
    w, h = img.size
    if scale_h == scale_w:  # torchvision Resize(int): the short side to `scale`, aspect kept
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = scale_h, int(scale_h * long / short)
        nw, nh = (new_short, new_long) if w <= h else (new_long, new_short)
    else:
        nw, nh = scale_w, scale_h
    img = img.resize((nw, nh), resample)
    if nw < tw or nh < th:  # torchvision CenterCrop pads smaller images with zeros
        pad = Image.new("RGB", (max(nw, tw), max(nh, th)))
        pad.paste(img, ((max(nw, tw) - nw) // 2, (max(nh, th) - nh) // 2))
        img, (nw, nh) = pad, pad.size
    top, left = int(round((nh - th) / 2.0)), int(round((nw - tw) / 2.0))
    img = img.crop((left, top, left + tw, top + th))
    x = np.asarray(img, dtype=np.float32) / np.float32(255)
    return (x - mean) / std


@functools.lru_cache(maxsize=None)
def _read_asset(name: str) -> List[str]:
    return resources.files("resnets_jax").joinpath("assets", name).read_text().splitlines()


@functools.lru_cache(maxsize=None)
def imagenet_class_names(num_classes: int = 1000) -> List[str]:
    """Class names for ImageNet-1k (1000) or Google's ImageNet-21k (21843, BiT's in21k tags)."""
    synset_files = {1000: "imagenet_synsets.txt", 21843: "imagenet21k_goog_synsets.txt"}
    if num_classes not in synset_files:
        raise ValueError(f"No class names for {num_classes} classes (known: {sorted(synset_files)})")
    lemmas = dict(line.split("\t", 1) for line in _read_asset("imagenet_synset_to_lemma.txt"))
    return [lemmas[s] for s in _read_asset(synset_files[num_classes])]


def sample_image_path(name: str = "chelsea.png") -> str:
    """A bundled photo (Chelsea the cat, CC0, by Stefan van der Walt; from scikit-image)."""
    return str(resources.files("resnets_jax").joinpath("assets", name))
