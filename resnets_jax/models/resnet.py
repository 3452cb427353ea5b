"""timm's ResNet v1 trunk (``timm/models/resnet.py``), as ResNeSt and Res2Net use it.

Papers: `Deep Residual Learning for Image Recognition` (https://arxiv.org/abs/1512.03385);
`Bag of Tricks for Image Classification with Convolutional Neural Networks` (the 'c/d/e' deep
stems and avg-pool shortcuts, https://arxiv.org/abs/1812.01187).

One trunk, many blocks: a family passes its bottleneck class (and the block's own arguments);
stem, stages, shortcuts, dilation and head are written once here. Submodules carry timm's
attribute names so checkpoint conversion is structural: ``conv1`` (or the deep stem's
``conv1_0 .. conv1_6``, timm's ``nn.Sequential`` indices), ``bn1``, ``layer3_12`` (timm's
``layer3.12``: the blocks are direct children of the model), ``layer1_0/downsample_1`` and
``fc``.

Not supported: ``drop_block_rate`` (timm's DropBlock, a training-only regulariser none of these
families enables by default), anti-aliasing, ``replace_stem_pool``, attention layers.
"""
import dataclasses
import math
from functools import partial
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from ..layers import BatchNormAct2d, Conv2d, avg_pool2d, global_pool_feat_mult, max_pool2d, select_global_pool
from ._common import check_input

ModuleDef = Any


@dataclasses.dataclass(frozen=True)
class Shortcut:
    """timm's ``downsample_conv`` / ``downsample_avg``, built inside the calling block so its
    layers are the block's ``downsample_{i}`` with timm's ``nn.Sequential`` indices:
    conv ``(conv 0, bn 1)``; avg ``(pool 0, conv 1, bn 2)`` (the pool has no parameters)."""
    out_chs: int
    stride: int
    dilation: int
    first_dilation: int
    avg_down: bool
    kernel_size: int
    conv: ModuleDef
    norm: ModuleDef

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.avg_down:
            avg_stride = self.stride if self.dilation == 1 else 1
            if self.stride > 1 or self.dilation > 1:
                if avg_stride == 1:
                    # timm's AvgPool2dSame(2, 1): TF-'SAME' zero padding (high side), counted
                    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
                    x = avg_pool2d(x, 2, 1, ceil_mode=True, count_include_pad=False)
                else:
                    x = avg_pool2d(x, 2, avg_stride, ceil_mode=True, count_include_pad=False)
            x = self.conv(self.out_chs, 1, name="downsample_1")(x)
            return self.norm(apply_act=False, name="downsample_2")(x, train)
        k = 1 if self.stride == 1 and self.dilation == 1 else self.kernel_size
        d = self.first_dilation if k > 1 else 1
        x = self.conv(self.out_chs, k, stride=self.stride, dilation=d, name="downsample_0")(x)
        return self.norm(apply_act=False, name="downsample_1")(x, train)


def _torch_linear_init(fan_in: int):
    """``nn.Linear``'s default init (timm leaves the ResNet ``fc`` at it): weight and bias
    uniform in +-1/sqrt(fan_in)."""
    bound = 1.0 / math.sqrt(fan_in)
    uniform = lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)  # noqa: E731
    return uniform, uniform


class ResNet(nn.Module):
    """timm's ``ResNet`` v1 trunk with the stems and shortcuts its ResNeSt/Res2Net variants use.

    ``block`` is a bottleneck class taking ``(planes, stride, downsample, cardinality,
    base_width, dilation, first_dilation, drop_path_rate, conv, norm, **block_args)``, with a
    class attribute ``expansion``."""
    block: ModuleDef
    layers: Sequence[int]
    num_classes: int = 1000
    in_chans: int = 3
    output_stride: int = 32
    global_pool: str = "avg"
    cardinality: int = 1
    base_width: int = 64
    stem_width: int = 64
    stem_type: str = ""  # '', 'deep', 'deep_tiered'
    down_kernel_size: int = 1
    avg_down: bool = False
    channels: Sequence[int] = (64, 128, 256, 512)
    block_args: Any = None  # dict of extra block arguments (radix, avd, scale, ...)
    zero_init_last: bool = True  # timm: zero-init each residual branch's last BN scale
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    variant: str = ""  # 'arch.tag' this model was created as (for its pretrained/data config)

    def setup(self):
        if self.output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {self.output_stride}")
        conv = partial(Conv2d, dtype=self.dtype, param_dtype=self.param_dtype)
        norm = partial(BatchNormAct2d, dtype=self.dtype, param_dtype=self.param_dtype)

        # Stem: a 7x7/2 conv, or the 3-conv 'deep' stem as timm's nn.Sequential (conv 0, bn 1,
        # act 2, conv 3, bn 4, act 5, conv 6): the list gives conv1_0, conv1_1, conv1_3, ...
        deep = "deep" in self.stem_type
        inplanes = self.stem_width * 2 if deep else 64
        if deep:
            c0, c1 = self.stem_width, self.stem_width
            if "tiered" in self.stem_type:
                c0 = 3 * (self.stem_width // 4)
            self.conv1 = [conv(c0, 3, stride=2), norm(), None, conv(c1, 3), norm(), None, conv(inplanes, 3)]
        else:
            self.conv1 = conv(inplanes, 7, stride=2)
        self.bn1 = norm()

        # Stages, as timm's make_blocks: once the stride reaches output_stride, later stages
        # dilate instead; a block's first 3x3 uses the previous block's dilation.
        block_args = dict(self.block_args or {})
        expansion = self.block.expansion
        net_num_blocks, net_block_idx = sum(self.layers), 0
        net_stride, dilation, prev_dilation = 4, 1, 1
        for stage_idx, (planes, num_blocks) in enumerate(zip(self.channels, self.layers)):
            stride = 1 if stage_idx == 0 else 2
            if net_stride >= self.output_stride:
                dilation *= stride
                stride = 1
            else:
                net_stride *= stride
            downsample = None
            if stride != 1 or inplanes != planes * expansion:
                downsample = Shortcut(planes * expansion, stride, dilation, prev_dilation, self.avg_down,
                                      self.down_kernel_size, conv, norm)
            blocks = []
            for block_idx in range(num_blocks):
                # timm's stochastic depth rule: linear in the network-wide block index
                dpr = self.drop_path_rate * net_block_idx / max(net_num_blocks - 1, 1)
                blocks.append(self.block(
                    planes,
                    stride=stride if block_idx == 0 else 1,
                    downsample=downsample if block_idx == 0 else None,
                    cardinality=self.cardinality,
                    base_width=self.base_width,
                    dilation=dilation,
                    first_dilation=prev_dilation,
                    drop_path_rate=dpr,
                    zero_init_last=self.zero_init_last,
                    conv=conv,
                    norm=norm,
                    **block_args,
                ))
                prev_dilation = dilation
                inplanes = planes * expansion
                net_block_idx += 1
            setattr(self, f"layer{stage_idx + 1}", blocks)  # blocks named layer{i}_{j}, as timm's keys

        self.head_drop = nn.Dropout(self.drop_rate)  # timm's F.dropout before fc ('dropout' RNG stream)
        if self.num_classes > 0:
            k_init, b_init = _torch_linear_init(self.head_hidden_size)
            self.fc = nn.Dense(self.num_classes, kernel_init=k_init, bias_init=b_init, dtype=self.dtype,
                               param_dtype=self.param_dtype)

    @property
    def num_features(self) -> int:
        return self.channels[-1] * self.block.expansion

    @property
    def head_hidden_size(self) -> int:
        return self.num_features * global_pool_feat_mult(self.global_pool)

    def stages(self):
        return [getattr(self, f"layer{i + 1}") for i in range(len(self.layers))]

    def forward_features(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_input(x, self.in_chans)
        if isinstance(self.conv1, (list, tuple)):
            for layer in self.conv1:
                if isinstance(layer, BatchNormAct2d):
                    x = layer(x, train)  # bn + ReLU (timm's separate act module)
                elif layer is not None:
                    x = layer(x)
        else:
            x = self.conv1(x)
        x = self.bn1(x, train)
        x = max_pool2d(x, 3, 2, padding=1)
        for blocks in self.stages():
            for block in blocks:
                x = block(x, train)
        return x

    def forward_head(self, x: jax.Array, pre_logits: bool = False, train: bool = False) -> jax.Array:
        x = select_global_pool(x, self.global_pool)
        x = self.head_drop(x, deterministic=not train)
        if pre_logits or self.num_classes <= 0:
            return x
        return self.fc(x)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.forward_head(self.forward_features(x, train), train=train)

