"""timm's ResNeSt, Res2Net and ResNetV2 networks in JAX/Flax, with exact checkpoint conversion.

    import resnets_jax as rj
    model, variables = rj.create_model("resnetv2_50.a1h_in1k", pretrained=True)
    logits = model.apply(variables, x)   # x: (B, H, W, 3), normalized, NHWC

The rooms (docs/architecture.md): ``registry`` (pure tables), ``factory`` (name -> config ->
module -> weights), ``pretrained``, ``convert`` (timm <-> Flax), ``io`` (checkpoint files, the
hub), ``layers`` and ``models``, ``data``, ``train``, ``parallel``, ``xla``, ``tools`` (CLI).
"""
from . import _deprecated, data, layers, models  # noqa: F401  (models registers every architecture)
from .convert import (
    convert_timm_state_dict,
    export_timm_checkpoint,
    export_timm_state_dict,
    load_variables,
)
from .factory import build_model, create_model, resolve_pretrained_cfg
from .io import CheckpointError, load_state_dict, save_checkpoint
from .pretrained import reset_classifier
from .registry import UnknownModelError, get_pretrained_cfg, list_models, list_pretrained
from .tools import predict  # noqa: F401  (rj.predict.top_k / class_names, as in 0.1)
from .tools.convert import convert_checkpoint
from .xla import compiler_options, default_compilation_cache, enable_compilation_cache, jit

__version__ = "0.1.0"

_deprecated.install()
default_compilation_cache()  # JAX's persistent compilation cache, as the CLI has it (docs/performance.md)

__all__ = [
    "create_model", "build_model", "reset_classifier", "resolve_pretrained_cfg", "list_models", "list_pretrained", "get_pretrained_cfg",
    "convert_timm_state_dict", "export_timm_state_dict", "load_state_dict", "load_variables", "CheckpointError",
    "UnknownModelError",
    "save_checkpoint", "convert_checkpoint", "export_timm_checkpoint",
    "jit", "compiler_options", "enable_compilation_cache",
    "data", "layers", "models",
]
