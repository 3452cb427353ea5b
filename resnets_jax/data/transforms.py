"""Eval preprocessing from a model's pretrained config.

``create_transform(**resolve_data_config(name))`` reproduces timm's eval pipeline with PIL and
numpy (no torch): the image converted to RGB as timm's datasets do (``Image.convert('RGB')``;
``'L'`` for one-channel models, as timm's scripts), the short side resized to
``floor(size / crop_pct)``, a center crop, ``/255`` and normalization. It returns NHWC-ready
``(H, W, C)`` float32 arrays.

What "equal to timm" means for images that are not plain RGB (decided here, tested in
tests/test_data.py against timm's transform applied to what timm's ``ImageDataset`` feeds it):

* Modes: the conversion is PIL's ``convert('RGB')``, exactly as timm: L is replicated, LA and
  RGBA drop their alpha (no compositing onto a background), P goes through its palette, CMYK
  uses PIL's naive inversion. 16-bit images (``I;16``) are *clipped* to 0..255 by PIL, not
  rescaled, so a 16-bit photo becomes mostly white: timm does the same, we keep it for parity
  but warn (``HighBitDepthWarning``) when the values exceed 255. Scale such images to 8 bits
  yourself first.
* EXIF orientation: timm does not apply it (its readers ``Image.open`` the file and use the
  stored pixel grid, as the ImageNet evaluation did), so neither do we by default. A phone
  photo taken upright may then reach the model rotated; ``exif_transpose=True`` (``predict
  --exif-transpose``) applies ``ImageOps.exif_transpose`` first, and then matches timm's
  transform of the transposed image.
"""
import functools
import math
import warnings
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image, ImageOps

from ..factory import resolve_pretrained_cfg
from ..registry import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

_PIL_INTERPOLATION = {
    "nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
    "box": Image.BOX, "hamming": Image.HAMMING, "lanczos": Image.LANCZOS,
}
DEFAULT_CROP_PCT = 0.875  # timm's defaults when a config has none (timm.data.resolve_data_config)
DEFAULT_INTERPOLATION = "bicubic"
_HIGH_BIT_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class HighBitDepthWarning(UserWarning):
    """A 16/32-bit image whose values PIL (and so timm) clips at 255 when converting to RGB."""


def resolve_data_config(model_or_name, use_test_size: bool = False) -> dict:
    """The eval data config of ``'arch.tag'`` / ``'hf-hub:org/repo'`` (or of a model from
    ``create_model``): ``input_size`` (C, H, W), ``interpolation``, ``mean``, ``std``,
    ``crop_pct``, ``crop_mode``, with timm's defaults for what a config leaves out.
    ``use_test_size`` takes the tag's ``test_input_size`` / ``test_crop_pct`` where it has them.
    For a model with other than 3 input channels, ``input_size`` follows it and a 3-value
    mean/std becomes its average, as timm's ``resolve_input_data_config``."""
    name = model_or_name if isinstance(model_or_name, str) else model_or_name.variant
    cfg = resolve_pretrained_cfg(name)
    input_size, crop_pct = cfg.get("input_size", (3, 224, 224)), cfg.get("crop_pct") or DEFAULT_CROP_PCT
    if use_test_size and cfg.get("test_input_size"):
        input_size = cfg["test_input_size"]
        crop_pct = cfg.get("test_crop_pct") or crop_pct
    mean, std = tuple(cfg.get("mean") or IMAGENET_DEFAULT_MEAN), tuple(cfg.get("std") or IMAGENET_DEFAULT_STD)
    if not isinstance(model_or_name, str):
        chans = model_or_name.in_chans
        input_size = (chans, *input_size[1:])
        mean = mean if len(mean) in (1, chans) else (sum(mean) / len(mean),)
        std = std if len(std) in (1, chans) else (sum(std) / len(std),)
    return dict(input_size=tuple(input_size), interpolation=cfg.get("interpolation") or DEFAULT_INTERPOLATION,
                mean=mean, std=std, crop_pct=crop_pct, crop_mode=cfg.get("crop_mode") or "center")


def create_transform(input_size=(3, 224, 224), interpolation: str = "bilinear",
                     mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225),
                     crop_pct: Optional[float] = None, crop_mode: str = "center", exif_transpose: bool = False,
                     **_) -> Callable:
    """PIL image (any mode) -> ``(H, W, C)`` float32, normalized: timm's eval transform (center
    crop mode) of the image as timm's datasets load it (see the module docstring for modes and
    EXIF). ``C`` is ``input_size[0]``: 3 (RGB) or 1 (grayscale, ``'L'``)."""
    if crop_mode != "center":
        raise NotImplementedError(f"crop_mode {crop_mode!r}: only 'center' is implemented")
    chans = input_size[0] if isinstance(input_size, (tuple, list)) and len(input_size) == 3 else 3
    if chans not in (1, 3):
        raise ValueError(f"input_size {tuple(input_size)}: images give 1 (L) or 3 (RGB) channels, not {chans}")
    size = input_size[-2:] if isinstance(input_size, (tuple, list)) else (input_size, input_size)
    crop_pct = crop_pct or DEFAULT_CROP_PCT
    return functools.partial(_eval_transform, size=tuple(size), crop_pct=crop_pct,
                             resample=_PIL_INTERPOLATION[interpolation], mode="RGB" if chans == 3 else "L",
                             mean=np.asarray(mean, np.float32), std=np.asarray(std, np.float32),
                             exif_transpose=exif_transpose)


def to_model_mode(img: Image.Image, mode: str = "RGB", exif_transpose: bool = False) -> Image.Image:
    """The image as timm's ``ImageDataset`` hands it to its transform: ``img.convert(mode)``
    (after ``ImageOps.exif_transpose`` when asked), warning when PIL clips 16/32-bit values."""
    if exif_transpose:
        img = ImageOps.exif_transpose(img)
    if img.mode in _HIGH_BIT_DEPTH_MODES:
        lo, hi = img.getextrema()
        if hi > 255:
            warnings.warn(f"A {img.mode} image with values up to {hi}: converting it to {mode}, PIL (as timm) "
                          "clips every value above 255. Scale it to 8 bits first, e.g. "
                          "Image.fromarray((np.asarray(img) >> 8).astype(np.uint8)) for 16-bit data.",
                          HighBitDepthWarning, stacklevel=3)
    return img if img.mode == mode else img.convert(mode)


def _eval_transform(img: Image.Image, size, crop_pct, resample, mode, mean, std, exif_transpose) -> np.ndarray:
    img = to_model_mode(img, mode, exif_transpose)
    th, tw = size
    scale_h, scale_w = math.floor(th / crop_pct), math.floor(tw / crop_pct)
    w, h = img.size
    if scale_h == scale_w:  # torchvision Resize(int): the short side to `scale`, aspect kept
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = scale_h, int(scale_h * long / short)
        nw, nh = (new_short, new_long) if w <= h else (new_long, new_short)
    else:  # timm's ResizeKeepRatio(longest=0): the side closest to its target, aspect kept
        ratio = min(h / scale_h, w / scale_w)
        nw, nh = round(w / ratio), round(h / ratio)
    img = img.resize((nw, nh), resample)
    if nw < tw or nh < th:  # torchvision CenterCrop pads smaller images with zeros
        pad = Image.new(mode, (max(nw, tw), max(nh, th)))
        pad.paste(img, ((max(nw, tw) - nw) // 2, (max(nh, th) - nh) // 2))
        img, (nw, nh) = pad, pad.size
    top, left = int(round((nh - th) / 2.0)), int(round((nw - tw) / 2.0))
    img = img.crop((left, top, left + tw, top + th))
    x = np.asarray(img, dtype=np.float32) / np.float32(255)
    if x.ndim == 2:
        x = x[..., None]
    return (x - mean) / std
