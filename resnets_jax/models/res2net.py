"""Res2Net and Res2NeXt (timm ``res2net.py``): the ResNet v1 trunk with a multi-scale bottleneck.

Paper: `Res2Net: A New Multi-scale Backbone Architecture` (https://arxiv.org/abs/1904.01169).
Adapted by timm from the official PyTorch implementation (https://github.com/gasvn/Res2Net/).

Submodules carry timm's attribute names (``layer2_0/convs_1``, ``layer2_0/bns_1``) so that
checkpoint conversion is structural.
"""
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn

from ..layers import DropPath, avg_pool2d, select_relu
from ..registry import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, generate_default_cfgs, register_model
from ._common import merged_args
from .resnet import ResNet, ResNetBlock


class Bottle2neck(ResNetBlock):
    """conv1 (1x1) -> split into ``scale`` chunks of ``width`` -> a 3x3 conv (+bn, ReLU) per
    chunk but the last, each fed the previous output plus its chunk -> concat -> conv3 (1x1)
    -> bn3, + shortcut, ReLU.

    A "first" block (stride > 1 or a downsample; layer1's block 0 too) does not accumulate
    across chunks, and passes its last chunk through ``nn.AvgPool2d(3, stride, padding=1)``
    (padding counted: timm keeps it for the original weights)."""
    expansion: ClassVar[int] = 4

    base_width: int = 26  # timm's Bottle2neck default
    scale: int = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        is_first = self.stride > 1 or self.downsample is not None
        num_scales = max(1, self.scale - 1)
        width = int(math.floor(self.planes * (self.base_width / 64.0))) * self.cardinality
        first_dilation = self.first_dilation or self.dilation
        shortcut = x

        out = self.conv_layer(width * self.scale, 1, name="conv1")(x)
        out = self.norm_layer(name="bn1")(out, train)

        spx = jnp.split(out, list(range(width, out.shape[-1], width)), axis=-1)  # torch.split(out, width, 1)
        spo = []
        sp = spx[0]
        for i in range(num_scales):
            sp = spx[i] if i == 0 or is_first else sp + spx[i]
            sp = self.conv_layer(width, 3, stride=self.stride, padding=first_dilation, dilation=first_dilation,
                           groups=self.cardinality, name=f"convs_{i}")(sp)
            sp = self.norm_layer(name=f"bns_{i}")(sp, train)
            spo.append(sp)
        if self.scale > 1:
            spo.append(avg_pool2d(spx[-1], 3, self.stride, padding=1) if is_first else spx[-1])
        out = jnp.concatenate(spo, axis=-1)
        if self.drop_block is not None:
            out = self.drop_block(name="drop_block")(out, train)

        out = self.conv_layer(self.planes * self.expansion, 1, name="conv3")(out)
        scale_init = nn.initializers.zeros if self.zero_init_last else nn.initializers.ones
        out = self.norm_layer(apply_act=False, scale_init=scale_init, name="bn3")(out, train)
        out = DropPath(self.drop_path_rate, name="drop_path")(out, train)
        if self.downsample is not None:
            shortcut = self.downsample(x, train)
        return select_relu(out + shortcut)


def _cfg(**kwargs):
    return {
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.875, "interpolation": "bilinear", "crop_mode": "center",
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "conv1", "classifier": "fc", "license": "unknown",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "res2net50_26w_4s.in1k": _cfg(hf_hub_id="timm/"),
    "res2net50_48w_2s.in1k": _cfg(hf_hub_id="timm/"),
    "res2net50_14w_8s.in1k": _cfg(hf_hub_id="timm/"),
    "res2net50_26w_6s.in1k": _cfg(hf_hub_id="timm/"),
    "res2net50_26w_8s.in1k": _cfg(hf_hub_id="timm/"),
    "res2net101_26w_4s.in1k": _cfg(hf_hub_id="timm/"),
    "res2next50.in1k": _cfg(hf_hub_id="timm/"),
    "res2net50d.in1k": _cfg(hf_hub_id="timm/", first_conv="conv1.0"),
    "res2net101d.in1k": _cfg(hf_hub_id="timm/", first_conv="conv1.0"),
})


def _res2net(kwargs, layers, base_width=26, scale=4, **model_args):
    # As timm, the caller's keyword arguments override the architecture's (merged_args).
    return ResNet(**merged_args(dict(block=Bottle2neck, layers=layers, base_width=base_width,
                                     block_args=dict(scale=scale), **model_args), kwargs))


@register_model
def res2net50_26w_4s(**kwargs):
    """Res2Net-50 26w4s."""
    return _res2net(kwargs, (3, 4, 6, 3))


@register_model
def res2net101_26w_4s(**kwargs):
    """Res2Net-101 26w4s."""
    return _res2net(kwargs, (3, 4, 23, 3))


@register_model
def res2net50_26w_6s(**kwargs):
    """Res2Net-50 26w6s."""
    return _res2net(kwargs, (3, 4, 6, 3), scale=6)


@register_model
def res2net50_26w_8s(**kwargs):
    """Res2Net-50 26w8s."""
    return _res2net(kwargs, (3, 4, 6, 3), scale=8)


@register_model
def res2net50_48w_2s(**kwargs):
    """Res2Net-50 48w2s."""
    return _res2net(kwargs, (3, 4, 6, 3), base_width=48, scale=2)


@register_model
def res2net50_14w_8s(**kwargs):
    """Res2Net-50 14w8s."""
    return _res2net(kwargs, (3, 4, 6, 3), base_width=14, scale=8)


@register_model
def res2next50(**kwargs):
    """Res2NeXt-50 4s (cardinality 8, base width 4)."""
    return _res2net(kwargs, (3, 4, 6, 3), base_width=4, cardinality=8)


@register_model
def res2net50d(**kwargs):
    """Res2Net-50 'd': deep stem (stem_width 32) and avg-pool shortcuts."""
    return _res2net(kwargs, (3, 4, 6, 3), stem_type="deep", stem_width=32, avg_down=True)


@register_model
def res2net101d(**kwargs):
    """Res2Net-101 'd': deep stem (stem_width 32) and avg-pool shortcuts."""
    return _res2net(kwargs, (3, 4, 23, 3), stem_type="deep", stem_width=32, avg_down=True)
