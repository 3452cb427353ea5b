"""timm's norm(+act) layers with timm's constants, NHWC.

Every layer takes ``train`` at call time and ``apply_act`` at construction, like timm's
``*Act`` layers: BatchNormAct2d and GroupNormAct apply ``act`` after the norm; EvoNorm2dS0 and
FilterResponseNormTlu2d carry their own non-linearity. Statistics are computed in float32
whatever the compute dtype (float64 in a float64 model: ``stats_dtype``).
"""
import itertools
from functools import partial
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

Dtype = Any

TORCH_BN_MOMENTUM = 0.1  # torch's momentum weighs the *new* batch statistic (Flax's 0.9 is 1 - this)
TORCH_NORM_EPS = 1e-5    # torch BatchNorm2d / GroupNorm default (Flax's GroupNorm default is 1e-6)


def stats_dtype(dtype) -> Dtype:
    """Statistics at least in float32: float32 for bf16/fp16/fp32 compute, float64 for float64
    (a float64 model checks gradients against torch's float64 without float32 rounding)."""
    return jnp.promote_types(dtype, jnp.float32)


def _affine(x, scale, bias, dtype):
    dtype = dtype or x.dtype
    return x.astype(dtype) * scale.astype(dtype) + bias.astype(dtype)


def _corrected_mean(x: jax.Array, axis) -> jax.Array:
    """Mean over ``axis`` with one correcting pass, ``m + mean(x - m)``: a one-pass float32 sum
    rounds on the scale of the mean, and BatchNorm's output then carries it on every element
    (1.7x torch's rounding with channel means ~10x the spread; corrected, 1.0x; issue 20)."""
    mean = jnp.mean(x, axis=axis)
    return mean + jnp.mean(x - mean, axis=axis)


class BatchNormAct2d(nn.Module):
    """``torch.nn.BatchNorm2d`` (+ act). Running statistics live in ``batch_stats`` as ``mean``,
    ``var`` and ``num_batches_tracked``; in training the running variance is updated with the
    *unbiased* batch variance, as torch does, while the output uses the biased one."""

    apply_act: bool = True
    act: Callable = nn.relu
    momentum: float = TORCH_BN_MOMENTUM
    epsilon: float = TORCH_NORM_EPS
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32
    scale_init: Callable = nn.initializers.ones  # zeros: timm's zero_init_last on a residual's last norm

    @nn.compact
    def __call__(self, x, train: bool = False):
        """x (N, H, W, C) -> the same shape; or a list of channel blocks of one map (the same
        statistics as their concatenation's, per channel) -> a list of the normalized blocks."""
        as_blocks = isinstance(x, (list, tuple))
        blocks = list(x) if as_blocks else [x]
        if not blocks or any(b.shape[:-1] != blocks[0].shape[:-1] for b in blocks):
            raise ValueError(f"{self.name}: expected channel blocks of one (N, H, W, C) map, got shapes "
                             f"{[b.shape for b in blocks]}")
        sizes = [b.shape[-1] for b in blocks]
        c = sum(sizes)
        scale = self.param("scale", self.scale_init, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
        count = self.variable("batch_stats", "num_batches_tracked", jnp.zeros, (), jnp.int32)
        xfs = [b.astype(stats_dtype(b.dtype)) for b in blocks]
        per_block = partial(jnp.split, indices_or_sections=list(itertools.accumulate(sizes[:-1])))
        if train:
            means = [_corrected_mean(xf, (0, 1, 2)) for xf in xfs]
            mean = jnp.concatenate(means)
            var = jnp.concatenate([jnp.mean(jnp.square(xf - m), axis=(0, 1, 2)) for xf, m in zip(xfs, means)])
            if not self.is_initializing():
                # n / (n - 1) as array arithmetic, never a Python comparison: under jax.export the
                # batch, hence n, is symbolic (max(n - 1, 1) asks 'b - 1 < 1' at trace time)
                n = jnp.asarray(xfs[0].size // sizes[0], jnp.float32)
                m = self.momentum
                ra_mean.value = (1 - m) * ra_mean.value + m * mean
                ra_var.value = (1 - m) * ra_var.value + m * var * (n / jnp.maximum(n - 1, 1))
                count.value = count.value + 1
        else:
            mean, var = ra_mean.value, ra_var.value
        mul = scale.astype(xfs[0].dtype) * jax.lax.rsqrt(var + self.epsilon)
        ys = [_affine(xf - m, s, b.astype(xf.dtype), self.dtype or x0.dtype)
              for xf, x0, m, s, b in zip(xfs, blocks, per_block(mean), per_block(mul), per_block(bias))]
        ys = [self.act(y) for y in ys] if self.apply_act else ys
        return ys if as_blocks else ys[0]


def _group_mean(xg: jax.Array) -> jax.Array:
    """Mean of (B, H, W, G, C/G) over each sample's group, (B, 1, 1, G, 1): over the map per
    channel first (as BatchNorm's statistics), then over a group's channels. XLA:CPU's one
    reduction over axes (1, 2, 4) rounds 2-6x as much as torch's GroupNorm statistics (issue 20,
    docs/exactness.md); in two stages, as little."""
    return jnp.mean(jnp.mean(xg, axis=(1, 2), keepdims=True), axis=4, keepdims=True)


class GroupNormAct(nn.Module):
    """``timm.layers.GroupNormAct``: GroupNorm over ``num_groups`` channel blocks (+ act)."""

    num_groups: int = 32
    apply_act: bool = True
    act: Callable = nn.relu
    epsilon: float = TORCH_NORM_EPS
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32
    scale_init: Callable = nn.initializers.ones  # zeros: timm's zero_init_last on a residual's last norm

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        b, h, w, c = x.shape
        scale = self.param("scale", self.scale_init, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        xg = x.astype(stats_dtype(x.dtype)).reshape(b, h, w, self.num_groups, c // self.num_groups)
        mean = _group_mean(xg)
        var = _group_mean(jnp.square(xg - mean))
        xn = ((xg - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(b, h, w, c)
        y = _affine(xn, scale, bias, self.dtype or x.dtype)
        return self.act(y) if self.apply_act else y


class EvoNorm2dS0(nn.Module):
    """``timm.layers.EvoNorm2dS0``: ``x * sigmoid(v * x) / group_std(x)`` then affine, with
    the biased group variance and ``eps`` inside the square root."""

    groups: int = 32
    apply_act: bool = True
    epsilon: float = TORCH_NORM_EPS
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        b, h, w, c = x.shape
        dtype = self.dtype or x.dtype
        scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        x = x.astype(dtype)
        if self.apply_act:
            v = self.param("v", nn.initializers.ones, (c,), self.param_dtype).astype(dtype)
            xg = x.astype(stats_dtype(x.dtype)).reshape(b, h, w, self.groups, c // self.groups)
            var = _group_mean(jnp.square(xg - _group_mean(xg)))
            std = jnp.broadcast_to(jnp.sqrt(var + self.epsilon), xg.shape).reshape(b, h, w, c)
            x = x * nn.sigmoid(x * v) / std.astype(dtype)
        return _affine(x, scale, bias, dtype)


class FilterResponseNormTlu2d(nn.Module):
    """``timm.layers.FilterResponseNormTlu2d``: ``x / sqrt(mean_hw(x^2) + eps)``, affine, then
    the thresholded linear unit ``max(x, tau)``."""

    apply_act: bool = True
    epsilon: float = TORCH_NORM_EPS
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c = x.shape[-1]
        dtype = self.dtype or x.dtype
        scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        xf = x.astype(stats_dtype(x.dtype))
        inv_rms = jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=(1, 2), keepdims=True) + self.epsilon)
        y = _affine(x.astype(dtype) * inv_rms.astype(dtype), scale, bias, dtype)
        if self.apply_act:
            tau = self.param("tau", nn.initializers.zeros, (c,), self.param_dtype)
            y = jnp.maximum(y, tau.astype(dtype))
        return y
