"""``create_model``: a registered architecture, its pretrained config and its weights."""
from typing import Any, Optional, Tuple

import jax
import jax.numpy as jnp

from . import weights
from .registry import HF_HUB_PREFIX, get_pretrained_cfg, model_entrypoint, parse_hf_hub_name, split_model_name


def build_model(model_name: str, *, num_classes: Optional[int] = None, in_chans: int = 3,
                global_pool: Optional[str] = None, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                dtype: Any = jnp.float32, param_dtype: Any = jnp.float32, **kwargs):
    """The Flax module of ``model_name`` (``'arch'``, ``'arch.tag'`` or ``'hf-hub:org/repo'``),
    without variables. Keyword arguments have timm's meaning; ``num_classes`` defaults to the
    tag's config (an hf-hub model's: its ``config.json``, ``model_args`` included)."""
    entrypoint = model_entrypoint(model_name)
    cfg = get_pretrained_cfg(model_name)
    arch, _ = split_model_name(model_name)
    hub_id = parse_hf_hub_name(model_name)
    saved = dict(cfg.get("model_args", {}))  # an hf-hub model's saved arguments: defaults, as in timm
    saved.pop("num_classes", None)  # already cfg["num_classes"]
    in_chans = saved.pop("in_chans", in_chans) if in_chans == 3 else in_chans
    global_pool = saved.pop("global_pool", None) if global_pool is None else global_pool
    for k, v in saved.items():
        kwargs.setdefault(k, v)
    if global_pool is not None:
        kwargs["global_pool"] = global_pool
    return entrypoint(num_classes=cfg["num_classes"] if num_classes is None else num_classes,
                      in_chans=in_chans, drop_rate=drop_rate, drop_path_rate=drop_path_rate,
                      dtype=dtype, param_dtype=param_dtype,
                      variant=HF_HUB_PREFIX + hub_id if hub_id else f"{arch}.{cfg['tag']}", **kwargs)


def create_model(
        model_name: str,
        pretrained: bool = False,
        checkpoint_path: Optional[str] = None,
        *,
        rng: Optional[jax.Array] = None,
        cache_dir: Optional[str] = None,
        use_ema: bool = False,
        pretrained_cfg_overlay: Optional[dict] = None,
        **kwargs,
) -> Tuple[Any, dict]:
    """Build ``model_name`` (``'arch'``, ``'arch.tag'`` as timm spells them, or
    ``'hf-hub:<org>/<repo>'``: a timm model on the hub, built from its ``config.json``) and its
    variables.

    Weights come from ``checkpoint_path`` if given (a timm checkpoint file of any kind, or a
    Flax checkpoint written by ``save_checkpoint`` / ``resnets-jax convert``, whose recorded
    ``num_classes``/``in_chans`` are the defaults; ``use_ema`` picks a training checkpoint's EMA
    weights), else from the hub when ``pretrained`` (``cache_dir`` as huggingface_hub's), else
    from a random init with ``rng``. ``pretrained_cfg_overlay`` updates the tag's pretrained config
    as timm's: ``dict(file=path)`` loads a local timm checkpoint as the pretrained weights, so that
    a different ``num_classes`` gets a new classifier (``checkpoint_path`` loads a file strictly).
    Other keyword arguments go to ``build_model`` (timm's
    meaning: ``num_classes``, ``in_chans``, ``global_pool``, ``drop_rate``, ``drop_path_rate``,
    ... and ``dtype``/``param_dtype``).
    Returns ``(model, variables)``; ``model.apply(variables, x)`` gives logits in eval mode.
    """
    if parse_hf_hub_name(model_name):  # read its config.json now, so that cache_dir applies
        weights.hf_hub_config(model_name, cache_dir=cache_dir)
    if checkpoint_path is not None:
        state_dict = weights.load_state_dict(checkpoint_path, use_ema=use_ema)
        if weights.is_flax_layout(state_dict):  # our own checkpoints say what they hold
            meta = getattr(state_dict, "metadata", None) or {}
            for k in ("num_classes", "in_chans"):
                if meta.get(k, "").isdigit():
                    kwargs.setdefault(k, int(meta[k]))
        model = build_model(model_name, **kwargs)
        state_dict = weights.view_state_dict(state_dict, drop=_pruned_prefixes(model))
        return model, weights.load_variables(model, state_dict)
    model = build_model(model_name, **kwargs)
    if pretrained:
        cfg = {**get_pretrained_cfg(model_name), **(pretrained_cfg_overlay or {})}
        state_dict = weights.load_state_dict(cfg.get("file") or weights.download_pretrained(cfg, cache_dir=cache_dir))
        skip, replace = (), {}
        if not model.features_only and model.num_classes != cfg["num_classes"]:
            # as timm: a new classifier, freshly initialised; everything else from the checkpoint
            skip = (cfg["classifier"] + ".",)
        first_conv = cfg["first_conv"] + ".weight"
        if first_conv in state_dict and state_dict[first_conv].shape[1] != model.in_chans:
            # as timm: the RGB-trained first conv adapted to in_chans
            replace[first_conv] = weights.adapt_input_conv(model.in_chans, state_dict[first_conv])
        state_dict = weights.view_state_dict(state_dict, drop=skip + _pruned_prefixes(model), replace=replace)
        return model, weights.load_variables(model, state_dict, skip_missing=skip)
    return model, weights.init_variables(model, rng)


def _pruned_prefixes(model) -> Tuple[str, ...]:
    """Checkpoint key prefixes (timm's and Flax's spelling) of the layers a ``features_only``
    model leaves out: the head, the final norm and stages past the last selected map."""
    if not getattr(model, "features_only", False):
        return ()
    full = {path[0] for _, path in weights.expected_variables(model.clone(features_only=False))}
    kept = {path[0] for _, path in weights.expected_variables(model)}
    prefixes = []
    for module in sorted(full - kept):
        prefixes.append(weights.flax_to_timm_key("params", (module, "")))  # 'stages.3.'
        prefixes += [f"{col}/{module}/" for col in ("params", "batch_stats")]
    return tuple(prefixes)
