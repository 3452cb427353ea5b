"""PyTorch-exact pooling in NHWC: explicit padding, ``ceil_mode`` and ``count_include_pad``."""
import functools
import math
import operator

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def _out_size(size: int, k: int, s: int, pad: int, ceil_mode: bool) -> int:
    """torch's pooling output size; in ceil mode the last window must start inside the input
    or its left padding."""
    span = size + 2 * pad - k
    out = (math.ceil(span / s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + pad:
        out -= 1
    return out


def _pad_hw(x: jax.Array, pads, value) -> jax.Array:
    """Pad H and W by (low, high) with ``value``; a negative high side crops (floor mode
    drops trailing pixels that no window reaches)."""
    x = jnp.pad(x, ((0, 0), *((lo, max(hi, 0)) for lo, hi in pads), (0, 0)), constant_values=value)
    # the crop as slices on H and W, never x[:, :h, :w]: under a symbolic batch (jax.export) that
    # indexing becomes a gather, which LiteRT cannot convert
    x = lax.slice_in_dim(x, 0, x.shape[1] + min(pads[0][1], 0), axis=1)
    return lax.slice_in_dim(x, 0, x.shape[2] + min(pads[1][1], 0), axis=2)


def _window_pads(x: jax.Array, k: int, s: int, pad: int, ceil_mode: bool):
    """(low, high) padding per spatial dim so that VALID windows give torch's output: the
    symmetric ``pad`` plus the ceil-mode overhang (or minus the pixels floor mode drops)."""
    return [(pad, (_out_size(n, k, s, pad, ceil_mode) - 1) * s + k - n - pad) for n in x.shape[1:3]]


def max_pool2d(x: jax.Array, kernel_size: int, stride: int, padding: int = 0,
               ceil_mode: bool = False) -> jax.Array:
    """``F.max_pool2d``: padding never wins the max (torch pads with -inf)."""
    x = _pad_hw(x, _window_pads(x, kernel_size, stride, padding, ceil_mode), -jnp.inf)
    # scalar init values: JAX recognises the max / add monoids, which it knows how to differentiate
    return lax.reduce_window(x, -np.inf, lax.max, (1, kernel_size, kernel_size, 1), (1, stride, stride, 1), "VALID")


def _window_sum(x: jax.Array, k: int, s: int) -> jax.Array:
    """The sum over each k x k window at stride s of NHWC ``x`` (VALID): k*k strided slices
    added, not a reduce-window, which XLA:CPU (jaxlib 0.10) hands to YNNPACK fused with the
    convolutions around it (a 'd' variant's avg-pool shortcut took in its block's downsample conv
    and main branch, slower on YNNPACK than on XLA's own: resnet50d batch 1 54.9 -> 48.9 ms
    under rj.jit) and runs slower than the slices on its own (resnest101e batch 1 167 -> 149 ms;
    benchmarks/README.md). Slices, never x[:, i::s]: under a symbolic batch (jax.export) that
    indexing is a gather."""
    oh, ow = (x.shape[1] - k) // s + 1, (x.shape[2] - k) // s + 1
    return functools.reduce(operator.add, (
        lax.slice_in_dim(lax.slice_in_dim(x, i, i + (oh - 1) * s + 1, s, axis=1), j, j + (ow - 1) * s + 1, s, axis=2)
        for i in range(k) for j in range(k)))


def avg_pool2d(x: jax.Array, kernel_size: int, stride: int, padding: int = 0,
               ceil_mode: bool = False, count_include_pad: bool = True) -> jax.Array:
    """``F.avg_pool2d``. The divisor counts the explicit padding when ``count_include_pad``,
    and never the ceil-mode overhang, exactly as torch does. bf16 and fp16 inputs are summed in
    fp32 and rounded once."""
    pads = _window_pads(x, kernel_size, stride, padding, ceil_mode)
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    total = _window_sum(_pad_hw(xf, pads, 0), kernel_size, stride)
    # The divisor: a window's count of input pixels (and of explicit padding, if counted).
    ones = jnp.ones((1, *x.shape[1:3], 1), total.dtype)
    if count_include_pad:
        ones = _pad_hw(ones, [(padding, padding)] * 2, 1)
        pads = [(0, hi - padding) for _, hi in pads]
    count = _window_sum(_pad_hw(ones, pads, 0), kernel_size, stride)
    return (total / count).astype(x.dtype)


def pad_same(x: jax.Array, kernel_size: int, stride: int, dilation: int = 1, value: float = 0.) -> jax.Array:
    """TF 'SAME' padding as ``timm.layers.padding.pad_same`` (extra pixel on the high side)."""
    pads = []
    for size in x.shape[1:3]:
        total = max((math.ceil(size / stride) - 1) * stride + (kernel_size - 1) * dilation + 1 - size, 0)
        pads.append((total // 2, total - total // 2))
    return jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=value)


def avg_down_pool(x: jax.Array, stride: int, dilation: int = 1) -> jax.Array:
    """The pool of timm's avg-down shortcut ('D' variants: ``DownsampleAvg`` / ``downsample_avg``):
    a 2x2 average with ceil mode, padding not counted; in a dilated stage, stride 1 over TF-'SAME'
    zero padding, which the average counts (timm's ``AvgPool2dSame``)."""
    if stride == 1 and dilation == 1:
        return x
    if dilation > 1:
        x = pad_same(x, 2, 1)
        stride = 1
    return avg_pool2d(x, 2, stride, ceil_mode=True, count_include_pad=False)


GLOBAL_POOL_TYPES = ("avg", "max", "avgmax", "catavgmax", "")


def global_pool_feat_mult(pool_type: str) -> int:
    return 2 if pool_type == "catavgmax" else 1


def select_global_pool(x: jax.Array, pool_type: str = "avg", keepdims: bool = False) -> jax.Array:
    """timm's ``SelectAdaptivePool2d`` to 1x1: 'avg', 'max', 'avgmax' (their mean),
    'catavgmax' (channels concatenated, avg first), '' (no pooling)."""
    if pool_type == "":
        return x
    if pool_type not in GLOBAL_POOL_TYPES:
        raise ValueError(f"global_pool must be one of {GLOBAL_POOL_TYPES}, got {pool_type!r}")
    avg = jnp.mean(x, axis=(1, 2), keepdims=True)
    mx = jnp.max(x, axis=(1, 2), keepdims=True)
    y = {"avg": lambda: avg, "max": lambda: mx, "avgmax": lambda: 0.5 * (avg + mx),
         "catavgmax": lambda: jnp.concatenate([avg, mx], axis=-1)}[pool_type]()
    return y if keepdims else y.reshape(y.shape[0], y.shape[-1])  # not -1: a batch may be empty
