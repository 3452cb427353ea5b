"""Torch-exact building blocks shared by every family."""
from .blur_pool import anti_alias, blur_filter, blur_pool2d, normalize_aa_layer
from .classifier import ClassifierHead
from .conv import Conv2d, StdConv2d, get_padding
from .conv_norm_act import ConvNormAct
from .create_attn import ATTN_LAYERS, get_attn
from .helpers import make_divisible, select_relu
from .initializers import Normal, Uniform, kaiming_normal_fan_out, torch_default_uniform
from .eca import EcaModule, eca_kernel_size
from .drop import DropBlock2d, DropPath, drop_block_layers, drop_path_rates
from .norm import BatchNormAct2d, EvoNorm2dS0, FilterResponseNormTlu2d, GroupNormAct
from .pool import avg_down_pool, avg_pool2d, global_pool_feat_mult, max_pool2d, pad_same, select_global_pool
from .selective_kernel import SelectiveKernel, SelectiveKernelAttn, sk_attn_channels, sk_kernel_plan
from .split_attn import SplitAttn, radix_softmax, split_attn_channels
from .squeeze_excite import SEModule, se_channels

__all__ = [
    "ClassifierHead", "make_divisible", "select_relu", "Conv2d", "StdConv2d", "get_padding", "DropPath", "drop_path_rates", "DropBlock2d", "drop_block_layers",
    "BatchNormAct2d", "EvoNorm2dS0", "FilterResponseNormTlu2d", "GroupNormAct",
    "avg_down_pool", "avg_pool2d", "global_pool_feat_mult", "max_pool2d", "pad_same", "select_global_pool",
    "SplitAttn", "radix_softmax", "split_attn_channels",
    "SEModule", "se_channels", "EcaModule", "eca_kernel_size", "ATTN_LAYERS", "get_attn",
    "anti_alias", "blur_filter", "blur_pool2d", "normalize_aa_layer",
    "Normal", "Uniform", "kaiming_normal_fan_out", "torch_default_uniform",
    "ConvNormAct", "SelectiveKernel", "SelectiveKernelAttn", "sk_attn_channels", "sk_kernel_plan",
]
