"""timm's ``ConvNormAct`` (``timm/layers/conv_bn_act.py``): conv -> norm [-> drop] [-> act]
[-> anti-aliasing], in NHWC, with timm's submodule names ``conv`` and ``bn`` (the norm keeps the
name ``bn`` for timm's weight compatibility whatever its kind)."""
from typing import Callable, Optional

import jax
from flax import linen as nn

from .blur_pool import anti_alias, normalize_aa_layer
from .conv import Conv2d
from .norm import BatchNormAct2d


class ConvNormAct(nn.Module):
    """``conv`` (kxk, timm's symmetric padding unless ``padding`` is given) then ``bn``.

    ``drop_layer`` (a DropBlock2d partial) sits between the norm and its ReLU, as in timm's
    ``BatchNormAct2d(drop_layer=...)``; ``aa_layer`` (None, 'avg', 'blur': ``anti_alias``) takes
    the conv's stride when ``stride > 1``, as timm's ``create_aa``. ``conv_layer`` /
    ``norm_layer``: the model's bound partials (dtype, ...). Input (B, H, W, C_in) ->
    (B, H', W', out_chs), in the input's float dtype or the partials'."""

    out_chs: int
    kernel_size: int = 1
    stride: int = 1
    dilation: int = 1
    groups: int = 1
    padding: Optional[int] = None  # None: timm's get_padding(kernel_size, stride, dilation)
    apply_act: bool = True
    conv_layer: Callable = Conv2d
    norm_layer: Callable = BatchNormAct2d
    drop_layer: Optional[Callable] = None
    aa_layer: Optional[str] = None
    act: Callable = nn.relu  # used only beside a drop_layer; otherwise the norm's own act applies
    scale_init: Callable = nn.initializers.ones  # zeros: zero_init_last on a residual's last norm

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        use_aa = normalize_aa_layer(self.aa_layer) is not None and self.stride > 1
        x = self.conv_layer(self.out_chs, self.kernel_size, stride=1 if use_aa else self.stride,
                            dilation=self.dilation, groups=self.groups, padding=self.padding, name="conv")(x)
        # scale_init only when set: a norm without one (GroupNormAct) keeps its own default
        init = {} if self.scale_init is nn.initializers.ones else {"scale_init": self.scale_init}
        if self.drop_layer is None:
            x = self.norm_layer(apply_act=self.apply_act, name="bn", **init)(x, train)
        else:
            x = self.norm_layer(apply_act=False, name="bn", **init)(x, train)
            x = self.drop_layer(name="drop")(x, train)
            x = self.act(x) if self.apply_act else x
        if use_aa:
            x = anti_alias(x, self.aa_layer, self.stride)
        return x
