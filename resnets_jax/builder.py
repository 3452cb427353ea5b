"""``create_model``: a registered architecture, its pretrained config and its weights."""
from typing import Any, Optional, Tuple

import jax
import jax.numpy as jnp

from . import weights
from .registry import get_pretrained_cfg, model_entrypoint, split_model_name


def build_model(model_name: str, *, num_classes: Optional[int] = None, in_chans: int = 3,
                global_pool: Optional[str] = None, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                dtype: Any = jnp.float32, param_dtype: Any = jnp.float32, **kwargs):
    """The Flax module of ``model_name`` (``'arch'`` or ``'arch.tag'``), without variables.
    Keyword arguments have timm's meaning; ``num_classes`` defaults to the tag's config."""
    entrypoint = model_entrypoint(model_name)
    cfg = get_pretrained_cfg(model_name)
    arch, _ = split_model_name(model_name)
    if global_pool is not None:
        kwargs["global_pool"] = global_pool
    return entrypoint(num_classes=cfg["num_classes"] if num_classes is None else num_classes,
                      in_chans=in_chans, drop_rate=drop_rate, drop_path_rate=drop_path_rate,
                      dtype=dtype, param_dtype=param_dtype, variant=f"{arch}.{cfg['tag']}", **kwargs)


def create_model(
        model_name: str,
        pretrained: bool = False,
        checkpoint_path: Optional[str] = None,
        *,
        rng: Optional[jax.Array] = None,
        cache_dir: Optional[str] = None,
        use_ema: bool = False,
        **kwargs,
) -> Tuple[Any, dict]:
    """Build ``model_name`` (``'arch'`` or ``'arch.tag'``, timm's spelling) and its variables.

    Weights come from ``checkpoint_path`` (any timm checkpoint file; ``use_ema`` picks a
    training checkpoint's EMA weights) if given, else from the hub when ``pretrained``
    (``cache_dir`` as huggingface_hub's), else from a random init with ``rng``. Other keyword
    arguments go to ``build_model`` (timm's meaning: ``num_classes``, ``in_chans``,
    ``global_pool``, ``drop_rate``, ``drop_path_rate``, ... and ``dtype``/``param_dtype``).
    Returns ``(model, variables)``; ``model.apply(variables, x)`` gives logits in eval mode.
    """
    model = build_model(model_name, **kwargs)
    if checkpoint_path is not None:
        state_dict = weights.load_state_dict(checkpoint_path, use_ema=use_ema)
        return model, weights.convert_timm_state_dict(model, state_dict)
    if pretrained:
        cfg = get_pretrained_cfg(model_name)
        state_dict = weights.load_state_dict(weights.download_pretrained(cfg, cache_dir=cache_dir))
        skip = ()
        if model.num_classes != cfg["num_classes"]:
            # as timm: a new classifier, freshly initialised; everything else from the checkpoint
            prefix = cfg["classifier"] + "."
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith(prefix)}
            skip = (prefix,)
        return model, weights.convert_timm_state_dict(model, state_dict, skip_missing=skip)
    return model, weights.init_variables(model, rng)
