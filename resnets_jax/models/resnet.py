"""timm's ResNet v1 trunk (``timm/models/resnet.py``), shared by its plain ResNets, ResNeSt and Res2Net.

Papers: `Deep Residual Learning for Image Recognition` (https://arxiv.org/abs/1512.03385);
`Bag of Tricks for Image Classification with Convolutional Neural Networks` (the 'c/d/e' deep
stems and avg-pool shortcuts, https://arxiv.org/abs/1812.01187); `Revisiting ResNets` (the
ResNet-RS conv stem pool, https://arxiv.org/abs/2103.07579); `Making Convolutional Networks
Shift-Invariant Again` (anti-aliasing, https://arxiv.org/abs/1904.11486).

One trunk, many blocks: a family passes its block class (one per stage if they differ) and the
block's own arguments; stem, stem pool, stages, shortcuts, dilation and head are written once
here. Submodules carry timm's attribute names so checkpoint conversion is structural: ``conv1``
(or the deep stem's ``conv1_0 .. conv1_6``, timm's ``nn.Sequential`` indices), ``bn1``,
``maxpool_0 .. maxpool_2`` (ResNet-RS's conv pool), ``layer3_12`` (timm's ``layer3.12``: the
blocks are direct children of the model), ``layer1_0/downsample_1`` and ``fc``.
"""
import dataclasses
from functools import partial
from typing import Any, ClassVar, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from ..layers import (
    BatchNormAct2d,
    Conv2d,
    GroupNormAct,
    anti_alias,
    avg_down_pool,
    avg_pool2d,
    drop_block_layers,
    max_pool2d,
    normalize_aa_layer,
    select_global_pool,
    torch_default_uniform,
)
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


class ResNetBlock(nn.Module):
    """The block interface of this trunk: the fields it passes every block (a family's block
    subclasses this, adds its own fields after these and sets ``expansion``)."""
    expansion: ClassVar[int] = 1

    planes: int
    stride: int = 1
    downsample: Optional[Any] = None  # a Shortcut, built by the trunk for a stage's first block
    cardinality: int = 1
    base_width: int = 64
    dilation: int = 1
    first_dilation: Optional[int] = None
    drop_path_rate: float = 0.0
    drop_block: Optional[ModuleDef] = None  # DropBlock2d partial (stages 3 and 4 with drop_block_rate)
    zero_init_last: bool = True
    conv_layer: ModuleDef = None
    norm_layer: ModuleDef = None


# timm's norm_layer names for the v1 trunk -> (our norm(+act) layer, its fixed arguments)
NORM_LAYERS = {
    "batchnorm": (BatchNormAct2d, {}),
    "groupnorm": (GroupNormAct, {"num_groups": 32}),  # timm.layers.GroupNorm's default groups (resnet50_gn)
}


class ResNet(Trunk, nn.Module):
    """timm's ``ResNet`` v1 trunk: (B, H, W, in_chans) float -> logits (B, num_classes) (see ``Trunk``).

    ``block`` is a block class, or one per stage (timm's ``test_resnet``), taking ``(planes,
    stride, downsample, cardinality, base_width, dilation, first_dilation, drop_path_rate,
    drop_block, zero_init_last, conv_layer, norm_layer, **block_args)``, with a class attribute
    ``expansion``. ``block_reduce_first`` and ``aa_layer`` reach the blocks (as ``reduce_first``
    and ``aa_layer``) only when set, so blocks without them (ResNeSt's, Res2Net's) never see them.
    ``aa_layer``: None, 'avg' (timm's ``nn.AvgPool2d``) or 'blur' (``BlurPool2d``)."""
    block: Any
    layers: Sequence[int]
    num_classes: int = 1000
    in_chans: int = 3
    output_stride: int = 32
    global_pool: str = "avg"
    cardinality: int = 1
    base_width: int = 64
    stem_width: int = 64
    stem_type: str = ""  # '', 'deep', 'deep_tiered'
    replace_stem_pool: bool = False  # ResNet-RS: the stem max-pool becomes a 3x3/2 conv + norm + ReLU
    block_reduce_first: int = 1  # senet154: 2
    down_kernel_size: int = 1
    avg_down: bool = False
    channels: Sequence[int] = (64, 128, 256, 512)
    block_args: Tuple[Tuple[str, Any], ...] = ()  # extra block arguments (radix, avd, scale, ...) as
    # (name, value) pairs: a hashable module can be a static argument of jax.jit
    # Pruned models (timm's adapt_model_from_file): per stage, per block, (name, value) arguments for
    # that block alone, over block_args (models/resnet_pruned.py). A block's ``widths`` (conv1, conv2, conv3)
    # make the last one its stage's output width: the shortcut's, the feature map's, the head's input.
    block_overrides: Tuple[Tuple[Tuple[Tuple[str, Any], ...], ...], ...] = ()
    norm_layer: str = "batchnorm"  # or 'groupnorm' (resnet50_gn), as timm's get_norm_layer names
    aa_layer: Optional[str] = None
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
    # what create_model's pretrained_cfg / pretrained_cfg_overlay changed in its config (registry.cfg_changes)
    pretrained_cfg_overlay: Tuple[Tuple[str, Any], ...] = ()

    def stage_plan(self):
        """``(planes, stride, dilation, reduction)`` per stage (timm's ``make_blocks``)."""
        return [(planes, *sdr) for planes, sdr in zip(self.channels, stride_plan(len(self.channels), self.output_stride))]

    @property
    def stem_chs(self) -> int:
        return self.stem_width * 2 if "deep" in self.stem_type else 64

    @property
    def block_fns(self) -> Tuple[Any, ...]:
        """The block class of each stage (timm's ``to_ntuple(len(channels))(block)``)."""
        if isinstance(self.block, (tuple, list)):
            if len(self.block) != len(self.channels):
                raise ValueError(f"block: expected one block class per stage ({len(self.channels)}), "
                                 f"got {len(self.block)}")
            return tuple(self.block)
        return (self.block,) * len(self.channels)

    def stage_out_chs(self, stage_idx: int, planes: int, expansion: int) -> int:
        """A stage's output width: ``planes * expansion``, or its pruned width (``block_overrides``)."""
        if self.block_overrides:
            widths = dict(self.block_overrides[stage_idx][0]).get("widths")
            if widths:
                return widths[-1]
        return planes * expansion

    def all_feature_info(self):
        return [dict(num_chs=self.stem_chs, reduction=2, module="act1")] + [
            dict(num_chs=self.stage_out_chs(i, planes, block.expansion), reduction=r, module=f"layer{i + 1}")
            for i, ((planes, _, _, r), block) in enumerate(zip(self.stage_plan(), self.block_fns))]

    def _norm_partial(self):
        if self.norm_layer not in NORM_LAYERS:
            raise ValueError(f"norm_layer must be one of {sorted(NORM_LAYERS)}, got {self.norm_layer!r}")
        cls, fixed = NORM_LAYERS[self.norm_layer]
        return partial(cls, **fixed, dtype=self.dtype, param_dtype=self.param_dtype)

    def _block_args(self) -> dict:
        args = dict(self.block_args)
        if self.block_reduce_first != 1:
            args["reduce_first"] = self.block_reduce_first
        if normalize_aa_layer(self.aa_layer):
            args["aa_layer"] = normalize_aa_layer(self.aa_layer)
        return args

    def setup(self):
        conv = partial(Conv2d, dtype=self.dtype, param_dtype=self.param_dtype)
        norm = self._norm_partial()

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
        if self.replace_stem_pool:  # timm's nn.Sequential(conv, [aa], norm, act): maxpool_0, [_1], _1/_2
            aa = normalize_aa_layer(self.aa_layer)
            pool_conv = conv(inplanes, 3, stride=1 if aa else 2, padding=1)
            self.maxpool = [pool_conv, None, norm()] if aa else [pool_conv, norm()]

        # Stages: a block's first 3x3 uses the previous block's dilation (timm's make_blocks).
        block_args = self._block_args()
        net_num_blocks, net_block_idx, prev_dilation = sum(self.layers), 0, 1
        plan = self.stage_plan()[:self.num_stages_built]
        drop_blocks = drop_block_layers(self.drop_block_rate)
        for stage_idx, ((planes, stride, dilation, _), num_blocks, block) in enumerate(
                zip(plan, self.layers, self.block_fns)):
            expansion = block.expansion
            block_cls = nn.remat(block, static_argnums=(2,)) if self.grad_checkpointing else block
            downsample = None
            if stride != 1 or inplanes != planes * expansion:  # decided on the unpruned widths, as timm
                downsample = Shortcut(self.stage_out_chs(stage_idx, planes, expansion), stride, dilation,
                                      prev_dilation, self.avg_down, self.down_kernel_size, conv, norm)
            blocks = []
            for block_idx in range(num_blocks):
                # timm's stochastic depth rule: linear in the network-wide block index
                dpr = self.drop_path_rate * net_block_idx / max(net_num_blocks - 1, 1)
                overrides = self.block_overrides[stage_idx][block_idx] if self.block_overrides else ()
                args = dict(block_args, **dict(overrides))
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
                    **args,
                ))
                prev_dilation = dilation
                inplanes = planes * expansion
                net_block_idx += 1
            setattr(self, f"layer{stage_idx + 1}", blocks)  # blocks named layer{i}_{j}, as timm's keys

        if not self.features_only:
            self.head_drop = nn.Dropout(self.drop_rate)  # timm's F.dropout before fc ('dropout' RNG stream)
            if self.num_classes > 0:
                init = torch_default_uniform(self.head_hidden_size)  # nn.Linear's: timm leaves fc at it
                self.fc = nn.Dense(self.num_classes, kernel_init=init, bias_init=init, dtype=self.dtype,
                                   param_dtype=self.param_dtype)

    def stages(self):
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages_built)]

    def forward_intermediates(self, x: jax.Array, train: bool = False, stop: int = 5) -> List[jax.Array]:
        """The first ``stop`` feature maps: the stem's (``act1``, stride 2), then each stage's."""
        check_input(x, self.in_chans)
        if isinstance(self.conv1, (list, tuple)):
            for layer in self.conv1:
                if isinstance(layer, (BatchNormAct2d, GroupNormAct)):
                    x = layer(x, train)  # norm + ReLU (timm's separate act module)
                elif layer is not None:
                    x = layer(x)
        else:
            x = self.conv1(x)
        x = self.bn1(x, train)
        feats = [x]
        if stop > 1:
            x = self.stem_pool(x, train)
            for blocks in self.stages()[:stop - 1]:
                for block in blocks:
                    x = block(x, train)  # train positional: static for nn.remat
                feats.append(x)
        return feats

    def stem_pool(self, x: jax.Array, train: bool) -> jax.Array:
        """timm's ``maxpool`` (stride 2): a 3x3/2 max-pool; with ``aa_layer='avg'`` a 2x2/2 average
        pool *instead*; with 'blur' a 3x3/1 max-pool then a blur pool /2; with
        ``replace_stem_pool`` a 3x3 conv (stride 2, or 1 then the aa layer) + norm + ReLU."""
        aa = normalize_aa_layer(self.aa_layer)
        if self.replace_stem_pool:
            pool_conv, pool_norm = self.maxpool[0], self.maxpool[-1]
            return pool_norm(anti_alias(pool_conv(x), aa, 2), train)
        if aa == "avg":
            return avg_pool2d(x, 2, 2)  # timm's aa_layer(2): nn.AvgPool2d(kernel_size=2), stride 2
        if aa is not None:
            return anti_alias(max_pool2d(x, 3, 1, padding=1), aa, 2)
        return max_pool2d(x, 3, 2, padding=1)

    def forward_head(self, x: jax.Array, pre_logits: bool = False, train: bool = False) -> jax.Array:
        self._require_head("forward_head")
        x = select_global_pool(x, self.global_pool)
        x = self.head_drop(x, deterministic=not train)
        if pre_logits or self.num_classes <= 0:
            return x
        return self.fc(x)
