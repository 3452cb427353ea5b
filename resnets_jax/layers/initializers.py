"""timm's parameter initializers as Flax initializers that also say what they draw.

Each is a jax initializer ``init(key, shape, dtype) -> array`` (what ``model.init`` calls) and
draws the same distribution with numpy, ``init.draw_numpy(generator, shape, dtype)``: a fresh
model's variables are then drawn without compiling one XLA program per parameter shape
(``convert.random_init``, which calls ``draw_numpy`` on any initializer that has it). Elementwise
i.i.d. draws only: a value's distribution depends on the shape only through the fan.

Fans as jax's ``variance_scaling`` counts them for a kernel whose last two axes are (in, out):
``fan_in = prod(shape[:-1])``, ``fan_out = shape[-1] * prod(shape[:-2])`` (torch's for OIHW).
"""
import dataclasses
import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

FAN_MODES = ("fan_in", "fan_out")


def fan(shape: Sequence[int], mode: str) -> int:
    """``mode`` ('fan_in' or 'fan_out') of a kernel of ``shape`` (last two axes: in, out).
    ``ValueError`` for another mode or a shape of fewer than two axes."""
    if mode not in FAN_MODES or len(shape) < 2:
        raise ValueError(f"fan: expected mode in {FAN_MODES} and a kernel of >= 2 axes, got {mode!r}, {tuple(shape)}")
    return math.prod(shape[:-1]) if mode == "fan_in" else shape[-1] * math.prod(shape[:-2])


@dataclasses.dataclass(frozen=True)
class Normal:
    """N(0, s^2) elementwise: ``s = std``, or ``std / sqrt(fan)`` with ``fan_mode`` set.
    timm's ``kaiming_normal_(mode='fan_out', nonlinearity='relu')`` is ``Normal(sqrt(2), 'fan_out')``;
    its ``normal_(std=0.01)`` head ``Normal(0.01)``."""
    std: float = 1.0
    fan_mode: Optional[str] = None

    def scale(self, shape) -> float:
        return self.std / math.sqrt(fan(shape, self.fan_mode)) if self.fan_mode else self.std

    def __call__(self, key, shape, dtype=jnp.float32):
        return jax.random.normal(key, shape, dtype) * jnp.asarray(self.scale(shape), dtype)

    def draw_numpy(self, gen: np.random.Generator, shape, dtype) -> np.ndarray:
        x = gen.standard_normal(shape, np.float32)
        x *= np.float32(self.scale(shape))
        return x.astype(dtype, copy=False)


@dataclasses.dataclass(frozen=True)
class Uniform:
    """U(-b, b) elementwise: ``b = bound``, or ``bound / sqrt(fan)`` with ``fan_mode`` set.
    torch's default ``nn.Linear`` / ``nn.Conv1d`` init (weight and bias; timm leaves ResNet's
    ``fc`` and ECA's conv at it) is ``Uniform(1 / sqrt(fan_in))``, i.e. ``Uniform(1, 'fan_in')``
    for a weight."""
    bound: float = 1.0
    fan_mode: Optional[str] = None

    def scale(self, shape) -> float:
        return self.bound / math.sqrt(fan(shape, self.fan_mode)) if self.fan_mode else self.bound

    def __call__(self, key, shape, dtype=jnp.float32):
        b = self.scale(shape)
        return jax.random.uniform(key, shape, dtype, -b, b)

    def draw_numpy(self, gen: np.random.Generator, shape, dtype) -> np.ndarray:
        b = np.float32(self.scale(shape))
        x = gen.random(shape, np.float32)
        x *= 2 * b
        x -= b
        return x.astype(dtype, copy=False)


# timm's ResNet / ResNetV2 init of every conv: kaiming_normal_(mode='fan_out', nonlinearity='relu')
kaiming_normal_fan_out = Normal(math.sqrt(2.0), "fan_out")


def torch_default_uniform(fan_in: int) -> Uniform:
    """torch's default init of an ``nn.Linear`` (weight and bias) and of an ``nn.Conv2d``'s bias,
    U(+-1/sqrt(fan_in)), ``fan_in`` = inputs (a conv's: channels per group x kernel area): what
    timm's v1 ResNet init leaves the ``fc`` and the conv biases at (SE's and split attention's
    ``fc1``/``fc2``; its ``_init_weights`` draws only the conv kernels)."""
    return Uniform(1.0 / math.sqrt(fan_in))
