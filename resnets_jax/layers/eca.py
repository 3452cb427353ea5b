"""Efficient Channel Attention, timm's ``timm.layers.eca.EcaModule``, NHWC.

Paper: `ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks`
(https://arxiv.org/abs/1910.03151).

The attention is a 1-d convolution *across channels* of the spatially pooled features: timm's
``nn.Conv1d(1, 1, k)``, whose weight ``conv.weight`` is a 3-d (out=1, in=1, k) tensor. Here the
kernel is Flax's conv1d layout (k, in=1, out=1); ``convert.keys`` transposes 3-d weights both ways.
"""
import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from .initializers import Uniform

Dtype = Any

ECA_GAMMA, ECA_BETA = 2, 1  # the paper's kernel-size mapping k = |log2(C) + beta| / gamma, made odd


def eca_kernel_size(channels: int, gamma: float = ECA_GAMMA, beta: float = ECA_BETA) -> int:
    """timm's adaptive kernel size: ``t = int(|log2(C) + beta| / gamma)``, the next odd number, at least 3."""
    t = int(abs(math.log(channels, 2) + beta) / gamma)
    return max(t if t % 2 else t + 1, 3)


# ``nn.Conv1d``'s default init (timm's ResNet init leaves 1-d convs alone): uniform in
# +-1/sqrt(fan_in), fan_in = k * in_channels of the (k, in, out) kernel
_conv1d_init = Uniform(1.0, "fan_in")


class Conv1d(nn.Module):
    """``torch.nn.Conv1d`` without bias in NWC with a WIO ``kernel``, symmetric zero padding ``(k - 1) // 2``."""

    features: int
    kernel_size: int
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", _conv1d_init, (k, x.shape[-1], self.features), self.param_dtype)
        dtype = self.dtype or x.dtype
        pad = (k - 1) // 2
        return jax.lax.conv_general_dilated(x.astype(dtype), kernel.astype(dtype), (1,), ((pad, pad),),
                                            dimension_numbers=("NWC", "WIO", "NWC"))


class EcaModule(nn.Module):
    """(B, H, W, C) -> (B, H, W, C): ``x * sigmoid(conv1d_k(mean_hw(x)))``, the conv sliding along
    the channel axis with zero padding ``(k - 1) // 2`` and no bias (timm's defaults; the kernel
    size follows from C unless ``kernel_size`` is given and ``adaptive`` is False)."""

    kernel_size: int = 3
    adaptive: bool = True  # timm: the size follows from the channels whenever they are given
    gamma: float = ECA_GAMMA
    beta: float = ECA_BETA
    gate: Callable = nn.sigmoid
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        k = eca_kernel_size(c, self.gamma, self.beta) if self.adaptive else self.kernel_size
        if k % 2 != 1:
            raise ValueError(f"EcaModule: kernel_size must be odd, got {k}")
        y = jnp.mean(x, axis=(1, 2))[:, :, None]  # (B, C, 1): the channels are the 1-d axis
        y = Conv1d(1, k, dtype=self.dtype, param_dtype=self.param_dtype, name="conv")(y)
        # (B, C, 1) -> (B, 1, 1, C) as a reshape, never y[:, None, :, 0] (a gather under jax.export)
        return x * self.gate(y.reshape(y.shape[0], 1, 1, c)).astype(x.dtype)
