"""Selective Kernel convolution, timm's ``timm.layers.SelectiveKernel``
(``timm/layers/selective_kernel.py``), in NHWC.

Paper: `Selective Kernel Networks` (https://arxiv.org/abs/1903.06586).

Submodules carry timm's names: the branches ``paths_0``, ``paths_1`` (timm's ``paths.0``,
``paths.1``: ``ConvNormAct`` each, ``conv`` + ``bn``) and ``attn`` (``fc_reduce``, ``bn``,
``fc_select``). timm stacks the branch outputs on a new axis 1, (B, paths, C, H, W); here they
stay a list of NHWC maps and every reduction over that axis is a sum over the list, in order.
"""
import operator
from functools import partial, reduce
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
from flax import linen as nn

from .conv import Conv2d
from .conv_norm_act import ConvNormAct
from .helpers import make_divisible, per_branch_weights
from .norm import BatchNormAct2d, stats_dtype

Dtype = Any

DEFAULT_KERNEL_SIZES = (3, 5)  # timm: one 3x3 and one 5x5 branch (the 5x5 as a dilated 3x3 with keep_3x3)


def sk_kernel_plan(kernel_size: Union[int, Sequence[int], None], dilation: int,
                   keep_3x3: bool) -> List[Tuple[int, int]]:
    """``(kernel_size, dilation)`` per branch, as timm's ``SelectiveKernel.__init__``: an int is
    two branches of that size; with ``keep_3x3`` every branch is a 3x3 whose dilation
    ``dilation * (k - 1) // 2`` gives the receptive field of a k x k.

    Raises ValueError unless every size is odd and at least 3 (timm's ``_kernel_valid``)."""
    sizes = DEFAULT_KERNEL_SIZES if kernel_size is None else kernel_size
    sizes = [sizes] * 2 if isinstance(sizes, int) else list(sizes)
    bad = [k for k in sizes if not (isinstance(k, int) and k >= 3 and k % 2)]
    if bad or not sizes:
        raise ValueError(f"SelectiveKernel kernel_size: expected odd sizes >= 3, got {kernel_size!r}")
    if keep_3x3:
        return [(3, dilation * (k - 1) // 2) for k in sizes]
    return [(k, dilation) for k in sizes]


def sk_attn_channels(out_chs: int, rd_ratio: float = 1. / 16, rd_divisor: int = 8) -> int:
    """timm's attention width: ``make_divisible(out_chs * rd_ratio, divisor=rd_divisor)``
    (``min_value`` = the divisor)."""
    return make_divisible(out_chs * rd_ratio, divisor=rd_divisor)


class SelectiveKernelAttn(nn.Module):
    """timm's ``SelectiveKernelAttn``: the branches' sum, global average pooled, ``fc_reduce``
    (1x1, no bias) -> ``bn`` + ReLU -> ``fc_select`` (1x1, no bias) -> softmax over the
    branches. A list of ``num_paths`` (B, H, W, C) maps -> (B, num_paths, C) weights.

    timm always builds this ``bn`` as a BatchNorm2d; ``norm_layer`` is the model's bound
    BatchNormAct2d partial (its dtype), whose ReLU is timm's ``act``."""

    attn_chs: int
    conv_layer: Callable = Conv2d
    norm_layer: Callable = BatchNormAct2d

    @nn.compact
    def __call__(self, paths: Sequence[jax.Array], train: bool = False) -> jax.Array:
        b, c = paths[0].shape[0], paths[0].shape[-1]  # sizes, never -1: the batch may be empty
        x = reduce(operator.add, paths).mean(axis=(1, 2), keepdims=True)  # (B, 1, 1, C)
        x = self.conv_layer(self.attn_chs, 1, name="fc_reduce")(x)
        x = self.norm_layer(name="bn")(x, train)
        x = self.conv_layer(c * len(paths), 1, name="fc_select")(x)
        # timm views (B, paths * C) as (B, paths, C): path-major, as this reshape reads it. The
        # softmax at least in float32 whatever the compute dtype.
        x = x.reshape(b, len(paths), c).astype(stats_dtype(x.dtype))
        return jax.nn.softmax(x, axis=1).astype(paths[0].dtype)


class SelectiveKernel(nn.Module):
    """timm's ``SelectiveKernel``: ``num_paths`` conv-norm-ReLU branches of different receptive
    fields over the input (or, with ``split_input``, each over its own contiguous slice of the
    input channels), mixed per channel by the softmax weights of ``SelectiveKernelAttn``.

    (B, H, W, C_in) -> (B, H / stride, W / stride, out_chs). Arguments as timm's: ``out_chs``
    (None: C_in), ``kernel_size`` (None: 3 and 5), ``groups`` per branch (capped at
    ``out_chs``), ``rd_ratio`` / ``rd_channels`` / ``rd_divisor`` for the attention width,
    ``keep_3x3``, ``split_input``; ``drop_layer`` (DropBlock2d partial) and ``aa_layer``
    (anti-aliasing) inside each branch as timm's ``ConvNormAct``. Raises ValueError for a kernel
    size that is not odd and >= 3, or with ``split_input`` for C_in not divisible by the number
    of branches (timm asserts both). The bare ``Conv2d`` / ``BatchNormAct2d`` defaults get this
    module's ``dtype``; a model's partials are used as given."""

    out_chs: Optional[int] = None
    kernel_size: Union[int, Tuple[int, ...], None] = None
    stride: int = 1
    dilation: int = 1
    groups: int = 1
    rd_ratio: float = 1. / 16
    rd_channels: Optional[int] = None
    rd_divisor: int = 8
    keep_3x3: bool = True
    split_input: bool = True
    conv_layer: Callable = Conv2d
    norm_layer: Callable = BatchNormAct2d
    aa_layer: Optional[str] = None  # None, 'avg', 'blur' (layers.anti_alias)
    drop_layer: Optional[Callable] = None
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        in_chs = x.shape[-1]
        out_chs = self.out_chs or in_chs
        plan = sk_kernel_plan(self.kernel_size, self.dilation, self.keep_3x3)
        num_paths = len(plan)
        if self.split_input and in_chs % num_paths:
            raise ValueError(f"SelectiveKernel split_input: expected input channels divisible by the "
                             f"{num_paths} branches, got {in_chs}")
        conv, norm = self._bind(self.conv_layer, Conv2d), self._bind(self.norm_layer, BatchNormAct2d)
        inputs = jnp.split(x, num_paths, axis=-1) if self.split_input else [x] * num_paths
        paths = [
            ConvNormAct(out_chs, k, stride=self.stride, dilation=d, groups=min(out_chs, self.groups),
                        conv_layer=conv, norm_layer=norm, drop_layer=self.drop_layer, aa_layer=self.aa_layer,
                        name=f"paths_{i}")(xi, train)
            for i, ((k, d), xi) in enumerate(zip(plan, inputs))]
        attn_chs = self.rd_channels or sk_attn_channels(out_chs, self.rd_ratio, self.rd_divisor)
        attn = SelectiveKernelAttn(attn_chs, conv_layer=conv, norm_layer=norm, name="attn")(paths, train)
        return reduce(operator.add, [p * w for p, w in zip(paths, per_branch_weights(attn))])

    def _bind(self, layer, default):
        if layer is default:
            return partial(layer, dtype=self.dtype, param_dtype=self.param_dtype)
        return layer
