"""timm's plain ResNet blocks (``timm/models/resnet.py``): ``BasicBlock`` (ResNet-18/34) and
``Bottleneck`` (ResNet-50 and up, ResNeXt, wide ResNets, SE-/ECA-ResNets, SENet, ResNet-RS, the
anti-aliased ResNets), for the v1 trunk in ``resnet.py``.

Both take the trunk's block interface (``planes, stride, downsample, cardinality, base_width,
dilation, first_dilation, drop_path_rate, drop_block, zero_init_last, conv_layer, norm_layer``)
plus timm's ``reduce_first``, ``attn_layer`` (+ ``attn_kwargs``) and ``aa_layer``. Submodules carry
timm's names: ``conv1``, ``bn1``, ..., ``se`` (the attention layer, whatever its kind),
``downsample_{i}``. Unlike ResNeSt's bottleneck, drop path acts on the residual branch.
"""
from typing import Any, ClassVar, Optional, Tuple

import jax
from flax import linen as nn

from ..layers import DropPath, anti_alias, get_attn, normalize_aa_layer, select_relu
from .resnet import ResNetBlock


def _bound_dtypes(conv_layer) -> dict:
    """The ``dtype``/``param_dtype`` the trunk bound on its conv partial: the attention layers take the same."""
    kw = getattr(conv_layer, "keywords", {}) or {}
    return {k: kw[k] for k in ("dtype", "param_dtype") if k in kw}


class _ResidualBlock(ResNetBlock):
    """The fields and the tail both blocks share (timm's ``forward`` after the last norm)."""
    expansion: ClassVar[int] = 1

    reduce_first: int = 1  # first conv's width divided by this (senet154: 2)
    attn_layer: Any = None  # 'se', 'eca', a module class, or None (timm's create_attn)
    attn_kwargs: Tuple[Tuple[str, Any], ...] = ()  # (name, value) pairs, e.g. (('rd_ratio', 0.25),) for resnetrs
    aa_layer: Optional[str] = None  # 'avg' (timm's nn.AvgPool2d), 'blur' (BlurPool2d), or None

    def check_basic_width(self) -> None:
        """Basic blocks (timm's ``BasicBlock``, ``SelectiveKernelBasic``) have no grouped or widened 3x3."""
        if self.cardinality != 1 or self.base_width != 64:
            raise ValueError(f"{type(self).__name__} supports cardinality 1 and base_width 64 only (as timm), got "
                             f"cardinality={self.cardinality}, base_width={self.base_width}")

    def use_aa(self) -> bool:
        """timm: anti-alias where the block downsamples, or where a dilated stage begins."""
        return normalize_aa_layer(self.aa_layer) is not None and (
            self.stride == 2 or (self.first_dilation or self.dilation) != self.dilation)

    def norm_act_drop(self, x: jax.Array, name: str, train: bool) -> jax.Array:
        """norm -> [drop_block] -> ReLU (timm's ``bn -> drop_block -> act``)."""
        if self.drop_block is None:
            return self.norm_layer(name=name)(x, train)
        x = self.norm_layer(apply_act=False, name=name)(x, train)
        return nn.relu(self.drop_block(name="drop_block")(x, train))

    def last_norm(self, x: jax.Array, name: str, train: bool) -> jax.Array:
        scale_init = nn.initializers.zeros if self.zero_init_last else nn.initializers.ones
        return self.norm_layer(apply_act=False, scale_init=scale_init, name=name)(x, train)

    def residual(self, out: jax.Array, x: jax.Array, train: bool) -> jax.Array:
        """attention -> drop path (on the residual branch) -> + shortcut -> ReLU."""
        attn = get_attn(self.attn_layer)
        if attn is not None:
            out = attn(**dict(self.attn_kwargs), **_bound_dtypes(self.conv_layer), name="se")(out)
        out = DropPath(self.drop_path_rate, name="drop_path")(out, train)
        shortcut = x if self.downsample is None else self.downsample(x, train)
        if out.shape[1:3] != shortcut.shape[1:3]:
            raise ValueError(
                f"{'/'.join(self.path) or type(self).__name__}: the residual branch gives {out.shape[1:3]} maps, the "
                f"shortcut {shortcut.shape[1:3]}. With aa_layer='avg' timm's floor-mode pool and the ceil-mode "
                "avg-down shortcut disagree on odd maps (timm fails the same way): use an input size whose maps "
                "stay even through the stages, e.g. 224, 65 or 97.")
        return select_relu(out + shortcut)


class BasicBlock(_ResidualBlock):
    """conv1 (3x3, stride) -> bn1 -> [drop_block] -> ReLU -> [aa] -> conv2 (3x3) -> bn2 -> [se],
    drop path, + shortcut, ReLU. With ``aa_layer`` the stride moves from conv1 to the aa layer."""
    expansion: ClassVar[int] = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        self.check_basic_width()
        first_planes = self.planes // self.reduce_first
        first_dilation = self.first_dilation or self.dilation
        use_aa = self.use_aa()
        out = self.conv_layer(first_planes, 3, stride=1 if use_aa else self.stride, padding=first_dilation,
                              dilation=first_dilation, name="conv1")(x)
        out = self.norm_act_drop(out, "bn1", train)
        if use_aa:
            out = anti_alias(out, self.aa_layer, self.stride)
        out = self.conv_layer(self.planes * self.expansion, 3, padding=self.dilation, dilation=self.dilation,
                              name="conv2")(out)
        return self.residual(self.last_norm(out, "bn2", train), x, train)


class Bottleneck(_ResidualBlock):
    """conv1 (1x1) -> bn1 -> ReLU -> conv2 (3x3, stride, groups=cardinality) -> bn2 ->
    [drop_block] -> ReLU -> [aa] -> conv3 (1x1) -> bn3 -> [se], drop path, + shortcut, ReLU.

    Widths as timm: ``width = floor(planes * base_width / 64) * cardinality``, conv1 gives
    ``width // reduce_first``, conv3 ``planes * 4``; ``widths`` = (conv1, conv2, conv3) output
    channels overrides all three (pruned models carry them as data)."""
    expansion: ClassVar[int] = 4

    widths: Optional[Tuple[int, int, int]] = None

    def conv_widths(self) -> Tuple[int, int, int]:
        if self.widths is not None:
            return tuple(self.widths)
        width = int(self.planes * (self.base_width / 64)) * self.cardinality  # floor for positive sizes
        return width // self.reduce_first, width, self.planes * self.expansion

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        first_planes, width, out_planes = self.conv_widths()
        first_dilation = self.first_dilation or self.dilation
        use_aa = self.use_aa()
        out = self.conv_layer(first_planes, 1, name="conv1")(x)
        out = self.norm_layer(name="bn1")(out, train)
        out = self.conv_layer(width, 3, stride=1 if use_aa else self.stride, padding=first_dilation,
                              dilation=first_dilation, groups=self.cardinality, name="conv2")(out)
        out = self.norm_act_drop(out, "bn2", train)
        if use_aa:
            out = anti_alias(out, self.aa_layer, self.stride)
        out = self.conv_layer(out_planes, 1, name="conv3")(out)
        return self.residual(self.last_norm(out, "bn3", train), x, train)
