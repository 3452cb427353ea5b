"""timm's ``get_attn`` (``timm/layers/create_attn.py``) for the attention layers the ResNet
family uses: a name -> its Flax module class."""
from typing import Any, Callable, Optional, Union

from .eca import EcaModule
from .squeeze_excite import SEModule

ATTN_LAYERS = {"se": SEModule, "eca": EcaModule}


def get_attn(attn_layer: Union[None, str, Callable[..., Any]]) -> Optional[Callable[..., Any]]:
    """``'se'`` -> ``SEModule``, ``'eca'`` -> ``EcaModule``; a module class (or partial) is returned
    as is; ``None``/``''`` -> ``None``. ``ValueError`` names the known names for anything else."""
    if not attn_layer:
        return None
    if isinstance(attn_layer, str):
        key = attn_layer.lower()
        if key not in ATTN_LAYERS:
            raise ValueError(f"attn_layer must be one of {sorted(ATTN_LAYERS)}, a module class or None, "
                             f"got {attn_layer!r}")
        return ATTN_LAYERS[key]
    if callable(attn_layer):
        return attn_layer
    raise ValueError(f"attn_layer must be one of {sorted(ATTN_LAYERS)}, a module class or None, got {attn_layer!r}")
