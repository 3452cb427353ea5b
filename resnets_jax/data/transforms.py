"""A model's data config and timm's transforms, with PIL and numpy (no torch):
``resolve_data_config`` / ``resolve_model_data_config`` (``timm/data/config.py``) and
``create_transform`` (``timm/data/transforms_factory.py``), with timm's signatures.

``create_transform(**resolve_data_config(name))`` reproduces timm's eval pipeline: the image
converted to RGB as timm's datasets do (``Image.convert('RGB')``; ``'L'`` for one-channel
models, as timm's scripts), the short side resized to ``floor(size / crop_pct)``, a center crop,
``/255`` and normalization. It returns NHWC-ready ``(H, W, C)`` float32 arrays. With
``is_training=True`` it is timm's training transform (``data.augment.TrainTransform``).

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
from typing import Callable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from ..factory import resolve_pretrained_cfg
from ..registry import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from .augment import TrainTransform
from .images import PIL_INTERPOLATION as _PIL_INTERPOLATION
from .images import HighBitDepthWarning, to_model_mode  # noqa: F401  (the names this module always had)

DEFAULT_CROP_PCT = 0.875  # timm's defaults when a config has none (timm.data.resolve_data_config)
DEFAULT_CROP_MODE = "center"
DEFAULT_INTERPOLATION = "bicubic"
DEFAULT_INPUT_SIZE = 224  # timm's when neither args nor a pretrained config give one


def _is_model(obj) -> bool:
    return hasattr(obj, "variant") and hasattr(obj, "in_chans")


def resolve_data_config(args=None, pretrained_cfg: Optional[dict] = None, model=None, use_test_size: bool = False,
                        verbose: bool = False) -> dict:
    """timm's ``resolve_data_config`` (``timm/data/config.py``): ``input_size`` (C, H, W),
    ``interpolation``, ``mean``, ``std``, ``crop_pct``, ``crop_mode``, each from ``args`` (a dict,
    or an ``argparse.Namespace``: ``input_size``, ``img_size``, ``in_chans``/``chans``,
    ``interpolation``, ``mean``, ``std``, ``crop_pct``, ``crop_mode``), else ``pretrained_cfg``,
    else ``model.pretrained_cfg``, else timm's defaults. ``use_test_size``: the config's
    ``test_input_size`` / ``test_crop_pct`` where it has them (each on its own, as timm).

    Ours besides timm's: ``args`` may be a name (``'arch.tag'``, ``'hf-hub:org/repo'``) or a
    model, as in ``resolve_data_config('resnetv2_50.a1h_in1k')``; and a model with other than 3
    input channels (when ``args`` give none) gets ``input_size`` with its channels and a
    3-value mean/std averaged to one (timm keeps 3 channels there, which its transform cannot
    normalize). ``ValueError`` when none of args, pretrained_cfg and model is given (timm asserts).
    ``verbose``: print the result (timm logs it)."""
    if isinstance(args, str):
        pretrained_cfg, args = pretrained_cfg or resolve_pretrained_cfg(args), None
    elif _is_model(args):
        model, args = args, None
    if not (model is not None or args or pretrained_cfg):
        raise ValueError("resolve_data_config: at least one of model, args or pretrained_cfg is required")
    args = dict(vars(args) if hasattr(args, "__dict__") and not isinstance(args, Mapping) else args or {})
    cfg = dict(pretrained_cfg or getattr(model, "pretrained_cfg", None) or {})
    in_chans = args.get("in_chans") if args.get("in_chans") is not None else args.get("chans")
    # ours: without channels in args, a model of other than 3 channels gets sizes with its own
    model_chans = getattr(model, "in_chans", 3) if in_chans is None else None
    in_chans = 3 if in_chans is None else in_chans
    if args.get("input_size") is not None:
        input_size = tuple(args["input_size"])
        if len(input_size) != 3:
            raise ValueError(f"input_size: expected (channels, height, width), got {args['input_size']!r}")
        in_chans, model_chans = input_size[0], None
    elif args.get("img_size") is not None:
        input_size = (in_chans, args["img_size"], args["img_size"])
    else:
        size = cfg.get("test_input_size") if use_test_size and cfg.get("test_input_size") else cfg.get("input_size")
        input_size = tuple(size) if size is not None else (in_chans, DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE)
    if model_chans and model_chans != input_size[0]:
        input_size = (model_chans, *input_size[1:])
    input_size = tuple(input_size)
    crop_pct = args.get("crop_pct") or (use_test_size and cfg.get("test_crop_pct")) or cfg.get("crop_pct") \
        or DEFAULT_CROP_PCT
    out = dict(input_size=input_size,
               interpolation=args.get("interpolation") or cfg.get("interpolation") or DEFAULT_INTERPOLATION,
               mean=_channels("mean", args.get("mean"), cfg.get("mean") or IMAGENET_DEFAULT_MEAN, input_size[0]),
               std=_channels("std", args.get("std"), cfg.get("std") or IMAGENET_DEFAULT_STD, input_size[0]),
               crop_pct=crop_pct, crop_mode=args.get("crop_mode") or cfg.get("crop_mode") or DEFAULT_CROP_MODE)
    if verbose:
        print("Data processing configuration for current model + dataset:\n"
              + "\n".join(f"\t{k}: {v}" for k, v in out.items()))
    return out


def _channels(what: str, given, default, chans: int) -> tuple:
    """timm's mean/std from args (one value repeated per channel, else one per channel); a
    config's 3 values averaged for a model of other than 3 channels."""
    if given is not None:
        given = tuple(given)
        if len(given) == 1:
            return given * chans
        if len(given) != chans:
            raise ValueError(f"{what}: expected 1 or {chans} values (one per input channel), got {len(given)}")
        return given
    default = tuple(default)
    return default if len(default) in (1, chans) else (sum(default) / len(default),)


def resolve_model_data_config(model, args=None, pretrained_cfg: Optional[dict] = None, use_test_size: bool = False,
                              verbose: bool = False) -> dict:
    """timm's ``resolve_model_data_config``: ``resolve_data_config`` with the model first."""
    return resolve_data_config(args=args, pretrained_cfg=pretrained_cfg, model=model, use_test_size=use_test_size,
                               verbose=verbose)


# timm's create_transform arguments for what we do not implement, with the value that leaves it off
_NOT_IMPLEMENTED = dict(auto_augment=None, re_prob=0.0, gaussian_blur_prob=0.0, crop_border_pixels=None,
                        tf_preprocessing=False, use_prefetcher=False, separate=False, naflex=False, patchify=False)


def create_transform(input_size: Union[int, Tuple[int, int], Tuple[int, int, int]] = DEFAULT_INPUT_SIZE,
                     is_training: bool = False, no_aug: bool = False, train_crop_mode: Optional[str] = None,
                     scale: Optional[Tuple[float, float]] = None, ratio: Optional[Tuple[float, float]] = None,
                     hflip: float = 0.5, vflip: float = 0.0, color_jitter=0.4, color_jitter_prob: Optional[float] = None,
                     grayscale_prob: float = 0.0, gaussian_blur_prob: float = 0.0, auto_augment: Optional[str] = None,
                     interpolation: str = "bilinear", mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                     std: Sequence[float] = IMAGENET_DEFAULT_STD, re_prob: float = 0.0, re_mode: str = "const",
                     re_count: int = 1, re_num_splits: int = 0, crop_pct: Optional[float] = None,
                     crop_mode: Optional[str] = None, crop_border_pixels: Optional[int] = None,
                     tf_preprocessing: bool = False, use_prefetcher: bool = False, normalize: bool = True,
                     separate: bool = False, naflex: bool = False, patch_size=16, max_seq_len: int = 576,
                     patchify: bool = False, patchify_channels_last: bool = True, patchify_flatten: bool = True,
                     *, exif_transpose: bool = False) -> Callable:
    """timm's ``create_transform`` (its signature and defaults; an unknown keyword is a
    ``TypeError``): PIL image (any mode) -> ``(H, W, C)`` float32, normalized (uint8 with
    ``normalize=False``). ``C`` is ``input_size[0]``: 3 (RGB) or 1 (grayscale, ``'L'``).

    * eval (default): timm's ``transforms_imagenet_eval``, center crop mode (see the module
      docstring for image modes and EXIF; ``exif_transpose`` is ours).
    * ``is_training=True``: timm's ``transforms_imagenet_train`` (random resized crop with
      ``scale``/``ratio``, default (0.08, 1) and (3/4, 4/3); flips; ``color_jitter``, default 0.4
      for brightness, contrast and saturation; ``grayscale_prob``), a ``data.augment.TrainTransform``:
      ``transform(img, rng)`` draws from a ``random.Random``.
    * ``is_training=True, no_aug=True``: timm's ``transforms_noaug_train``, a resize to ``input_size``.

    ``NotImplementedError`` names a timm option we do not implement (auto-augment, random erasing,
    blur, crop modes other than center, TF preprocessing, prefetcher, NaFlex, patchify)."""
    given = dict(auto_augment=auto_augment, re_prob=re_prob, gaussian_blur_prob=gaussian_blur_prob,
                 crop_border_pixels=crop_border_pixels, tf_preprocessing=tf_preprocessing,
                 use_prefetcher=use_prefetcher, separate=separate, naflex=naflex, patchify=patchify)
    unsupported = [f"{k}={v!r}" for k, v in given.items() if v != _NOT_IMPLEMENTED[k]]
    if train_crop_mode not in (None, "rrc"):
        unsupported.append(f"train_crop_mode={train_crop_mode!r}")
    if (crop_mode or DEFAULT_CROP_MODE) != "center":
        unsupported.append(f"crop_mode={crop_mode!r}")
    if unsupported:
        raise NotImplementedError(f"create_transform: {', '.join(unsupported)} is not implemented (timm's "
                                  "random resized crop, flips, colour jitter and grayscale are; eval crop_mode "
                                  "'center')")
    chans = input_size[0] if isinstance(input_size, (tuple, list)) and len(input_size) == 3 else 3
    if chans not in (1, 3):
        raise ValueError(f"input_size {tuple(input_size)}: images give 1 (L) or 3 (RGB) channels, not {chans}")
    size = tuple(input_size[-2:]) if isinstance(input_size, (tuple, list)) else (input_size, input_size)
    mode = "RGB" if chans == 3 else "L"
    if is_training and not no_aug:
        return TrainTransform(size, scale=scale, ratio=ratio, interpolation=interpolation, hflip=hflip, vflip=vflip,
                              color_jitter=color_jitter, color_jitter_prob=color_jitter_prob,
                              grayscale_prob=grayscale_prob, mean=mean, std=std, normalize=normalize, mode=mode,
                              exif_transpose=exif_transpose)
    interpolation = "bilinear" if interpolation == "random" else interpolation  # timm's, without a random choice
    if interpolation not in _PIL_INTERPOLATION:
        raise ValueError(f"interpolation {interpolation!r}: expected one of {', '.join(_PIL_INTERPOLATION)}")
    if is_training:  # timm's transforms_noaug_train: Resize(img_size) + CenterCrop(img_size)
        crop_pct = 1.0 if isinstance(input_size, int) else None  # an int: the short side; (H, W): exactly
    else:
        crop_pct = crop_pct or DEFAULT_CROP_PCT
    return functools.partial(_eval_transform, size=size, crop_pct=crop_pct,
                             resample=_PIL_INTERPOLATION[interpolation], mode=mode,
                             mean=np.asarray(mean, np.float32), std=np.asarray(std, np.float32),
                             exif_transpose=exif_transpose, normalize=normalize)


def _eval_transform(img: Image.Image, size, crop_pct, resample, mode, mean, std, exif_transpose,
                    normalize=True) -> np.ndarray:
    """timm's eval transform (``crop_pct=None``: ``transforms_noaug_train``'s resize to ``size``)."""
    img = to_model_mode(img, mode, exif_transpose)
    th, tw = size
    if crop_pct is None:
        img, (nw, nh) = img.resize((tw, th), resample), (tw, th)
    else:
        img, (nw, nh) = _resize_for_crop(img, th, tw, crop_pct, resample)
    if nw < tw or nh < th:  # torchvision CenterCrop pads smaller images with zeros
        pad = Image.new(mode, (max(nw, tw), max(nh, th)))
        pad.paste(img, ((max(nw, tw) - nw) // 2, (max(nh, th) - nh) // 2))
        img, (nw, nh) = pad, pad.size
    top, left = int(round((nh - th) / 2.0)), int(round((nw - tw) / 2.0))
    x = np.asarray(img.crop((left, top, left + tw, top + th)))
    x = x[..., None] if x.ndim == 2 else x
    if not normalize:
        return x
    return (x.astype(np.float32) / np.float32(255) - mean) / std


def _resize_for_crop(img: Image.Image, th: int, tw: int, crop_pct: float, resample):
    scale_h, scale_w = math.floor(th / crop_pct), math.floor(tw / crop_pct)
    w, h = img.size
    if scale_h == scale_w:  # torchvision Resize(int): the short side to `scale`, aspect kept
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = scale_h, int(scale_h * long / short)
        nw, nh = (new_short, new_long) if w <= h else (new_long, new_short)
    else:  # timm's ResizeKeepRatio(longest=0): the side closest to its target, aspect kept
        ratio = min(h / scale_h, w / scale_w)
        nw, nh = round(w / ratio), round(h / ratio)
    return img.resize((nw, nh), resample), (nw, nh)
