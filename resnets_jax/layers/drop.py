"""Stochastic depth (timm ``DropPath``) and timm's per-block rate schedule."""
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
