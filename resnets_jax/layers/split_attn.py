"""Split-Attention conv ("Splat"), timm's ``timm.layers.SplitAttn``, in NHWC.

Paper: `ResNeSt: Split-Attention Networks` (https://arxiv.org/abs/2004.08955).

Submodules carry timm's names (``conv``, ``bn0``, ``fc1``, ``bn1``, ``fc2``). Channel order is
timm's: the grouped conv emits ``radix`` splits of ``out_chs`` channels each (channel
``r * out_chs + c``), and the attention logits are laid out (cardinality, radix, rest) as
``RadixSoftmax`` reads them. NHWC keeps channels last, so the same reshapes apply on the last
axis.
"""
import operator
from functools import partial, reduce
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from .conv import Conv2d
from .helpers import make_divisible, per_branch_weights
from .initializers import torch_default_uniform
from .norm import BatchNormAct2d, stats_dtype

Dtype = Any


def split_attn_channels(in_chs: int, radix: int, rd_ratio: float = 0.25, rd_divisor: int = 8) -> int:
    """timm's attention width: ``make_divisible(in_chs * radix * rd_ratio, divisor=8, min_value=32)``."""
    return make_divisible(in_chs * radix * rd_ratio, divisor=rd_divisor, min_value=32)


def radix_softmax(x: jax.Array, radix: int, cardinality: int) -> jax.Array:
    """timm's ``RadixSoftmax`` on (B, radix * C) logits -> (B, radix, C) weights. radix > 1:
    view as (B, card, radix, C // card), softmax over radix, back to (radix, card, C // card);
    radix 1: a sigmoid gate."""
    b, c = x.shape[0], x.shape[-1] // radix  # sizes, never -1: the batch may be empty
    if radix > 1:
        x = x.reshape(b, cardinality, radix, x.shape[-1] // (cardinality * radix)).swapaxes(1, 2)
        x = jax.nn.softmax(x, axis=1)
    else:
        x = jax.nn.sigmoid(x)
    return x.reshape(b, radix, c)


def _blocks(layer, xs, train):
    """A layer of the whole map applied to its channel blocks ``xs``: concatenated, then split."""
    return jnp.split(layer(jnp.concatenate(xs, axis=-1), train), len(xs), axis=-1)


class SplitAttn(nn.Module):
    """Grouped kxk conv producing ``radix`` splits, attention over the splits from their
    pooled sum (fc1 -> bn1 -> relu -> fc2 -> radix softmax), weighted sum of the splits.

    ``norm_layer`` builds ``bn0`` (with the ReLU, timm's ``act0``) and ``bn1`` (with ``act1``);
    ``None`` leaves both out, as timm's ``norm_layer=None``. The bare ``Conv2d`` /
    ``BatchNormAct2d`` defaults get this module's ``dtype``; partials are used as given. ``conv``
    and ``bn0`` return the radix splits as a list of (N, H, W, out_chs) blocks (what Flax's
    ``capture_intermediates`` records for them); a ``conv_layer`` must take ``parts=`` as
    ``Conv2d`` does."""

    out_chs: int
    kernel_size: int = 3
    stride: int = 1
    padding: Optional[int] = None  # None: kernel_size // 2, as timm
    dilation: int = 1
    groups: int = 1  # cardinality
    radix: int = 2
    rd_ratio: float = 0.25
    rd_channels: Optional[int] = None
    rd_divisor: int = 8
    use_bias: bool = False
    conv_layer: Callable = Conv2d  # a model passes its bound conv/norm partials (dtype, ...)
    norm_layer: Optional[Callable] = BatchNormAct2d
    drop_layer: Optional[Callable] = None  # between bn0 and its ReLU (DropBlock2d, as timm's drop_layer)
    act: Callable = nn.relu
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        in_chs = x.shape[-1]
        radix, card = self.radix, self.groups
        mid_chs = self.out_chs * radix
        if self.rd_channels is None:
            attn_chs = split_attn_channels(in_chs, radix, self.rd_ratio, self.rd_divisor)
        else:
            attn_chs = self.rd_channels * radix
        padding = self.kernel_size // 2 if self.padding is None else self.padding
        conv = self._bind(self.conv_layer, Conv2d)

        # timm views (B, radix * C, H, W) as (B, radix, C, H, W) and sums over radix; here the radix
        # splits are channel blocks, added in order: the same sums (a 5-d reshape and a reduction
        # over it fused far worse on CPU: resnest101e batch 1 under rj.jit 1.5-1.9x end to end).
        # The blocks come as the conv computes them (parts=): where it runs one conv per group,
        # never concatenated only to be sliced again (benchmarks/README.md, issue 23).
        splits = conv(mid_chs, self.kernel_size, stride=self.stride, padding=padding, dilation=self.dilation,
                      groups=card * radix, use_bias=self.use_bias, name="conv")(x, parts=radix)
        splits = self._norm_act(splits, "bn0", train, drop=self.drop_layer)
        b = splits[0].shape[0]
        x_gap = reduce(operator.add, splits)
        x_gap = x_gap.mean(axis=(1, 2), keepdims=True)  # (B, 1, 1, C)
        x_gap = conv(attn_chs, 1, groups=card, use_bias=True, bias_init=torch_default_uniform(x_gap.shape[-1] // card),
                     name="fc1")(x_gap)
        x_gap, = self._norm_act([x_gap], "bn1", train)
        x_attn = conv(mid_chs, 1, groups=card, use_bias=True, bias_init=torch_default_uniform(attn_chs // card),
                      name="fc2")(x_gap)

        # (B, radix, C) weights; the softmax/sigmoid at least in float32 whatever the compute dtype
        attn = radix_softmax(x_attn.reshape(b, x_attn.shape[-1]).astype(stats_dtype(x_attn.dtype)), radix, card)
        attn = attn.astype(splits[0].dtype)  # sizes, never -1 in the reshape: the batch may be empty
        return reduce(operator.add, [xr * w for xr, w in zip(splits, per_branch_weights(attn))])

    def _norm_act(self, xs, name, train, drop=None):
        """xs: channel blocks of one map -> each normalized (as their concatenation), dropped, activated."""
        if self.norm_layer is not None:
            norm = self._bind(self.norm_layer, BatchNormAct2d)(apply_act=False, name=name)
            xs = norm(xs, train) if isinstance(norm, BatchNormAct2d) else _blocks(norm, xs, train)
        if drop is not None:
            xs = _blocks(drop(name="drop"), xs, train)
        return [self.act(x) for x in xs]

    def _bind(self, layer, default):
        if layer is default:
            return partial(layer, dtype=self.dtype, param_dtype=self.param_dtype)
        return layer
