"""timm's ``resnet.py`` architectures as data: one row per registered name, timm's arguments
(``model_args``) composed from the named options below, and a loop that registers a function
per row (with the row's docstring) as timm's ``@register_model`` functions do.

Papers: ResNet (https://arxiv.org/abs/1512.03385), Bag of Tricks (the b/c/d/s/t stems,
https://arxiv.org/abs/1812.01187), ResNeXt (https://arxiv.org/abs/1611.05431), Wide ResNet
(https://arxiv.org/abs/1605.07146), SE-Net (https://arxiv.org/abs/1709.01507), ECA-Net
(https://arxiv.org/abs/1910.03151), anti-aliasing (https://arxiv.org/abs/1904.11486),
GroupNorm (https://arxiv.org/abs/1803.08494), ResNet-RS (https://arxiv.org/abs/2103.07579).

Not here: ``ecaresnet50d_pruned`` and ``ecaresnet101d_pruned`` (pruned widths, with sknet.py's
models). Keyword arguments override a row's, as in timm (``layers=(1, 1, 1, 1)``, ``aa_layer``...).
"""
from typing import Any, Dict, Tuple

from ..registry import register_model
from ._common import merged_args
from .resnet import ResNet
from .resnet_blocks import BasicBlock, Bottleneck
from .resnet_cfgs import RESNET_CFGS as default_cfgs  # noqa: F401  (register_model reads it)

TIMM_MODULE = "resnet"  # timm registers these in resnet.py (list_models(module="resnet"))

# Depths (blocks per stage)
R10, R26, R50, R101, R152 = (1, 1, 1, 1), (2, 2, 2, 2), (3, 4, 6, 3), (3, 4, 23, 3), (3, 8, 36, 3)
R200, R269 = (3, 24, 36, 3), (3, 30, 48, 8)

# Stems and shortcuts (timm's ResNet docstring): 'c' deep 3x3 stem 32-32-64; 'd' the same + avg-pool
# shortcuts; 's' deep stem 64-64-128; 't' tiered deep stem 24-32-64 + avg-pool shortcuts.
C = dict(stem_width=32, stem_type="deep")
D = dict(C, avg_down=True)
S = dict(stem_width=64, stem_type="deep")
T = dict(stem_width=32, stem_type="deep_tiered", avg_down=True)
# Attention in every block (timm's block_args=dict(attn_layer=...))
SE = dict(block_args=dict(attn_layer="se"))
ECA = dict(block_args=dict(attn_layer="eca"))
# Anti-aliasing (timm's aa_layer=nn.AvgPool2d / BlurPool2d)
AVG, BLUR = dict(aa_layer="avg"), dict(aa_layer="blur")
# ResNet-RS: 'd' stem and shortcuts, a conv in place of the stem max-pool, SE at ratio 1/4
RS = dict(D, replace_stem_pool=True, block_args=dict(attn_layer="se", attn_kwargs=(("rd_ratio", 0.25),)))


def X(cardinality: int, base_width: int) -> dict:
    """ResNeXt's grouped 3x3 (``cardinality`` groups of ``base_width`` channels at planes 64)."""
    return dict(cardinality=cardinality, base_width=base_width)


# name -> (docstring, block, depths, options...)
VARIANTS: Dict[str, Tuple[Any, ...]] = {
    "resnet10t": ("ResNet-10-T.", BasicBlock, R10, T),
    "resnet14t": ("ResNet-14-T.", Bottleneck, R10, T),
    "resnet18": ("ResNet-18.", BasicBlock, R26),
    "resnet18d": ("ResNet-18-D.", BasicBlock, R26, D),
    "resnet34": ("ResNet-34.", BasicBlock, R50),
    "resnet34d": ("ResNet-34-D.", BasicBlock, R50, D),
    "resnet26": ("ResNet-26.", Bottleneck, R26),
    "resnet26t": ("ResNet-26-T.", Bottleneck, R26, T),
    "resnet26d": ("ResNet-26-D.", Bottleneck, R26, D),
    "resnet50": ("ResNet-50.", Bottleneck, R50),
    "resnet50c": ("ResNet-50-C.", Bottleneck, R50, C),
    "resnet50d": ("ResNet-50-D.", Bottleneck, R50, D),
    "resnet50s": ("ResNet-50-S.", Bottleneck, R50, S),
    "resnet50t": ("ResNet-50-T.", Bottleneck, R50, T),
    "resnet101": ("ResNet-101.", Bottleneck, R101),
    "resnet101c": ("ResNet-101-C.", Bottleneck, R101, C),
    "resnet101d": ("ResNet-101-D.", Bottleneck, R101, D),
    "resnet101s": ("ResNet-101-S.", Bottleneck, R101, S),
    "resnet152": ("ResNet-152.", Bottleneck, R152),
    "resnet152c": ("ResNet-152-C.", Bottleneck, R152, C),
    "resnet152d": ("ResNet-152-D.", Bottleneck, R152, D),
    "resnet152s": ("ResNet-152-S.", Bottleneck, R152, S),
    "resnet200": ("ResNet-200.", Bottleneck, R200),
    "resnet200d": ("ResNet-200-D.", Bottleneck, R200, D),
    "wide_resnet50_2": ("Wide ResNet-50-2: twice the bottleneck width (2048-1024-2048 in the last block).",
                        Bottleneck, R50, dict(base_width=128)),
    "wide_resnet101_2": ("Wide ResNet-101-2: twice the bottleneck width.", Bottleneck, R101, dict(base_width=128)),
    "resnet50_gn": ("ResNet-50 with GroupNorm (32 groups) in place of BatchNorm.", Bottleneck, R50,
                    dict(norm_layer="groupnorm")),
    "resnext50_32x4d": ("ResNeXt-50 32x4d.", Bottleneck, R50, X(32, 4)),
    "resnext50d_32x4d": ("ResNeXt-50-D 32x4d: deep stem and avg-pool shortcuts.", Bottleneck, R50, X(32, 4), D),
    "resnext101_32x4d": ("ResNeXt-101 32x4d.", Bottleneck, R101, X(32, 4)),
    "resnext101_32x8d": ("ResNeXt-101 32x8d.", Bottleneck, R101, X(32, 8)),
    "resnext101_32x16d": ("ResNeXt-101 32x16d.", Bottleneck, R101, X(32, 16)),
    "resnext101_32x32d": ("ResNeXt-101 32x32d.", Bottleneck, R101, X(32, 32)),
    "resnext101_64x4d": ("ResNeXt-101 64x4d.", Bottleneck, R101, X(64, 4)),
    "ecaresnet26t": ("ECA-ResNet-26-T (28 layers: tiered 24-32-64 deep stem, ECA).", Bottleneck, R26, T, ECA),
    "ecaresnet50d": ("ResNet-50-D with ECA.", Bottleneck, R50, D, ECA),
    "ecaresnet50t": ("ECA-ResNet-50-T.", Bottleneck, R50, T, ECA),
    "ecaresnetlight": ("ResNet-50-D light with ECA: depths (1, 1, 11, 3), 7x7 stem, avg-pool shortcuts.",
                       Bottleneck, (1, 1, 11, 3), dict(stem_width=32, avg_down=True), ECA),
    "ecaresnet101d": ("ResNet-101-D with ECA.", Bottleneck, R101, D, ECA),
    "ecaresnet200d": ("ResNet-200-D with ECA.", Bottleneck, R200, D, ECA),
    "ecaresnet269d": ("ResNet-269-D with ECA.", Bottleneck, R269, D, ECA),
    "ecaresnext26t_32x4d": ("ECA-ResNeXt-26-T 32x4d.", Bottleneck, R26, X(32, 4), T, ECA),
    "ecaresnext50t_32x4d": ("ECA-ResNeXt-50-T 32x4d.", Bottleneck, R50, X(32, 4), T, ECA),
    "seresnet18": ("SE-ResNet-18.", BasicBlock, R26, SE),
    "seresnet34": ("SE-ResNet-34.", BasicBlock, R50, SE),
    "seresnet50": ("SE-ResNet-50.", Bottleneck, R50, SE),
    "seresnet50t": ("SE-ResNet-50-T.", Bottleneck, R50, T, SE),
    "seresnet101": ("SE-ResNet-101.", Bottleneck, R101, SE),
    "seresnet152": ("SE-ResNet-152.", Bottleneck, R152, SE),
    "seresnet152d": ("SE-ResNet-152-D.", Bottleneck, R152, D, SE),
    "seresnet200d": ("SE-ResNet-200-D.", Bottleneck, R200, D, SE),
    "seresnet269d": ("SE-ResNet-269-D.", Bottleneck, R269, D, SE),
    "seresnext26d_32x4d": ("SE-ResNeXt-26-D 32x4d.", Bottleneck, R26, X(32, 4), D, SE),
    "seresnext26t_32x4d": ("SE-ResNeXt-26-T 32x4d.", Bottleneck, R26, X(32, 4), T, SE),
    "seresnext50_32x4d": ("SE-ResNeXt-50 32x4d.", Bottleneck, R50, X(32, 4), SE),
    "seresnext101_32x4d": ("SE-ResNeXt-101 32x4d.", Bottleneck, R101, X(32, 4), SE),
    "seresnext101_32x8d": ("SE-ResNeXt-101 32x8d.", Bottleneck, R101, X(32, 8), SE),
    "seresnext101d_32x8d": ("SE-ResNeXt-101-D 32x8d.", Bottleneck, R101, X(32, 8), D, SE),
    "seresnext101_64x4d": ("SE-ResNeXt-101 64x4d.", Bottleneck, R101, X(64, 4), SE),
    "senet154": ("SENet-154: deep stem (64-64-128), 3x3 shortcut convs, first 1x1 at half width, SE.",
                 Bottleneck, R152, X(64, 4), dict(stem_type="deep", down_kernel_size=3, block_reduce_first=2), SE),
    "resnetblur18": ("ResNet-18 with blur anti-aliasing.", BasicBlock, R26, BLUR),
    "resnetblur50": ("ResNet-50 with blur anti-aliasing.", Bottleneck, R50, BLUR),
    "resnetblur50d": ("ResNet-50-D with blur anti-aliasing.", Bottleneck, R50, BLUR, D),
    "resnetblur101d": ("ResNet-101-D with blur anti-aliasing.", Bottleneck, R101, BLUR, D),
    "resnetaa34d": ("ResNet-34-D with avg-pool anti-aliasing.", BasicBlock, R50, AVG, D),
    "resnetaa50": ("ResNet-50 with avg-pool anti-aliasing.", Bottleneck, R50, AVG),
    "resnetaa50d": ("ResNet-50-D with avg-pool anti-aliasing.", Bottleneck, R50, AVG, D),
    "resnetaa101d": ("ResNet-101-D with avg-pool anti-aliasing.", Bottleneck, R101, AVG, D),
    "seresnetaa50d": ("SE-ResNet-50-D with avg-pool anti-aliasing.", Bottleneck, R50, AVG, D, SE),
    "seresnextaa101d_32x8d": ("SE-ResNeXt-101-D 32x8d with avg-pool anti-aliasing.",
                              Bottleneck, R101, X(32, 8), D, AVG, SE),
    "seresnextaa201d_32x8d": ("SE-ResNeXt-201-D 32x8d with avg-pool anti-aliasing (deep stem 64-64-128).",
                              Bottleneck, (3, 24, 36, 4), X(32, 8), S, dict(avg_down=True), AVG, SE),
    "resnetrs50": ("ResNet-RS-50.", Bottleneck, R50, RS),
    "resnetrs101": ("ResNet-RS-101.", Bottleneck, R101, RS),
    "resnetrs152": ("ResNet-RS-152.", Bottleneck, R152, RS),
    "resnetrs200": ("ResNet-RS-200.", Bottleneck, R200, RS),
    "resnetrs270": ("ResNet-RS-270.", Bottleneck, (4, 29, 53, 4), RS),
    "resnetrs350": ("ResNet-RS-350.", Bottleneck, (4, 36, 72, 4), RS),
    "resnetrs420": ("ResNet-RS-420.", Bottleneck, (4, 44, 87, 4), RS),
    "test_resnet": ("A tiny ResNet for tests: per-stage blocks (Basic, Basic, Bottleneck, Basic).",
                    (BasicBlock, BasicBlock, Bottleneck, BasicBlock), R10,
                    dict(stem_width=16, stem_type="deep", avg_down=True, channels=(32, 48, 48, 96))),
}


def model_args(name: str) -> dict:
    """The row of ``name`` as timm's ``model_args`` dict (``block``, ``layers``, options)."""
    _, block, layers, *options = VARIANTS[name]
    args = dict(block=block, layers=layers)
    for opt in options:
        args.update(opt)
    return args


def create_resnet(name: str, **kwargs) -> ResNet:
    """The ``ResNet`` of row ``name``, keyword arguments overriding the row's (timm's
    ``dict(model_args, **kwargs)``)."""
    return ResNet(**merged_args(model_args(name), kwargs))


def _entrypoint(name: str, doc: str):
    def fn(**kwargs):
        return create_resnet(name, **kwargs)
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = f"{doc} (timm ``resnet.py``: ``{name}``; keyword arguments override the architecture's.)"
    return fn


for _name, (_doc, *_) in VARIANTS.items():
    globals()[_name] = register_model(_entrypoint(_name, _doc))
