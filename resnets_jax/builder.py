"""``create_model``: a registered architecture, its pretrained config and its weights."""
from typing import Any, Optional, Tuple

import jax
import jax.numpy as jnp

from . import weights
from .registry import get_pretrained_cfg, model_entrypoint, split_model_name


def create_model(
        model_name: str,
        pretrained: bool = False,
        checkpoint_path: Optional[str] = None,
        *,
        num_classes: Optional[int] = None,
        in_chans: int = 3,
        global_pool: Optional[str] = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        rng: Optional[jax.Array] = None,
        cache_dir: Optional[str] = None,
        use_ema: bool = False,
        **kwargs,
) -> Tuple[Any, dict]:
    """Build ``model_name`` (``'arch'`` or ``'arch.tag'``, timm's spelling) and its variables.

    Weights come from ``checkpoint_path`` (any timm checkpoint file) if given, else from the
    hub when ``pretrained``, else from a random init with ``rng``. Keyword arguments have
    timm's meaning; ``num_classes`` defaults to the pretrained config's.
    Returns ``(model, variables)``; ``model.apply(variables, x)`` gives logits in eval mode.
    """
    entrypoint = model_entrypoint(model_name)
    cfg = get_pretrained_cfg(model_name)
    arch, _ = split_model_name(model_name)
    if num_classes is None:
        num_classes = cfg["num_classes"]
    if global_pool is not None:
        kwargs["global_pool"] = global_pool
    model = entrypoint(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate,
                       drop_path_rate=drop_path_rate, dtype=dtype, param_dtype=param_dtype,
                       variant=f"{arch}.{cfg['tag']}", **kwargs)
    if checkpoint_path is not None:
        state_dict = weights.load_state_dict(checkpoint_path, use_ema=use_ema)
        return model, weights.convert_timm_state_dict(model, state_dict)
    if pretrained:
        state_dict = weights.load_state_dict(weights.download_pretrained(cfg, cache_dir=cache_dir))
        skip = ()
        if num_classes != cfg["num_classes"]:
            # as timm: a new classifier, freshly initialised; everything else from the checkpoint
            classifier = cfg["classifier"]
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith(classifier + ".")}
            skip = (classifier + ".",)
        return model, weights.convert_timm_state_dict(model, state_dict, skip_missing=skip)
    return model, weights._init(model, rng)
