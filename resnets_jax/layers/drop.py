"""Stochastic depth (timm ``DropPath``) with timm's per-block rate schedule, and DropBlock."""
from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn


def drop_path_rates(drop_path_rate: float, depths: Sequence[int]) -> list:
    """timm's ``calculate_drop_path_rates(rate, depths, stagewise=True)``: a linear ramp from
    0 to ``rate`` over all blocks, split per stage."""
    ramp = np.linspace(0.0, drop_path_rate, sum(depths), dtype=np.float32).tolist()
    bounds = np.cumsum([0, *depths])
    return [tuple(ramp[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


class DropPath(nn.Module):
    """Zero a sample's residual branch with probability ``rate`` and scale survivors by
    ``1 / (1 - rate)``; uses the ``'dropout'`` RNG stream, identity outside training."""

    rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if not train or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
        return jnp.where(mask, x / keep, jnp.zeros_like(x))


class DropBlock2d(nn.Module):
    """timm's ``DropBlock2d`` (`DropBlock`, https://arxiv.org/abs/1810.12890): in training,
    zero ``block_size`` x ``block_size`` squares (the same for every channel) seeded at rate
    ``gamma``, and rescale by the kept fraction; identity in eval. Uses the ``'dropout'`` RNG."""

    drop_prob: float = 0.1
    block_size: int = 7
    gamma_scale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if not train or not self.drop_prob:
            return x
        b, h, w, _ = x.shape
        kh, kw = min(self.block_size, h), min(self.block_size, w)
        gamma = self.gamma_scale * self.drop_prob * h * w / (kh * kw) / ((h - kh + 1) * (w - kw + 1))
        seeds = jax.random.bernoulli(self.make_rng("dropout"), gamma, (b, h, w, 1)).astype(jnp.float32)
        # the init value float32 as the seeds, also under jax_enable_x64 (a Python 0.0 is float64 there)
        blocks = jax.lax.reduce_window(seeds, np.float32(0), jax.lax.max, (1, kh, kw, 1), (1, 1, 1, 1),
                                       ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
        blocks = jax.lax.slice(blocks, (0, (kh + 1) % 2, (kw + 1) % 2, 0), blocks.shape)  # even block sizes: torch's crop
        keep = 1.0 - blocks
        keep = keep * (keep.size / (keep.sum() + 1e-7))
        return x * jax.lax.stop_gradient(keep).astype(x.dtype)


def drop_block_layers(drop_block_rate: float) -> tuple:
    """timm's ``drop_blocks``: DropBlock in the last two stages of a ResNet (block size 5 with a
    quarter of the rate in stage 3, block size 3 in stage 4)."""
    if not drop_block_rate:
        return (None,) * 4
    return (None, None, partial(DropBlock2d, drop_block_rate, 5, 0.25), partial(DropBlock2d, drop_block_rate, 3, 1.0))
