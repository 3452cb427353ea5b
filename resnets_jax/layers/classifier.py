"""timm's ``ClassifierHead``: global pool, dropout, then a linear or 1x1-conv ``fc``."""
import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from .conv import Conv2d
from .initializers import Normal
from .pool import select_global_pool

Dtype = Any

# timm's ResNetV2 / ResNet init of the classifier: normal(std=0.01), zero bias.
HEAD_INIT_STD = 0.01


class ClassifierHead(nn.Module):
    """``use_conv=True`` keeps the pooled map 1x1 and applies a 1x1 conv (ResNetV2's
    ``head.fc.weight`` is 4-D), flattening only when a pool is used; ``num_classes=0`` is a
    pass-through (pooled embeddings)."""

    num_classes: int
    pool_type: str = "avg"
    drop_rate: float = 0.0
    use_conv: bool = False
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, pre_logits: bool = False, train: bool = False) -> jax.Array:
        x = select_global_pool(x, self.pool_type, keepdims=self.use_conv)
        x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
        flatten = self.use_conv and self.pool_type
        if not pre_logits and self.num_classes > 0:
            init = Normal(HEAD_INIT_STD)
            if self.use_conv:
                fc = Conv2d(self.num_classes, 1, use_bias=True, kernel_init=init,
                            dtype=self.dtype, param_dtype=self.param_dtype, name="fc")
            else:
                fc = nn.Dense(self.num_classes, kernel_init=init, dtype=self.dtype,
                              param_dtype=self.param_dtype, name="fc")
            x = fc(x)
        return x.reshape(x.shape[0], math.prod(x.shape[1:])) if flatten else x  # not -1: batch may be 0
