"""Pre-activation ResNet v2 (timm ``resnetv2.py``), with BatchNorm, GroupNorm + StdConv (BiT),
EvoNorm-S0 and FRN variants.

Papers: `Identity Mappings in Deep Residual Networks` (https://arxiv.org/abs/1603.05027);
`Big Transfer (BiT): General Visual Representation Learning` (https://arxiv.org/abs/1912.11370);
`Knowledge distillation: A good teacher is patient and consistent` (https://arxiv.org/abs/2106.05237).

Submodules carry timm's attribute names (``stem/conv``, ``stages_2/blocks_5/norm2``, ``norm``,
``head/fc``) so that checkpoint conversion is structural.
"""
from functools import partial
from typing import Any, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from ..layers import (BatchNormAct2d, ClassifierHead, Conv2d, DropPath, EvoNorm2dS0,
                      FilterResponseNormTlu2d, GroupNormAct, StdConv2d, avg_down_pool, drop_path_rates,
                      make_divisible, max_pool2d, select_relu)
from ..registry import IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD, generate_default_cfgs, register_model
from ._common import Trunk, check_input, merged_args, stride_plan

ModuleDef = Any

BIT_STD_CONV_EPS = 1e-8  # BiT's weight standardization eps (timm's StdConv2d default is 1e-6)


class DownsampleConv(nn.Module):
    """1x1 (strided) projection shortcut; pre-activation blocks feed it the pre-activated input."""
    out_chs: int
    stride: int
    conv_layer: ModuleDef

    @nn.compact
    def __call__(self, x, train: bool = False):
        return self.conv_layer(self.out_chs, 1, stride=self.stride, name="conv")(x)


class DownsampleAvg(nn.Module):
    """'D' variants: 2x2 average pool (ceil mode, padding not counted) then 1x1 conv."""
    out_chs: int
    stride: int
    dilation: int
    conv_layer: ModuleDef

    @nn.compact
    def __call__(self, x, train: bool = False):
        return self.conv_layer(self.out_chs, 1, name="conv")(avg_down_pool(x, self.stride, self.dilation))


class PreActBasic(nn.Module):
    """Pre-activation basic block: norm1 -> conv1 (3x3, stride) -> norm2 -> conv2 (3x3)."""
    out_chs: int
    conv_layer: ModuleDef
    norm_layer: ModuleDef
    proj_layer: Optional[ModuleDef] = None
    bottle_ratio: float = 1.0
    stride: int = 1
    dilation: int = 1
    first_dilation: int = 1
    drop_path_rate: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        mid_chs = make_divisible(self.out_chs * self.bottle_ratio)
        x_preact = self.norm_layer(name="norm1")(x, train)
        shortcut = x
        needs_proj = (self.stride != 1 or self.first_dilation != self.dilation or x.shape[-1] != self.out_chs)
        if self.proj_layer is not None and needs_proj:
            shortcut = self.proj_layer(name="downsample")(x_preact, train)
        x = self.conv_layer(mid_chs, 3, stride=self.stride, dilation=self.first_dilation, name="conv1")(x_preact)
        x = self.conv_layer(self.out_chs, 3, dilation=self.dilation, name="conv2")(
            self.norm_layer(name="norm2")(x, train))
        return DropPath(self.drop_path_rate, name="drop_path")(x, train) + shortcut


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck (stride on the 3x3 conv): norm1 -> conv1 (1x1) -> norm2 ->
    conv2 (3x3) -> norm3 -> conv3 (1x1)."""
    out_chs: int
    conv_layer: ModuleDef
    norm_layer: ModuleDef
    proj_layer: Optional[ModuleDef] = None
    bottle_ratio: float = 0.25
    stride: int = 1
    dilation: int = 1
    first_dilation: int = 1
    drop_path_rate: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        mid_chs = make_divisible(self.out_chs * self.bottle_ratio)
        x_preact = self.norm_layer(name="norm1")(x, train)
        shortcut = x
        if self.proj_layer is not None:
            shortcut = self.proj_layer(name="downsample")(x_preact, train)
        x = self.conv_layer(mid_chs, 1, name="conv1")(x_preact)
        x = self.conv_layer(mid_chs, 3, stride=self.stride, dilation=self.first_dilation, name="conv2")(
            self.norm_layer(name="norm2")(x, train))
        x = self.conv_layer(self.out_chs, 1, name="conv3")(self.norm_layer(name="norm3")(x, train))
        return DropPath(self.drop_path_rate, name="drop_path")(x, train) + shortcut


class ResNetStage(nn.Module):
    """``blocks_0 .. blocks_{depth-1}``; only the first block strides and projects."""
    out_chs: int
    stride: int
    dilation: int
    depth: int
    block_fn: ModuleDef
    conv_layer: ModuleDef
    norm_layer: ModuleDef
    bottle_ratio: float = 0.25
    avg_down: bool = False
    block_dpr: Tuple[float, ...] = ()
    grad_checkpointing: bool = False  # recompute each block's activations in the backward pass

    @nn.compact
    def __call__(self, x, train: bool = False):
        first_dilation = 1 if self.dilation in (1, 2) else 2
        if self.avg_down:
            proj = partial(DownsampleAvg, self.out_chs, self.stride, self.dilation, self.conv_layer)
        else:
            proj = partial(DownsampleConv, self.out_chs, self.stride, self.conv_layer)
        block_fn = nn.remat(self.block_fn, static_argnums=(2,)) if self.grad_checkpointing else self.block_fn
        for i in range(self.depth):
            x = block_fn(
                self.out_chs, self.conv_layer, self.norm_layer,
                proj_layer=proj if i == 0 else None,
                bottle_ratio=self.bottle_ratio,
                stride=self.stride if i == 0 else 1,
                dilation=self.dilation,
                first_dilation=first_dilation if i == 0 else self.dilation,
                drop_path_rate=self.block_dpr[i] if self.block_dpr else 0.0,
                name=f"blocks_{i}",
            )(x, train)  # train positional: static for nn.remat
        return x


def is_stem_deep(stem_type: str) -> bool:
    return any(s in stem_type for s in ("deep", "tiered"))


class ResNetV2Stem(nn.Module):
    """7x7/2 conv (or the 'deep'/'tiered' 3x3 stack): timm's stem up to its feature map (the
    stride-2 conv output; the pool follows in ``stem_pool``)."""
    out_chs: int
    stem_type: str
    conv_layer: ModuleDef
    norm_layer: ModuleDef

    @nn.compact
    def __call__(self, x, train: bool = False):
        if is_stem_deep(self.stem_type):
            if "tiered" in self.stem_type:
                chs = (3 * self.out_chs // 8, self.out_chs // 2)  # 'T' resnets
            else:
                chs = (self.out_chs // 2, self.out_chs // 2)  # 'D' resnets
            x = self.conv_layer(chs[0], 3, stride=2, name="conv1")(x)
            x = self.norm_layer(name="norm1")(x, train)
            x = self.conv_layer(chs[1], 3, name="conv2")(x)
            x = self.norm_layer(name="norm2")(x, train)
            return self.conv_layer(self.out_chs, 3, name="conv3")(x)
        return self.conv_layer(self.out_chs, 7, stride=2, name="conv")(x)


def stem_pool(x: jax.Array, stem_type: str) -> jax.Array:
    """The stem's 3x3/2 max pool. BiT's 'fixed' stem zero-pads by 1 and pools unpadded; the
    others pad the pool with -inf (torch's MaxPool2d padding)."""
    if "fixed" in stem_type:
        x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # nn.ConstantPad2d(1, 0.)
        return max_pool2d(x, 3, 2)
    return max_pool2d(x, 3, 2, padding=1)


CONV_TYPES = {"std": StdConv2d, "plain": Conv2d}
# The ReLU after each pre-activation norm is select_relu: XLA:CPU's reduce fusions (the head's pool,
# the avg-pool shortcuts) stop there rather than taking in whole stages (layers/helpers.py).
NORM_LAYERS = {
    "batchnorm": partial(BatchNormAct2d, act=select_relu),
    "groupnorm": partial(GroupNormAct, num_groups=32, act=select_relu),
    "evonorm": EvoNorm2dS0,
    "frn": FilterResponseNormTlu2d,
}


class ResNetV2(Trunk, nn.Module):
    """Pre-activation ResNet v2 (timm's ``ResNetV2`` with ``preact=True``, which every
    registered resnetv2 uses)."""
    layers: Sequence[int]
    channels: Sequence[int] = (256, 512, 1024, 2048)
    num_classes: int = 1000
    in_chans: int = 3
    global_pool: str = "avg"
    output_stride: int = 32
    width_factor: int = 1
    stem_chs: int = 64
    stem_type: str = ""
    avg_down: bool = False
    basic: bool = False
    bottle_ratio: float = 0.25
    norm_layer: str = "groupnorm"
    conv_type: str = "std"  # 'std': StdConv2d (BiT); 'plain': Conv2d (timm's create_conv2d, newer v2s)
    std_conv_eps: float = 1e-6  # timm's StdConv2d default; BiT binds BIT_STD_CONV_EPS
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    features_only: bool = False
    out_indices: Any = (0, 1, 2, 3, 4)
    grad_checkpointing: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    variant: str = ""  # 'arch.tag' this model was created as (for its pretrained/data config)
    # what create_model's pretrained_cfg / pretrained_cfg_overlay changed in its config (registry.cfg_changes)
    pretrained_cfg_overlay: Tuple[Tuple[str, Any], ...] = ()

    def stage_plan(self):
        """``(out_chs, stride, dilation, reduction)`` per stage, as timm's ``ResNetV2``."""
        return [(make_divisible(chs * self.width_factor), *sdr)
                for chs, sdr in zip(self.channels, stride_plan(len(self.channels), self.output_stride))]

    def all_feature_info(self):
        stem = dict(num_chs=make_divisible(self.stem_chs * self.width_factor), reduction=2,
                    module="stem.conv3" if is_stem_deep(self.stem_type) else "stem.conv")
        return [stem] + [dict(num_chs=c, reduction=r, module=f"stages.{i}")
                         for i, (c, _, _, r) in enumerate(self.stage_plan())]

    def setup(self):
        if self.conv_type not in CONV_TYPES:
            raise ValueError(f"conv_type={self.conv_type!r}: expected one of {sorted(CONV_TYPES)}")
        conv = partial(CONV_TYPES[self.conv_type], dtype=self.dtype, param_dtype=self.param_dtype)
        if self.conv_type == "std":
            conv = partial(conv, eps=self.std_conv_eps)
        norm = partial(NORM_LAYERS[self.norm_layer], dtype=self.dtype, param_dtype=self.param_dtype)
        self.stem = ResNetV2Stem(make_divisible(self.stem_chs * self.width_factor), self.stem_type, conv, norm)
        block_fn = PreActBasic if self.basic else PreActBottleneck
        dprs = drop_path_rates(self.drop_path_rate, self.layers)
        self.stages = [
            ResNetStage(chs, stride, dilation, depth, block_fn, conv, norm, bottle_ratio=self.bottle_ratio,
                        avg_down=self.avg_down, block_dpr=dpr, grad_checkpointing=self.grad_checkpointing)
            for (chs, stride, dilation, _), depth, dpr in zip(self.stage_plan(), self.layers, dprs)
        ][:self.num_stages_built]
        if not self.features_only:
            self.norm = norm()
            self.head = ClassifierHead(self.num_classes, self.global_pool, self.drop_rate, use_conv=True,
                                       dtype=self.dtype, param_dtype=self.param_dtype)

    def forward_intermediates(self, x: jax.Array, train: bool = False, stop: int = 5) -> List[jax.Array]:
        """The first ``stop`` feature maps: the stem conv's (stride 2), then each stage's."""
        check_input(x, self.in_chans)
        x = self.stem(x, train)
        feats = [x]
        if stop > 1:
            x = stem_pool(x, self.stem_type)
            for stage in self.stages[:stop - 1]:
                x = stage(x, train)
                feats.append(x)
        return feats

    def final_norm(self, x: jax.Array, train: bool) -> jax.Array:
        return self.norm(x, train)

    def forward_head(self, x: jax.Array, pre_logits: bool = False, train: bool = False) -> jax.Array:
        self._require_head("forward_head")
        return self.head(x, pre_logits=pre_logits, train=train)


def _cfg(**kwargs):
    return {
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.875, "interpolation": "bilinear", "crop_mode": "center",
        "mean": IMAGENET_INCEPTION_MEAN, "std": IMAGENET_INCEPTION_STD,
        "first_conv": "stem.conv", "classifier": "head.fc", "license": "apache-2.0",
        **kwargs,
    }


_ra4 = dict(interpolation="bicubic", crop_pct=0.9, test_input_size=(3, 288, 288), test_crop_pct=1.0)
_a1h = dict(interpolation="bicubic", crop_pct=0.95, test_input_size=(3, 288, 288), test_crop_pct=1.0)
_bit_448 = dict(input_size=(3, 448, 448), pool_size=(14, 14), crop_pct=1.0)

default_cfgs = generate_default_cfgs({
    # Paper: Knowledge distillation: A good teacher is patient and consistent
    "resnetv2_50x1_bit.goog_distilled_in1k": _cfg(hf_hub_id="timm/", interpolation="bicubic"),
    "resnetv2_152x2_bit.goog_teacher_in21k_ft_in1k": _cfg(hf_hub_id="timm/", interpolation="bicubic"),
    "resnetv2_152x2_bit.goog_teacher_in21k_ft_in1k_384": _cfg(
        hf_hub_id="timm/", input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0, interpolation="bicubic"),
    # BiT: pretrained on imagenet21k, finetuned on imagenet1k
    "resnetv2_50x1_bit.goog_in21k_ft_in1k": _cfg(hf_hub_id="timm/", **_bit_448),
    "resnetv2_50x3_bit.goog_in21k_ft_in1k": _cfg(hf_hub_id="timm/", **_bit_448),
    "resnetv2_101x1_bit.goog_in21k_ft_in1k": _cfg(hf_hub_id="timm/", **_bit_448),
    "resnetv2_101x3_bit.goog_in21k_ft_in1k": _cfg(hf_hub_id="timm/", **_bit_448),
    "resnetv2_152x2_bit.goog_in21k_ft_in1k": _cfg(hf_hub_id="timm/", **_bit_448),
    "resnetv2_152x4_bit.goog_in21k_ft_in1k": _cfg(
        hf_hub_id="timm/", input_size=(3, 480, 480), pool_size=(15, 15), crop_pct=1.0),
    # BiT: trained on imagenet-21k
    "resnetv2_50x1_bit.goog_in21k": _cfg(hf_hub_id="timm/", num_classes=21843),
    "resnetv2_50x3_bit.goog_in21k": _cfg(hf_hub_id="timm/", num_classes=21843),
    "resnetv2_101x1_bit.goog_in21k": _cfg(hf_hub_id="timm/", num_classes=21843),
    "resnetv2_101x3_bit.goog_in21k": _cfg(hf_hub_id="timm/", num_classes=21843),
    "resnetv2_152x2_bit.goog_in21k": _cfg(hf_hub_id="timm/", num_classes=21843),
    "resnetv2_152x4_bit.goog_in21k": _cfg(hf_hub_id="timm/", num_classes=21843),
    "resnetv2_18.ra4_e3600_r224_in1k": _cfg(hf_hub_id="timm/", **_ra4),
    "resnetv2_18d.ra4_e3600_r224_in1k": _cfg(hf_hub_id="timm/", first_conv="stem.conv1", **_ra4),
    "resnetv2_34.ra4_e3600_r224_in1k": _cfg(hf_hub_id="timm/", **_ra4),
    "resnetv2_34d.ra4_e3600_r224_in1k": _cfg(hf_hub_id="timm/", first_conv="stem.conv1", **_ra4),
    "resnetv2_34d.ra4_e3600_r384_in1k": _cfg(
        hf_hub_id="timm/", crop_pct=1.0, input_size=(3, 384, 384), pool_size=(12, 12),
        test_input_size=(3, 448, 448), interpolation="bicubic", first_conv="stem.conv1"),
    "resnetv2_50.a1h_in1k": _cfg(hf_hub_id="timm/", **_a1h),
    "resnetv2_50d.untrained": _cfg(interpolation="bicubic", first_conv="stem.conv1"),
    "resnetv2_50t.untrained": _cfg(interpolation="bicubic", first_conv="stem.conv1"),
    "resnetv2_101.a1h_in1k": _cfg(hf_hub_id="timm/", **_a1h),
    "resnetv2_101d.untrained": _cfg(interpolation="bicubic", first_conv="stem.conv1"),
    "resnetv2_152.untrained": _cfg(interpolation="bicubic"),
    "resnetv2_152d.untrained": _cfg(interpolation="bicubic", first_conv="stem.conv1"),
    "resnetv2_50d_gn.ah_in1k": _cfg(hf_hub_id="timm/", first_conv="stem.conv1", **_a1h),
    "resnetv2_50d_evos.ah_in1k": _cfg(hf_hub_id="timm/", first_conv="stem.conv1", **_a1h),
    "resnetv2_50d_frn.untrained": _cfg(interpolation="bicubic", first_conv="stem.conv1"),
})


def _bit(kwargs, layers, width_factor):
    # BiT: StdConv2d (eps 1e-8) + GroupNorm(32), 'fixed' stem padding as in the original TF models.
    # The caller's keyword arguments override the architecture's (merged_args; timm's BiT entry
    # points refuse to, raising TypeError).
    return ResNetV2(**merged_args(dict(layers=layers, width_factor=width_factor, stem_type="fixed",
                                       norm_layer="groupnorm", conv_type="std", std_conv_eps=BIT_STD_CONV_EPS), kwargs))


def _v2(kwargs, layers, norm_layer="batchnorm", **model_args):
    # timm's newer ResNetV2s: plain conv (create_conv2d) with a norm+act layer. As timm, the
    # caller's keyword arguments override the architecture's (merged_args).
    return ResNetV2(**merged_args(dict(layers=layers, norm_layer=norm_layer, conv_type="plain", **model_args), kwargs))


_basic = dict(channels=(64, 128, 256, 512), basic=True, bottle_ratio=1.0)
_d = dict(stem_type="deep", avg_down=True)


@register_model
def resnetv2_50x1_bit(**kwargs): return _bit(kwargs, (3, 4, 6, 3), 1)
@register_model
def resnetv2_50x3_bit(**kwargs): return _bit(kwargs, (3, 4, 6, 3), 3)
@register_model
def resnetv2_101x1_bit(**kwargs): return _bit(kwargs, (3, 4, 23, 3), 1)
@register_model
def resnetv2_101x3_bit(**kwargs): return _bit(kwargs, (3, 4, 23, 3), 3)
@register_model
def resnetv2_152x2_bit(**kwargs): return _bit(kwargs, (3, 8, 36, 3), 2)
@register_model
def resnetv2_152x4_bit(**kwargs): return _bit(kwargs, (3, 8, 36, 3), 4)
@register_model
def resnetv2_18(**kwargs): return _v2(kwargs, (2, 2, 2, 2), **_basic)
@register_model
def resnetv2_18d(**kwargs): return _v2(kwargs, (2, 2, 2, 2), **_basic, **_d)
@register_model
def resnetv2_34(**kwargs): return _v2(kwargs, (3, 4, 6, 3), **_basic)
@register_model
def resnetv2_34d(**kwargs): return _v2(kwargs, (3, 4, 6, 3), **_basic, **_d)
@register_model
def resnetv2_50(**kwargs): return _v2(kwargs, (3, 4, 6, 3))
@register_model
def resnetv2_50d(**kwargs): return _v2(kwargs, (3, 4, 6, 3), **_d)
@register_model
def resnetv2_50t(**kwargs): return _v2(kwargs, (3, 4, 6, 3), stem_type="tiered", avg_down=True)
@register_model
def resnetv2_101(**kwargs): return _v2(kwargs, (3, 4, 23, 3))
@register_model
def resnetv2_101d(**kwargs): return _v2(kwargs, (3, 4, 23, 3), **_d)
@register_model
def resnetv2_152(**kwargs): return _v2(kwargs, (3, 8, 36, 3))
@register_model
def resnetv2_152d(**kwargs): return _v2(kwargs, (3, 8, 36, 3), **_d)
# Experimental norm variants (timm: "may change / be removed")
@register_model
def resnetv2_50d_gn(**kwargs): return _v2(kwargs, (3, 4, 6, 3), norm_layer="groupnorm", **_d)
@register_model
def resnetv2_50d_evos(**kwargs): return _v2(kwargs, (3, 4, 6, 3), norm_layer="evonorm", **_d)
@register_model
def resnetv2_50d_frn(**kwargs): return _v2(kwargs, (3, 4, 6, 3), norm_layer="frn", **_d)
