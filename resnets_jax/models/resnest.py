"""ResNeSt (timm ``resnest.py``): the ResNet v1 trunk with a split-attention bottleneck.

Paper: `ResNeSt: Split-Attention Networks` (https://arxiv.org/abs/2004.08955).
Weights: timm's ports from the original PyTorch/GluonCV models (https://github.com/zhanghang1989/ResNeSt).

Submodules carry timm's attribute names (``layer3_12/conv2/fc1``, ``layer1_0/downsample_1``) so
that checkpoint conversion is structural.
"""
from typing import ClassVar

import jax
from flax import linen as nn

from ..layers import DropPath, SplitAttn, avg_pool2d, select_relu
from ..registry import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, generate_default_cfgs, register_model
from ._common import merged_args
from .resnet import ResNet, ResNetBlock


class ResNestBottleneck(ResNetBlock):
    """conv1 (1x1) -> [avd pool] -> conv2 (SplitAttn 3x3, or grouped conv + bn2 when radix 0)
    -> [avd pool] -> conv3 (1x1) -> bn3, + shortcut, ReLU.

    ``avd``: the block's stride moves from the 3x3 conv to a 3x3 average pool (padding counted,
    ``nn.AvgPool2d(3, stride, padding=1)``), before the 3x3 when ``avd_first``."""
    expansion: ClassVar[int] = 4

    radix: int = 1
    avd: bool = False
    avd_first: bool = False
    is_first: bool = False  # timm's make_blocks never sets it: avd applies to strided blocks only

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        group_width = int(self.planes * (self.base_width / 64.0)) * self.cardinality
        first_dilation = self.first_dilation or self.dilation
        stride = self.stride
        avd_stride = 0
        if self.avd and (stride > 1 or self.is_first):
            avd_stride, stride = stride, 1
        shortcut = x

        out = self.conv_layer(group_width, 1, name="conv1")(x)
        out = self.norm_layer(name="bn1")(out, train)
        if avd_stride > 0 and self.avd_first:
            out = avg_pool2d(out, 3, avd_stride, padding=1)
        if self.radix >= 1:
            out = SplitAttn(group_width, 3, stride=stride, padding=first_dilation, dilation=first_dilation,
                            groups=self.cardinality, radix=self.radix, conv_layer=self.conv_layer,
                            norm_layer=self.norm_layer, drop_layer=self.drop_block, name="conv2")(out, train)
        else:
            out = self.conv_layer(group_width, 3, stride=stride, padding=first_dilation, dilation=first_dilation,
                            groups=self.cardinality, name="conv2")(out)
            out = self.norm_layer(apply_act=False, name="bn2")(out, train)
            if self.drop_block is not None:
                out = self.drop_block(name="drop_block")(out, train)
            out = nn.relu(out)
        if avd_stride > 0 and not self.avd_first:
            out = avg_pool2d(out, 3, avd_stride, padding=1)
        out = self.conv_layer(self.planes * self.expansion, 1, name="conv3")(out)
        scale_init = nn.initializers.zeros if self.zero_init_last else nn.initializers.ones
        out = self.norm_layer(apply_act=False, scale_init=scale_init, name="bn3")(out, train)

        if self.downsample is not None:
            # As timm's ResNestBottleneck: drop-path acts on the block *input*, and only where it
            # feeds the downsample shortcut (timm applies it to `x` after taking `shortcut = x`).
            # Kept for parity with timm training; the residual branch itself is never dropped.
            x = DropPath(self.drop_path_rate, name="drop_path")(x, train)
            shortcut = self.downsample(x, train)
        return select_relu(out + shortcut)


def _cfg(**kwargs):
    return {
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.875, "interpolation": "bilinear", "crop_mode": "center",
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "conv1.0", "classifier": "fc", "license": "apache-2.0",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "resnest14d.gluon_in1k": _cfg(hf_hub_id="timm/"),
    "resnest26d.gluon_in1k": _cfg(hf_hub_id="timm/"),
    "resnest50d.in1k": _cfg(hf_hub_id="timm/"),
    "resnest101e.in1k": _cfg(hf_hub_id="timm/", input_size=(3, 256, 256), pool_size=(8, 8)),
    "resnest200e.in1k": _cfg(
        hf_hub_id="timm/", input_size=(3, 320, 320), pool_size=(10, 10), crop_pct=0.909, interpolation="bicubic"),
    "resnest269e.in1k": _cfg(
        hf_hub_id="timm/", input_size=(3, 416, 416), pool_size=(13, 13), crop_pct=0.928, interpolation="bicubic"),
    "resnest50d_4s2x40d.in1k": _cfg(hf_hub_id="timm/", interpolation="bicubic"),
    "resnest50d_1s4x24d.in1k": _cfg(hf_hub_id="timm/", interpolation="bicubic"),
})


def _resnest(kwargs, layers, stem_width=32, base_width=64, cardinality=1, radix=2, avd_first=False):
    # Every ResNeSt: deep stem, avg-pool shortcuts ('d'/'e' in the names: stem_width 32/64), avd.
    # As timm, the caller's keyword arguments override the architecture's (merged_args).
    return ResNet(**merged_args(dict(
        block=ResNestBottleneck, layers=layers, stem_type="deep", stem_width=stem_width, avg_down=True,
        base_width=base_width, cardinality=cardinality,
        block_args=dict(radix=radix, avd=True, avd_first=avd_first)), kwargs))


@register_model
def resnest14d(**kwargs):
    """ResNeSt-14d (weights ported from GluonCV)."""
    return _resnest(kwargs, (1, 1, 1, 1))


@register_model
def resnest26d(**kwargs):
    """ResNeSt-26d (weights ported from GluonCV)."""
    return _resnest(kwargs, (2, 2, 2, 2))


@register_model
def resnest50d(**kwargs):
    """ResNeSt-50d: the paper's ResNeSt-50 (deep stem, stem_width 32, avg in downsample)."""
    return _resnest(kwargs, (3, 4, 6, 3))


@register_model
def resnest101e(**kwargs):
    """ResNeSt-101e: the paper's ResNeSt-101 ('e': deep stem, stem_width 64, avg in downsample)."""
    return _resnest(kwargs, (3, 4, 23, 3), stem_width=64)


@register_model
def resnest200e(**kwargs):
    """ResNeSt-200e: the paper's ResNeSt-200."""
    return _resnest(kwargs, (3, 24, 36, 3), stem_width=64)


@register_model
def resnest269e(**kwargs):
    """ResNeSt-269e: the paper's ResNeSt-269."""
    return _resnest(kwargs, (3, 30, 48, 8), stem_width=64)


@register_model
def resnest50d_4s2x40d(**kwargs):
    """ResNeSt-50 4s2x40d (radix 4, cardinality 2, width 40; https://github.com/zhanghang1989/ResNeSt/blob/master/ablation.md)."""
    return _resnest(kwargs, (3, 4, 6, 3), base_width=40, cardinality=2, radix=4, avd_first=True)


@register_model
def resnest50d_1s4x24d(**kwargs):
    """ResNeSt-50 1s4x24d (radix 1 = sigmoid gate, cardinality 4, width 24)."""
    return _resnest(kwargs, (3, 4, 6, 3), base_width=24, cardinality=4, radix=1, avd_first=True)
