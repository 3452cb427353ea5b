"""timm's ResNeSt, Res2Net and ResNetV2 networks in JAX/Flax, with exact checkpoint conversion.

    import resnets_jax as rj
    model, variables = rj.create_model("resnetv2_50.a1h_in1k", pretrained=True)
    logits = model.apply(variables, x)   # x: (B, H, W, 3), normalized, NHWC
"""
from . import data, layers, models  # noqa: F401  (models registers every architecture)
from . import predict  # noqa: F401
from .builder import build_model, create_model
from .conversion import convert_checkpoint, export_timm_checkpoint, save_checkpoint
from .registry import get_pretrained_cfg, list_models, list_pretrained
from .xla import compiler_options, enable_compilation_cache, jit
from .weights import (CheckpointError, convert_timm_state_dict, export_timm_state_dict,
                      load_state_dict, load_variables)

__version__ = "0.1.0"

__all__ = [
    "create_model", "build_model", "list_models", "list_pretrained", "get_pretrained_cfg",
    "convert_timm_state_dict", "export_timm_state_dict", "load_state_dict", "load_variables", "CheckpointError",
    "save_checkpoint", "convert_checkpoint", "export_timm_checkpoint",
    "jit", "compiler_options", "enable_compilation_cache",
    "data", "layers", "models",
]
