"""Squeeze-and-Excitation channel attention, timm's ``timm.layers.squeeze_excite.SEModule``, NHWC.

Paper: `Squeeze-and-Excitation Networks` (https://arxiv.org/abs/1709.01507).
Submodules carry timm's names (``fc1``, ``fc2``: 1x1 convs with bias) so the key mapping stays
structural (``layer1.0.se.fc1.weight`` <-> ``layer1_0/se/fc1/kernel``).
"""
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from .conv import Conv2d
from .helpers import make_divisible
from .initializers import torch_default_uniform

Dtype = Any

SE_RD_RATIO = 1.0 / 16  # timm's SEModule default (the SE-Net paper's r=16); resnetrs binds 0.25
SE_RD_DIVISOR = 8       # timm's default: reduced width a multiple of 8


def se_channels(channels: int, rd_ratio: float = SE_RD_RATIO, rd_divisor: int = SE_RD_DIVISOR) -> int:
    """timm's reduced width: ``make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.)``
    (rounded to the nearest multiple of ``rd_divisor``, at least ``rd_divisor``)."""
    return make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.0)


class SEModule(nn.Module):
    """(B, H, W, C) -> (B, H, W, C): ``x * sigmoid(fc2(relu(fc1(mean_hw(x)))))``.

    ``rd_channels`` overrides the width computed from ``rd_ratio``/``rd_divisor``. Mirrors timm's
    ``SEModule`` with its defaults (no norm, no max-pool branch, biases on both convs)."""

    rd_ratio: float = SE_RD_RATIO
    rd_channels: Optional[int] = None
    rd_divisor: int = SE_RD_DIVISOR
    act: Callable = nn.relu
    gate: Callable = nn.sigmoid
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        rd = self.rd_channels or se_channels(c, self.rd_ratio, self.rd_divisor)
        conv = lambda n, fan_in, name: Conv2d(n, 1, use_bias=True, bias_init=torch_default_uniform(fan_in),  # noqa: E731
                                              dtype=self.dtype, param_dtype=self.param_dtype, name=name)
        x_se = jnp.mean(x, axis=(1, 2), keepdims=True)
        x_se = conv(c, rd, "fc2")(self.act(conv(rd, c, "fc1")(x_se)))
        return x * self.gate(x_se).astype(x.dtype)
