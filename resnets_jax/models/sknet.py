"""Selective Kernel Networks (timm ``sknet.py``): the ResNet v1 trunk with Selective Kernel blocks.

Paper: `Selective Kernel Networks` (https://arxiv.org/abs/1903.06586). timm's variants (Ross
Wightman's) mostly split the input channels across the branches (``split_input``) to keep the
parameter count down; ``skresnext50_32x4d`` is the paper's SKNet-50.

Submodules carry timm's attribute names (``layer2_0/conv1/paths_1/bn``, ``.../attn/fc_select``)
so that checkpoint conversion is structural.
"""
import math
from typing import Any, ClassVar, Tuple

import jax
from flax import linen as nn

from ..layers import ConvNormAct, SelectiveKernel
from ..registry import register_model
from ._common import merged_args
from .resnet import ResNet
from .resnet_blocks import _ResidualBlock
from .resnet_cfgs import SKNET_CFGS as default_cfgs  # noqa: F401  (register_model reads it)

SkKwargs = Tuple[Tuple[str, Any], ...]  # timm's sk_kwargs dict as (name, value) pairs: hashable


class _SelectiveKernelBlock(_ResidualBlock):
    """The trunk's block interface plus timm's ``reduce_first``, ``attn_layer`` and ``aa_layer``
    (``resnet_blocks._ResidualBlock``, whose tail they share: attention ``se``, drop path on the
    residual branch, shortcut, add, ReLU) and ``sk_kwargs`` for the SelectiveKernel conv."""
    sk_kwargs: SkKwargs = ()

    def _sk(self, name: str, out_chs: int, groups: int = 1) -> SelectiveKernel:
        return SelectiveKernel(out_chs, stride=self.stride, dilation=self.first_dilation or self.dilation,
                               groups=groups, conv_layer=self.conv_layer, norm_layer=self.norm_layer,
                               aa_layer=self.aa_layer, drop_layer=self.drop_block, name=name, **dict(self.sk_kwargs))

    def _last(self, name: str, out_chs: int, kernel_size: int, dilation: int = 1) -> ConvNormAct:
        # timm's zero_init_last(): the residual branch's last norm scale starts at zero
        scale_init = nn.initializers.zeros if self.zero_init_last else nn.initializers.ones
        return ConvNormAct(out_chs, kernel_size, dilation=dilation, apply_act=False, conv_layer=self.conv_layer,
                           norm_layer=self.norm_layer, scale_init=scale_init, name=name)


class SelectiveKernelBasic(_SelectiveKernelBlock):
    """timm's ``SelectiveKernelBasic``: conv1 (SelectiveKernel 3x3, carries the stride) ->
    conv2 (3x3 ConvNormAct, no act) [-> se] [-> drop path], + shortcut, ReLU.
    (B, H, W, C) -> (B, H / stride, W / stride, planes). Raises ValueError for
    ``cardinality != 1`` or ``base_width != 64`` (timm asserts both)."""
    expansion: ClassVar[int] = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        self.check_basic_width()
        out = self._sk("conv1", self.planes // self.reduce_first)(x, train)
        out = self._last("conv2", self.planes * self.expansion, 3, self.dilation)(out, train)
        return self.residual(out, x, train)


class SelectiveKernelBottleneck(_SelectiveKernelBlock):
    """timm's ``SelectiveKernelBottleneck``: conv1 (1x1 ConvNormAct) -> conv2 (SelectiveKernel,
    ``cardinality`` groups per branch, carries the stride) -> conv3 (1x1 ConvNormAct, no act)
    [-> se] [-> drop path], + shortcut, ReLU. (B, H, W, C) -> (B, H / stride, W / stride, 4 * planes)."""
    expansion: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        width = int(math.floor(self.planes * (self.base_width / 64)) * self.cardinality)
        out = ConvNormAct(width // self.reduce_first, 1, conv_layer=self.conv_layer, norm_layer=self.norm_layer,
                          name="conv1")(x, train)
        out = self._sk("conv2", width, groups=self.cardinality)(out, train)
        out = self._last("conv3", self.planes * self.expansion, 1)(out, train)
        return self.residual(out, x, train)


def _skresnet(kwargs, block, layers, sk_kwargs, **model_args):
    # timm: block_args=dict(sk_kwargs=...), zero_init_last=False for every SK model. As timm, the
    # caller's keyword arguments override the architecture's (merged_args).
    return ResNet(**merged_args(dict(block=block, layers=layers, block_args=dict(sk_kwargs=sk_kwargs),
                                     zero_init_last=False, **model_args), kwargs))


# timm's sk_kwargs per model
_SK_BASIC = dict(rd_ratio=1 / 8, rd_divisor=16, split_input=True)
_SK_BOTTLENECK = dict(split_input=True)


@register_model
def skresnet18(**kwargs):
    """SK-ResNet-18: the branches split the input channels (timm's variant, fewer parameters)."""
    return _skresnet(kwargs, SelectiveKernelBasic, (2, 2, 2, 2), _SK_BASIC)


@register_model
def skresnet34(**kwargs):
    """SK-ResNet-34: the branches split the input channels (timm's variant, fewer parameters)."""
    return _skresnet(kwargs, SelectiveKernelBasic, (3, 4, 6, 3), _SK_BASIC)


@register_model
def skresnet50(**kwargs):
    """SK-ResNet-50: the branches split the input channels (timm's variant; untrained)."""
    return _skresnet(kwargs, SelectiveKernelBottleneck, (3, 4, 6, 3), _SK_BOTTLENECK)


@register_model
def skresnet50d(**kwargs):
    """SK-ResNet-50-D: deep stem (stem_width 32) and avg-pool shortcuts (untrained)."""
    return _skresnet(kwargs, SelectiveKernelBottleneck, (3, 4, 6, 3), _SK_BOTTLENECK, stem_width=32, stem_type="deep",
                     avg_down=True)


@register_model
def skresnext50_32x4d(**kwargs):
    """SK-ResNeXt-50 32x4d: the paper's SKNet-50 (grouped branches over the whole input)."""
    return _skresnet(kwargs, SelectiveKernelBottleneck, (3, 4, 6, 3),
                     dict(rd_ratio=1 / 16, rd_divisor=32, split_input=False), cardinality=32, base_width=4)
