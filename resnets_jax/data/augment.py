"""timm's training transform with PIL and numpy (no torch): ``transforms_imagenet_train`` of
``timm/data/transforms_factory.py`` without auto-augment, random erasing or blur.

``RandomResizedCropAndInterpolation`` (timm's ``get_params``, the same draws from a
``random.Random`` as timm's from the ``random`` module), horizontal / vertical flip,
torchvision's ``ColorJitter`` on the PIL image (``ImageEnhance`` brightness, contrast, colour in
a random order, hue through HSV: the operations torchvision runs on PIL images), random
grayscale, ``/255`` and normalization. Every random choice of one image is drawn first
(``TrainTransform.draw`` -> ``TrainParams``), then applied (``TrainTransform.apply``), so a
test can hold the geometry and the colour operations against torchvision's with the same
parameters. timm draws the flips and the jitter from torch's generator, which we do not have:
the distributions are timm's, the draws are ours.
"""
import math
import random
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageEnhance

from .images import PIL_INTERPOLATION as _PIL_INTERPOLATION, to_model_mode

RRC_SCALE = (0.08, 1.0)  # timm's default crop area range (fraction of the image)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)  # timm's default crop aspect ratio range
RRC_ATTEMPTS = 10  # tries before the centre-crop fallback, as timm / torchvision
RANDOM_INTERPOLATIONS = ("bilinear", "bicubic")  # timm's 'random' interpolation picks one per image
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")  # torchvision's ColorJitter fn_idx order


class TrainParams(NamedTuple):
    """The random choices for one image: crop box, interpolation, flips, jitter, grayscale."""
    top: int
    left: int
    height: int
    width: int
    interpolation: str
    hflip: bool
    vflip: bool
    jitter_order: Tuple[int, ...]                # indices into JITTER_OPS, () for no jitter
    jitter_factors: Tuple[Optional[float], ...]  # brightness, contrast, saturation, hue (None: off)
    grayscale: bool


def rrc_params(rng: random.Random, width: int, height: int, scale: Sequence[float] = RRC_SCALE,
               ratio: Sequence[float] = RRC_RATIO) -> Tuple[int, int, int, int]:
    """timm's ``RandomResizedCropAndInterpolation.get_params`` (the same draws from ``rng`` as
    timm's from the ``random`` module): ``(top, left, height, width)`` of the crop."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(RRC_ATTEMPTS):
        target_area = rng.uniform(*scale) * area
        aspect_ratio = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if w <= width and h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height  # fallback: a centre crop within the ratio range
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def jitter_ranges(color_jitter) -> Tuple[Optional[Tuple[float, float]], ...]:
    """timm's ``color_jitter`` (a number: brightness, contrast and saturation, no hue; or 3 or 4
    numbers / ``(min, max)`` pairs) -> torchvision's ``ColorJitter`` ranges, None where off."""
    if color_jitter is None:
        return (None,) * 4
    values = (float(color_jitter),) * 3 if isinstance(color_jitter, (int, float)) else tuple(color_jitter)
    if len(values) not in (3, 4):
        raise ValueError(f"color_jitter: expected a number or 3 or 4 values (brightness, contrast, saturation[, hue]),"
                         f" got {color_jitter!r}")
    out = []
    for name, v in zip(JITTER_OPS, values + (None,) * (4 - len(values))):
        center, bound = (0.0, 0.5) if name == "hue" else (1.0, math.inf)
        if v is None:
            out.append(None)
            continue
        if isinstance(v, (int, float)):
            if v < 0:
                raise ValueError(f"color_jitter {name}: expected a non-negative value, got {v}")
            lo, hi = center - v, center + v
            lo = max(lo, 0.0) if name != "hue" else lo
        else:
            lo, hi = map(float, v)
        if name == "hue" and not -bound <= lo <= hi <= bound:
            raise ValueError(f"color_jitter hue: expected a range within [-0.5, 0.5], got ({lo}, {hi})")
        out.append(None if lo == hi == center else (lo, hi))
    return tuple(out)


def color_jitter(img: Image.Image, order: Sequence[int], factors: Sequence[Optional[float]]) -> Image.Image:
    """torchvision's ``ColorJitter`` on a PIL image with its draws given: the operations of
    ``JITTER_OPS`` in ``order``, each with its factor (None: skipped), as
    ``torchvision.transforms._functional_pil`` runs them."""
    for i in order:
        f = factors[i]
        if f is None:
            continue
        if i == 0:
            img = ImageEnhance.Brightness(img).enhance(f)
        elif i == 1:
            img = ImageEnhance.Contrast(img).enhance(f)
        elif i == 2:
            img = ImageEnhance.Color(img).enhance(f)
        elif img.mode not in ("L", "1", "I", "F"):  # hue: shift H in HSV, wrapping as uint8 (torchvision)
            h, s, v = img.convert("HSV").split()
            h = np.asarray(h, np.uint8) + np.array(np.int32(f * 255)).astype(np.uint8)
            img = Image.merge("HSV", (Image.fromarray(h, "L"), s, v)).convert(img.mode)
    return img


class TrainTransform:
    """PIL image -> ``(H, W, C)`` float32 normalized (uint8 with ``normalize=False``): timm's
    training transform (see the module docstring), what ``create_transform(**cfg,
    is_training=True)`` returns. ``transform(img, rng)`` draws from ``rng`` (a
    ``random.Random``: seed it for a reproducible result); without it, from the ``random``
    module (``random.seed`` seeds it, as timm's crops)."""

    def __init__(self, size: Tuple[int, int], scale: Optional[Sequence[float]] = None,
                 ratio: Optional[Sequence[float]] = None, interpolation: str = "random", hflip: float = 0.5,
                 vflip: float = 0.0, color_jitter: Union[float, Sequence, None] = 0.4,
                 color_jitter_prob: Optional[float] = None, grayscale_prob: float = 0.0,
                 mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225),
                 normalize: bool = True, mode: str = "RGB", exif_transpose: bool = False):
        if interpolation != "random" and interpolation not in _PIL_INTERPOLATION:
            raise ValueError(f"interpolation {interpolation!r}: expected 'random' or one of "
                             f"{', '.join(_PIL_INTERPOLATION)}")
        self.size, self.interpolation = tuple(size), interpolation
        self.scale, self.ratio = tuple(scale or RRC_SCALE), tuple(ratio or RRC_RATIO)
        self.hflip, self.vflip, self.grayscale_prob = hflip, vflip, grayscale_prob
        self.jitter, self.jitter_prob = jitter_ranges(color_jitter), color_jitter_prob
        self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        self.normalize, self.mode, self.exif_transpose = normalize, mode, exif_transpose

    def draw(self, width: int, height: int, rng=random) -> TrainParams:
        """The random choices for an image of ``width`` x ``height``, in a fixed order: crop,
        interpolation, flips, jitter (order, then factors as torchvision's ``get_params``), grayscale."""
        top, left, h, w = rrc_params(rng, width, height, self.scale, self.ratio)
        interp = rng.choice(RANDOM_INTERPOLATIONS) if self.interpolation == "random" else self.interpolation
        hflip = rng.random() < self.hflip
        vflip = self.vflip > 0 and rng.random() < self.vflip
        order, factors = (), (None,) * 4
        if any(self.jitter) and (self.jitter_prob is None or rng.random() < self.jitter_prob):
            order = tuple(rng.sample(range(len(JITTER_OPS)), len(JITTER_OPS)))
            factors = tuple(None if r is None else rng.uniform(*r) for r in self.jitter)
        gray = self.grayscale_prob > 0 and rng.random() < self.grayscale_prob
        return TrainParams(top, left, h, w, interp, hflip, vflip, order, factors, gray)

    def apply(self, img: Image.Image, p: TrainParams) -> np.ndarray:
        """``img`` (already in the model's mode) through the choices ``p``."""
        img = img.crop((p.left, p.top, p.left + p.width, p.top + p.height))
        img = img.resize((self.size[1], self.size[0]), _PIL_INTERPOLATION[p.interpolation])
        if p.hflip:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if p.vflip:
            img = img.transpose(Image.FLIP_TOP_BOTTOM)
        img = color_jitter(img, p.jitter_order, p.jitter_factors)
        if p.grayscale and img.mode == "RGB":  # torchvision's rgb_to_grayscale, 3 channels out
            img = img.convert("L").convert("RGB")
        x = np.asarray(img)
        x = x[..., None] if x.ndim == 2 else x
        if not self.normalize:
            return x
        return (x.astype(np.float32) / np.float32(255) - self.mean) / self.std

    def __call__(self, img: Image.Image, rng=None) -> np.ndarray:
        img = to_model_mode(img, self.mode, self.exif_transpose)
        return self.apply(img, self.draw(*img.size, rng=random if rng is None else rng))
