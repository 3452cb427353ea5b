"""Convolutions with timm's (PyTorch's) explicit symmetric padding.

Flax's ``'SAME'`` pads (0, 1) at stride 2 while PyTorch pads (1, 1): every convolution here
takes an explicit, symmetric padding so that strided layers sample the same pixels as timm.
"""
from functools import partial
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen.dtypes import promote_dtype
from jax.custom_derivatives import SymbolicZero

from .. import xla
from .initializers import kaiming_normal_fan_out  # timm's ResNet init of every conv
from .norm import stats_dtype

Dtype = Any


def get_padding(kernel_size: int, stride: int = 1, dilation: int = 1) -> int:
    """timm's symmetric padding (``timm.layers.padding.get_padding``)."""
    return ((stride - 1) + dilation * (kernel_size - 1)) // 2


def _conv(x: jax.Array, kernel: jax.Array, *, stride: int, pad: int, dilation: int, groups: int = 1,
          off_ynnpack: bool = False) -> jax.Array:
    """x (N, H, W, C) * kernel (kh, kw, C // groups, O) -> (N, H', W', O), zero padding ``pad`` on
    every side. ``off_ynnpack``: the same sums in the forms XLA:CPU's defaults keep off YNNPACK
    (``xla.convs_on_ynnpack``): a 1x1 conv as a 1-d conv over the flattened map, a stride-1 conv
    one output column wider (:func:`_wide_conv`)."""
    k = kernel.shape[0]
    if off_ynnpack and k == 1 and groups == 1 and pad == 0:
        if stride > 1:  # a strided slice, not a gather (jax.export takes it with a symbolic batch)
            x = jax.lax.slice(x, (0, 0, 0, 0), x.shape, (1, stride, stride, 1))
        n, h, w, c = x.shape
        y = jax.lax.conv_general_dilated(x.reshape(n, h * w, c), kernel[0], (1,), ((0, 0),),
                                         dimension_numbers=("NWC", "WIO", "NWC"))
        return y.reshape(n, h, w, kernel.shape[-1])
    if off_ynnpack and k > 1 and stride == 1:
        return _wide_conv(x, kernel, pad, dilation, groups)
    return _plain_conv(x, kernel, stride, pad, dilation, groups)


@partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4, 5, 6))
def _taps_conv(x, kernel, stride, pad, dilation, groups, split):
    """The grouped conv x (N, H, W, G * I) * kernel (kh, kw, I, G * O) -> (N, H', W', G * O) as
    the sum over its kh * kw * I taps of a strided window of one input channel per group,
    broadcast against that tap's (G, O) kernel row (``xla.grouped_conv_as_taps``); summed in
    float32 at least, as a convolution accumulates. Its derivatives are the convolution's (one
    per group where ``split``): as taps, a training step was 6% slower (resnext50_32x4d)."""
    n, h, w, _ = x.shape
    kh, kw, i_per, out = kernel.shape
    acc = stats_dtype(x.dtype)
    ho, wo = ((size + 2 * pad - dilation * (k - 1) - 1) // stride + 1 for size, k in ((h, kh), (w, kw)))
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))).reshape(n, h + 2 * pad, w + 2 * pad, groups, i_per)
    rows = kernel.reshape(kh, kw, i_per, groups, out // groups).astype(acc)
    y = None
    for a in range(kh):
        for b in range(kw):
            start = (0, a * dilation, b * dilation, 0, 0)
            limit = (n, a * dilation + stride * (ho - 1) + 1, b * dilation + stride * (wo - 1) + 1, groups, i_per)
            window = jax.lax.slice(xp, start, limit, (1, stride, stride, 1, 1)).astype(acc)
            for i in range(i_per):
                term = jax.lax.slice_in_dim(window, i, i + 1, axis=4) * rows[a, b, i]  # no gather (jax.export)
                y = term if y is None else y + term
    return y.reshape(n, ho, wo, out).astype(x.dtype)


def _per_group(conv, x, kernel, groups):
    """One ``conv`` per group, as a list: group g reads input channels [g*I, (g+1)*I) and writes
    output channels [g*O, (g+1)*O), as torch's."""
    return [conv(xg, kg) for xg, kg in zip(jnp.split(x, groups, axis=-1), jnp.split(kernel, groups, axis=-1))]


def _grouped_conv(x, kernel, stride, pad, dilation, groups, split):
    """A grouped conv as one ``feature_group_count`` conv, or, ``split``, one conv per group."""
    if not split:
        return _plain_conv(x, kernel, stride, pad, dilation, groups)
    return jnp.concatenate(_per_group(partial(_plain_conv, stride=stride, pad=pad, dilation=dilation, groups=1),
                                      x, kernel, groups), axis=-1)


def _conv_jvp(y, conv, primals, tangents):
    """(y, its tangent) for a form of ``conv`` (bilinear in x and kernel) whose derivatives are
    ``conv``'s; a tangent JAX knows to be zero (symbolic_zeros) costs no conv."""
    (x, kernel), (dx, dkernel) = primals, tangents
    dy = jnp.zeros_like(y)
    if not isinstance(dx, SymbolicZero):
        dy = dy + conv(dx, kernel)
    if not isinstance(dkernel, SymbolicZero):
        dy = dy + conv(x, dkernel)
    return y, dy


def _taps_conv_jvp(stride, pad, dilation, groups, split, primals, tangents):
    return _conv_jvp(_taps_conv(*primals, stride, pad, dilation, groups, split),
                     partial(_grouped_conv, stride=stride, pad=pad, dilation=dilation, groups=groups, split=split),
                     primals, tangents)


_taps_conv.defjvp(_taps_conv_jvp, symbolic_zeros=True)


def _plain_conv(x, kernel, stride, pad, dilation, groups, extra_right=0):
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad + extra_right)),
                                       rhs_dilation=(dilation, dilation), feature_group_count=groups,
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))


@partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def _wide_conv(x, kernel, pad, dilation, groups):
    """The stride-1 conv computed one output column wider (one more column of zero padding on the
    right, that output column sliced off: 1/W more work), which XLA:CPU's defaults do not hand to
    YNNPACK (its output is wider than its input). Its derivatives are the plain conv's: XLA runs
    the kernel gradient of the wide form 40-50x slower (one 3x3 conv, batch 4, AMD EPYC)."""
    y = _plain_conv(x, kernel, 1, pad, dilation, groups, extra_right=1)
    return jax.lax.slice_in_dim(y, 0, y.shape[2] - 1, axis=2)  # a slice, never y[:, :, :-1] (a gather under jax.export)


def _wide_conv_jvp(pad, dilation, groups, primals, tangents):
    return _conv_jvp(_wide_conv(*primals, pad, dilation, groups),
                     partial(_plain_conv, stride=1, pad=pad, dilation=dilation, groups=groups), primals, tangents)


_wide_conv.defjvp(_wide_conv_jvp, symbolic_zeros=True)


class Conv2d(nn.Module):
    """``torch.nn.Conv2d`` in NHWC with an HWIO ``kernel``; grouped convs use
    ``feature_group_count`` (torch's channel blocks are the same, so OIHW->HWIO is enough)."""

    features: int
    kernel_size: int
    stride: int = 1
    dilation: int = 1
    groups: int = 1
    padding: Optional[int] = None  # None: timm's get_padding
    use_bias: bool = False
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable = kaiming_normal_fan_out
    bias_init: Callable = nn.initializers.zeros
    # groups > 1 as one conv per group, concatenated (same kernel, same sums): True/False, or
    # None: as resnets_jax.xla decides for this backend and shape at trace time (split_grouped_conv;
    # grouped_conv_as_taps: the sum of its taps, _taps_conv)
    split_groups: Optional[bool] = None

    def standardize(self, kernel: jax.Array) -> jax.Array:
        return kernel

    @nn.compact
    def __call__(self, x: jax.Array, parts: Optional[int] = None):
        """x (N, H, W, C) -> (N, H', W', features); with ``parts``, a list of that many channel
        blocks of it instead, as a split grouped conv computes them (never concatenated only to
        be sliced again: ``SplitAttn``'s radix splits). Raises ValueError when C does not split
        into ``groups``, or ``groups`` into ``parts``."""
        in_chs = x.shape[-1]
        if in_chs % self.groups:
            raise ValueError(f"{self.name}: {in_chs} input channels do not split into {self.groups} groups")
        k = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (k, k, in_chs // self.groups, self.features),
                            self.param_dtype)
        kernel = self.standardize(kernel)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        pad = get_padding(k, self.stride, self.dilation) if self.padding is None else self.padding
        conv = partial(_conv, stride=self.stride, pad=pad, dilation=self.dilation,
                       off_ynnpack=x.dtype == jnp.float32 and xla.convs_on_ynnpack())
        split = self.split_groups
        taps = split is None and xla.grouped_conv_as_taps(self.groups, in_chs // self.groups)
        if split is None:
            split = xla.split_grouped_conv(x.shape, self.groups, k)
        if parts is not None and (not isinstance(parts, int) or parts < 1 or self.groups % parts):
            raise ValueError(f"{self.name}: parts must be a positive divisor of groups={self.groups}, got {parts!r}")
        if taps:
            ys = [_taps_conv(x, kernel, self.stride, pad, self.dilation, self.groups, split)]
            ys = jnp.split(ys[0], parts, axis=-1) if parts else ys
        elif self.groups > 1 and split:
            ys = _per_group(conv, x, kernel, self.groups)
            per_part = self.groups // (parts or 1)
            ys = [jnp.concatenate(ys[i:i + per_part], axis=-1) for i in range(0, self.groups, per_part)]
        else:
            y = conv(x, kernel, groups=self.groups)
            ys = jnp.split(y, parts, axis=-1) if parts else [y]
        if bias is not None:
            ys = [y + b for y, b in zip(ys, jnp.split(bias, len(ys)))]
        return ys if parts else ys[0]


class StdConv2d(Conv2d):
    """Weight-standardized conv (timm ``StdConv2d``): each output filter is shifted to zero
    mean and scaled by ``1/sqrt(var + eps)`` with the *biased* variance, as timm's
    ``F.batch_norm(training=True)`` over the weight does. BiT uses ``eps=1e-8``."""

    eps: float = 1e-6  # timm's StdConv2d default; BiT models bind 1e-8

    def standardize(self, kernel: jax.Array) -> jax.Array:
        w = kernel.astype(stats_dtype(kernel.dtype))
        mean = jnp.mean(w, axis=(0, 1, 2), keepdims=True)
        var = jnp.mean(jnp.square(w - mean), axis=(0, 1, 2), keepdims=True)
        return ((w - mean) * jax.lax.rsqrt(var + self.eps)).astype(kernel.dtype)
