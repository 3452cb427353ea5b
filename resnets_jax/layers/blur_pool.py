"""Anti-aliased downsampling: timm's ``BlurPool2d`` and ``create_aa`` (``timm/layers/blur_pool.py``), NHWC.

Paper: `Making Convolutional Networks Shift-Invariant Again` (https://arxiv.org/abs/1904.11486).

Neither layer has variables: BlurPool's binomial filter is a constant here, as it is a
non-persistent buffer in timm (checkpoints carry no key for it), and the average pool has none.
"""
from math import comb
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from .conv import get_padding
from .pool import avg_pool2d

BLUR_FILT_SIZE = 3  # timm's BlurPool2d default (binomial [1, 2, 1] / 4 per axis)

# timm's aa_layer spellings (create_aa's string shorthands) -> ours
_AA_NAMES = {"avg": "avg", "avgpool": "avg", "blur": "blur", "blurpool": "blur", "blurpc": "blurpc"}


def normalize_aa_layer(aa_layer: Optional[str]) -> Optional[str]:
    """``None``/``''`` (no anti-aliasing), or one of 'avg' (timm's ``nn.AvgPool2d``), 'blur'
    (``BlurPool2d``, reflect padding) and 'blurpc' (``BlurPool2d`` with zero padding), from any of
    timm's spellings. ``ValueError`` names the choices for anything else."""
    if not aa_layer:
        return None
    key = str(aa_layer).lower().replace("_", "").replace("-", "")
    if key not in _AA_NAMES:
        raise ValueError(f"aa_layer must be one of {sorted(set(_AA_NAMES))} or None, got {aa_layer!r}")
    return _AA_NAMES[key]


def blur_filter(filt_size: int = BLUR_FILT_SIZE) -> np.ndarray:
    """(filt_size, filt_size) binomial filter: outer product of ``C(n-1, k) / 2^(n-1)``, summing to 1."""
    coeffs = np.array([comb(filt_size - 1, k) for k in range(filt_size)], np.float32) / 2 ** (filt_size - 1)
    return coeffs[:, None] * coeffs[None, :]


def blur_pool2d(x: jax.Array, filt_size: int = BLUR_FILT_SIZE, stride: int = 2, pad_mode: str = "reflect") -> jax.Array:
    """timm's ``BlurPool2d.forward`` on (B, H, W, C): pad each side by ``get_padding(filt_size,
    stride)`` (``'reflect'``, or ``'constant'`` zeros), then a depthwise conv with the binomial
    filter at ``stride``. Works at stride 1 too (a blur without downsampling: timm's blocks use it
    where a dilated stage begins)."""
    if filt_size < 2:
        raise ValueError(f"blur_pool2d: filt_size must be > 1, got {filt_size}")
    p = get_padding(filt_size, stride)
    x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode=pad_mode)
    c = x.shape[-1]
    kernel = jnp.broadcast_to(jnp.asarray(blur_filter(filt_size), x.dtype)[:, :, None, None], (filt_size, filt_size, 1, c))
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), "VALID", feature_group_count=c,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def anti_alias(x: jax.Array, aa_layer: Optional[str], stride: int = 2) -> jax.Array:
    """timm's ``create_aa(aa_layer, channels, stride)`` applied to ``x``: 'avg' is
    ``nn.AvgPool2d(stride)`` (kernel = stride, no padding, floor mode: stride 1 is the identity);
    'blur'/'blurpc' is ``BlurPool2d(channels, stride=stride)``; ``None`` the identity."""
    aa = normalize_aa_layer(aa_layer)
    if aa is None:
        return x
    if aa == "avg":
        return x if stride == 1 else avg_pool2d(x, stride, stride)
    return blur_pool2d(x, stride=stride, pad_mode="reflect" if aa == "blur" else "constant")
