"""timm's pruned ECA-ResNets (``ecaresnet50d_pruned``, ``ecaresnet101d_pruned`` in ``resnet.py``):
the ECA-ResNet-D on the v1 trunk, every block at its own widths, which are data.

timm builds ``ecaresnet50d_pruned`` / ``ecaresnet101d_pruned`` by building the unpruned model and
then rebuilding every conv, norm and the classifier at the widths listed in
``timm/models/_pruned/<name>.txt`` (``adapt_model_from_file``, ``timm/models/_prune.py``; the
pruning: `Knapsack Pruning with Inner Distillation`, https://arxiv.org/abs/2002.08258). The tables
below are those files (timm 1.0.31), reduced to what varies: the stems and the ECA kernels are
the unpruned model's (timm's pruning leaves 1-d convs alone), and within a stage every block's
``conv3``/``bn3`` and the stage's ``downsample`` share one width (the residual sum needs it). Per
stage: ``(output width, ((conv1, conv2) output widths per block))``; the files' extra
``layer*_conv3_M`` entries name no layer and are dropped. ``tests/test_pruned.py`` checks the
tables against timm's files entry by entry.
"""
from typing import Dict, Sequence, Tuple

from ..layers import eca_kernel_size
from ..registry import register_model
from ._common import merged_args
from .resnet import ResNet
from .resnet_blocks import Bottleneck
from .resnet_cfgs import RESNET_CFGS as default_cfgs  # noqa: F401  (register_model reads it)

TIMM_MODULE = "resnet"  # timm registers these in resnet.py (list_models(module="resnet"))

StageWidths = Tuple[int, Tuple[Tuple[int, int], ...]]
UNPRUNED_CHANNELS = (64, 128, 256, 512)  # the trunk's planes per stage before pruning (timm's ResNet default)

PRUNED_WIDTHS: Dict[str, Tuple[StageWidths, ...]] = {
    # timm/models/_pruned/ecaresnet50d_pruned.txt
    "ecaresnet50d_pruned": (
        (19, ((47, 18), (52, 22), (64, 35))),
        (171, ((85, 37), (107, 80), (120, 85), (125, 87))),
        (818, ((198, 126), (255, 232), (256, 233), (253, 235), (256, 225), (256, 239))),
        (2022, ((492, 237), (512, 500), (512, 490))),
    ),
    # timm/models/_pruned/ecaresnet101d_pruned.txt
    "ecaresnet101d_pruned": (
        (26, ((45, 25), (53, 20), (60, 27))),
        (142, ((81, 24), (93, 49), (102, 54), (122, 78))),
        (278, ((101, 25), (239, 160), (234, 156), (250, 176), (253, 191), (251, 175), (230, 128), (244, 154),
               (244, 159), (238, 97), (244, 149), (253, 181), (245, 119), (255, 216), (256, 201), (253, 149),
               (254, 141), (256, 190), (256, 217), (255, 156), (256, 155), (256, 232), (256, 214))),
        (2042, ((499, 289), (512, 512), (512, 502))),
    ),
}


def block_widths(name: str) -> Tuple[Tuple[Tuple[int, int, int], ...], ...]:
    """``(conv1, conv2, conv3)`` output widths of every block, per stage, of the pruned model
    ``name``. Raises KeyError naming the pruned models there are."""
    if name not in PRUNED_WIDTHS:
        raise KeyError(f"no pruned widths for {name!r}; there are: {', '.join(sorted(PRUNED_WIDTHS))}")
    return tuple(tuple((c1, c2, out) for c1, c2 in blocks) for out, blocks in PRUNED_WIDTHS[name])


def _eca_args(channels: int) -> tuple:
    """The ECA of a block whose unpruned output width is ``channels``: timm's pruning rebuilds
    only 2-d convs, norms and the classifier, so the 1-d ECA conv keeps the unpruned model's
    kernel size (7, not 5, in the last stage: log2(2048) against log2(2022))."""
    return (("kernel_size", eca_kernel_size(channels)), ("adaptive", False))


def pruned_block_overrides(name: str, layers: Sequence[int], channels: Sequence[int] = UNPRUNED_CHANNELS,
                           expansion: int = Bottleneck.expansion) -> tuple:
    """The trunk's ``block_overrides`` for the pruned model ``name`` at depths ``layers`` (the
    first ``layers[i]`` blocks of each stage, as timm's pruning of a shallower model reads the
    same file): each block's ``widths`` and its ECA kernel. Raises ValueError for depths the
    table does not hold."""
    table = block_widths(name)
    if len(layers) != len(table) or any(n > len(stage) for n, stage in zip(layers, table)):
        raise ValueError(f"{name}: layers={tuple(layers)} does not fit the pruned widths, which hold "
                         f"{tuple(len(stage) for stage in table)} blocks per stage")
    return tuple(
        tuple((("widths", w), ("attn_kwargs", _eca_args(planes * expansion))) for w in stage[:n])
        for stage, n, planes in zip(table, layers, channels))


def _pruned(name: str, kwargs: dict, layers) -> ResNet:
    # timm: the ECA-ResNet-D (deep stem 32, avg-pool shortcuts, ECA in every Bottleneck), then
    # adapt_model_from_file. As timm, the caller's keyword arguments override the architecture's.
    args = merged_args(dict(block=Bottleneck, layers=layers, stem_width=32, stem_type="deep", avg_down=True,
                            block_args=dict(attn_layer="eca"), channels=UNPRUNED_CHANNELS), kwargs)
    args.setdefault("block_overrides", pruned_block_overrides(name, args["layers"], args["channels"]))
    return ResNet(**args)


@register_model
def ecaresnet50d_pruned(**kwargs):
    """ECA-ResNet-50-D pruned (https://arxiv.org/abs/2002.08258), widths from timm's file."""
    return _pruned("ecaresnet50d_pruned", kwargs, (3, 4, 6, 3))


@register_model
def ecaresnet101d_pruned(**kwargs):
    """ECA-ResNet-101-D pruned (https://arxiv.org/abs/2002.08258), widths from timm's file."""
    return _pruned("ecaresnet101d_pruned", kwargs, (3, 4, 23, 3))
