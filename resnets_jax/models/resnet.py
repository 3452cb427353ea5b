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

Not supported (no ResNeSt/Res2Net variant uses them): anti-aliasing, ``replace_stem_pool``,
attention layers.
"""
import dataclasses
import math
from functools import partial
from typing import Any, List, Sequence, Tuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from ..layers import BatchNormAct2d, Conv2d, avg_down_pool, drop_block_layers, max_pool2d, select_global_pool
from ._common import Trunk, check_input, stride_plan

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
    conv_layer: ModuleDef
    norm_layer: ModuleDef

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.avg_down:
            x = avg_down_pool(x, self.stride, self.dilation)
            x = self.conv_layer(self.out_chs, 1, name="downsample_1")(x)
            return self.norm_layer(apply_act=False, name="downsample_2")(x, train)
        k = 1 if self.stride == 1 and self.dilation == 1 else self.kernel_size
        d = self.first_dilation if k > 1 else 1
        x = self.conv_layer(self.out_chs, k, stride=self.stride, dilation=d, name="downsample_0")(x)
        return self.norm_layer(apply_act=False, name="downsample_1")(x, train)


def _torch_linear_init(fan_in: int):
    """``nn.Linear``'s default init (timm leaves the ResNet ``fc`` at it): weight and bias
    uniform in +-1/sqrt(fan_in)."""
    bound = 1.0 / math.sqrt(fan_in)
    uniform = lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)  # noqa: E731
    return uniform, uniform


class ResNet(Trunk, nn.Module):
    """timm's ``ResNet`` v1 trunk with the stems and shortcuts its ResNeSt/Res2Net variants use.

    ``block`` is a bottleneck class taking ``(planes, stride, downsample, cardinality,
    base_width, dilation, first_dilation, drop_path_rate, drop_block, zero_init_last, conv_layer, norm_layer,
    **block_args)``, with a
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
    block_args: Tuple[Tuple[str, Any], ...] = ()  # extra block arguments (radix, avd, scale, ...) as
    # (name, value) pairs: a hashable module can be a static argument of jax.jit
    zero_init_last: bool = True  # timm: zero-init each residual branch's last BN scale
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    drop_block_rate: float = 0.0  # DropBlock in stages 3 and 4 (timm's drop_blocks)
    features_only: bool = False
    out_indices: Any = (0, 1, 2, 3, 4)
    grad_checkpointing: bool = False  # recompute each block's activations in the backward pass
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    variant: str = ""  # 'arch.tag' this model was created as (for its pretrained/data config)

    def stage_plan(self):
        """``(planes, stride, dilation, reduction)`` per stage (timm's ``make_blocks``)."""
        return [(planes, *sdr) for planes, sdr in zip(self.channels, stride_plan(len(self.channels), self.output_stride))]

    @property
    def stem_chs(self) -> int:
        return self.stem_width * 2 if "deep" in self.stem_type else 64

    def all_feature_info(self):
        return [dict(num_chs=self.stem_chs, reduction=2, module="act1")] + [
            dict(num_chs=planes * self.block.expansion, reduction=r, module=f"layer{i + 1}")
            for i, (planes, _, _, r) in enumerate(self.stage_plan())]

    def setup(self):
        conv = partial(Conv2d, dtype=self.dtype, param_dtype=self.param_dtype)
        norm = partial(BatchNormAct2d, dtype=self.dtype, param_dtype=self.param_dtype)

        # Stem: a 7x7/2 conv, or the 3-conv 'deep' stem as timm's nn.Sequential (conv 0, bn 1,
        # act 2, conv 3, bn 4, act 5, conv 6): the list gives conv1_0, conv1_1, conv1_3, ...
        inplanes = self.stem_chs
        if "deep" in self.stem_type:
            c0, c1 = self.stem_width, self.stem_width
            if "tiered" in self.stem_type:
                c0 = 3 * (self.stem_width // 4)
            self.conv1 = [conv(c0, 3, stride=2), norm(), None, conv(c1, 3), norm(), None, conv(inplanes, 3)]
        else:
            self.conv1 = conv(inplanes, 7, stride=2)
        self.bn1 = norm()

        # Stages: a block's first 3x3 uses the previous block's dilation (timm's make_blocks).
        block_args = dict(self.block_args)
        expansion = self.block.expansion
        block_cls = nn.remat(self.block, static_argnums=(2,)) if self.grad_checkpointing else self.block
        net_num_blocks, net_block_idx, prev_dilation = sum(self.layers), 0, 1
        plan = self.stage_plan()[:self.num_stages_built]
        drop_blocks = drop_block_layers(self.drop_block_rate)
        for stage_idx, ((planes, stride, dilation, _), num_blocks) in enumerate(zip(plan, self.layers)):
            downsample = None
            if stride != 1 or inplanes != planes * expansion:
                downsample = Shortcut(planes * expansion, stride, dilation, prev_dilation, self.avg_down,
                                      self.down_kernel_size, conv, norm)
            blocks = []
            for block_idx in range(num_blocks):
                # timm's stochastic depth rule: linear in the network-wide block index
                dpr = self.drop_path_rate * net_block_idx / max(net_num_blocks - 1, 1)
                blocks.append(block_cls(
                    planes,
                    stride=stride if block_idx == 0 else 1,
                    downsample=downsample if block_idx == 0 else None,
                    cardinality=self.cardinality,
                    base_width=self.base_width,
                    dilation=dilation,
                    first_dilation=prev_dilation,
                    drop_path_rate=dpr,
                    drop_block=drop_blocks[stage_idx],
                    zero_init_last=self.zero_init_last,
                    conv_layer=conv,
                    norm_layer=norm,
                    **block_args,
                ))
                prev_dilation = dilation
                inplanes = planes * expansion
                net_block_idx += 1
            setattr(self, f"layer{stage_idx + 1}", blocks)  # blocks named layer{i}_{j}, as timm's keys

        if not self.features_only:
            self.head_drop = nn.Dropout(self.drop_rate)  # timm's F.dropout before fc ('dropout' RNG stream)
            if self.num_classes > 0:
                k_init, b_init = _torch_linear_init(self.head_hidden_size)
                self.fc = nn.Dense(self.num_classes, kernel_init=k_init, bias_init=b_init, dtype=self.dtype,
                                   param_dtype=self.param_dtype)

    def stages(self):
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages_built)]

    def forward_intermediates(self, x: jax.Array, train: bool = False, stop: int = 5) -> List[jax.Array]:
        """The first ``stop`` feature maps: the stem's (``act1``, stride 2), then each stage's."""
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
        feats = [x]
        if stop > 1:
            x = max_pool2d(x, 3, 2, padding=1)
            for blocks in self.stages()[:stop - 1]:
                for block in blocks:
                    x = block(x, train)  # train positional: static for nn.remat
                feats.append(x)
        return feats

    def forward_head(self, x: jax.Array, pre_logits: bool = False, train: bool = False) -> jax.Array:
        self._require_head("forward_head")
        x = select_global_pool(x, self.global_pool)
        x = self.head_drop(x, deterministic=not train)
        if pre_logits or self.num_classes <= 0:
            return x
        return self.fc(x)
