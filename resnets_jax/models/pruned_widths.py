"""Layer widths of timm's pruned ResNets, as data.

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
from typing import Dict, Tuple

StageWidths = Tuple[int, Tuple[Tuple[int, int], ...]]

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
