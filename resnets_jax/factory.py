"""``create_model`` / ``build_model``: a name -> its pretrained config (resolved once) -> the Flax
module -> its variables (timm's ``_factory.create_model`` and ``_builder.build_model_with_cfg``).

    name ──resolve_pretrained_cfg──> cfg ──build_model──> module
        ├─ checkpoint_path: io.load_state_dict -> convert.load_variables (strict)
        ├─ pretrained:      pretrained.load_pretrained (hub or cfg['file'], new head, in_chans)
        └─ else:            convert.init_variables (random init, nothing compiled)
"""
import sys
from typing import Any, Optional, Tuple, Union

import jax
import jax.numpy as jnp

from .convert import init_variables, load_variables
from .io import load_state_dict
from .io.arrays import tensor_shape, view_state_dict
from .io.flax_checkpoint import is_flax_layout
from .io.hub import read_hf_hub_config
from .io.model_metadata import decode_model_metadata
from .io.run_dir import resolve_checkpoint_path
from .pretrained import fit_bit_npz, load_pretrained, pruned_prefixes
from .registry import (
    HF_HUB_PREFIX,
    PRETRAINED_CFG_DEFAULTS,
    cfg_changes,
    get_pretrained_cfg,
    model_entrypoint,
    parse_hf_hub_name,
    register_hf_hub_cfg,
    split_model_name,
)


def resolve_pretrained_cfg(model_name: str, cache_dir: Optional[str] = None, overlay: Optional[dict] = None,
                           pretrained_cfg: Union[str, dict, None] = None) -> dict:
    """The pretrained config of ``model_name`` (timm's ``_builder.resolve_pretrained_cfg``): a
    registered ``arch[.tag]``'s, or an ``hf-hub:<org>/<repo>`` model's ``config.json`` (read from
    the hub, or its cache in ``cache_dir``, the first time only, then registered).
    ``pretrained_cfg``, as timm's: a tag (``'tv_in1k'``, taking priority over one in the name), or
    a whole config as a dict (timm's ``PretrainedCfg`` defaults where it is silent). ``overlay``
    (timm's ``pretrained_cfg_overlay``) then updates it. ``ValueError`` for an unknown name or tag;
    ``CheckpointError`` when an hf-hub config cannot be had."""
    model_id = parse_hf_hub_name(model_name)
    if model_id and pretrained_cfg:
        raise ValueError(f"{model_name}: an hf-hub model's config is its config.json; pretrained_cfg cannot "
                         "be given with it (timm asserts the same); use pretrained_cfg_overlay")
    if isinstance(pretrained_cfg, str):
        model_name, pretrained_cfg = f"{split_model_name(model_name)[0]}.{pretrained_cfg}", None
    if pretrained_cfg:
        arch = split_model_name(model_name)[0]
        model_entrypoint(arch)  # an unknown architecture: UnknownModelError, as for a name
        cfg = {**PRETRAINED_CFG_DEFAULTS, "architecture": arch, **pretrained_cfg}
    elif model_id:
        try:
            cfg = get_pretrained_cfg(model_name)
        except ValueError:  # not read yet
            cfg = register_hf_hub_cfg(model_id, read_hf_hub_config(model_name, cache_dir=cache_dir))
    else:
        cfg = get_pretrained_cfg(model_name)
    return {**cfg, **(overlay or {})}


def build_model(model_name: str, *, num_classes: Optional[int] = None, in_chans: int = 3,
                global_pool: Optional[str] = None, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                pretrained_cfg: Union[str, dict, None] = None, pretrained_cfg_overlay: Optional[dict] = None,
                **kwargs):
    """The Flax module of ``model_name`` (``'arch'``, ``'arch.tag'`` or ``'hf-hub:org/repo'``),
    without variables. Keyword arguments have timm's meaning; ``num_classes`` defaults to the
    tag's config (an hf-hub model's: its ``config.json``, ``model_args`` included).
    ``pretrained_cfg`` / ``pretrained_cfg_overlay``: as :func:`resolve_pretrained_cfg`; where they
    change the registry's config, the model keeps the change (``model.pretrained_cfg``, and so the
    data config, follow it, as in timm)."""
    cfg = resolve_pretrained_cfg(model_name, overlay=pretrained_cfg_overlay, pretrained_cfg=pretrained_cfg)
    return _build(model_name, cfg, num_classes=num_classes, in_chans=in_chans, global_pool=global_pool,
                  drop_rate=drop_rate, drop_path_rate=drop_path_rate, dtype=dtype, param_dtype=param_dtype, **kwargs)


def _build(model_name: str, cfg: dict, *, num_classes: Optional[int] = None, in_chans: int = 3,
           global_pool: Optional[str] = None, **kwargs):
    """``build_model`` from the config already resolved."""
    entrypoint = model_entrypoint(cfg["architecture"])
    hub_id = parse_hf_hub_name(model_name)
    saved = dict(cfg.get("model_args", {}))  # an hf-hub model's saved arguments: defaults, as in timm
    saved.pop("num_classes", None)  # already cfg["num_classes"]
    in_chans = saved.pop("in_chans", in_chans) if in_chans == 3 else in_chans
    global_pool = saved.pop("global_pool", None) if global_pool is None else global_pool
    for k, v in saved.items():
        kwargs.setdefault(k, v)
    if global_pool is not None:
        kwargs["global_pool"] = global_pool
    variant = HF_HUB_PREFIX + hub_id if hub_id else f"{cfg['architecture']}.{cfg.get('tag') or ''}".rstrip(".")
    return entrypoint(num_classes=cfg["num_classes"] if num_classes is None else num_classes,
                      in_chans=in_chans, variant=variant,
                      pretrained_cfg_overlay=cfg_changes(get_pretrained_cfg(variant), cfg), **kwargs)


def create_model(
        model_name: str,
        pretrained: bool = False,
        checkpoint_path: Optional[str] = None,
        *,
        rng: Optional[jax.Array] = None,
        cache_dir: Optional[str] = None,
        use_ema: bool = True,
        pretrained_cfg: Union[str, dict, None] = None,
        pretrained_cfg_overlay: Optional[dict] = None,
        scriptable: Optional[bool] = None,
        exportable: Optional[bool] = None,
        no_jit: Optional[bool] = None,
        **kwargs,
) -> Tuple[Any, dict]:
    """Build ``model_name`` (``'arch'``, ``'arch.tag'`` as timm spells them, or
    ``'hf-hub:<org>/<repo>'``: a timm model on the hub, built from its ``config.json``) and its
    variables.

    Weights come from ``checkpoint_path`` if given (a timm checkpoint file of any kind, read
    without torch: safetensors, ``.bin``/``.pth``/``.pth.tar`` in torch's zip format, Google's
    BiT ``.npz`` for ResNetV2 models, the head kept only at the file's width as timm's
    ``load_pretrained``; or a Flax checkpoint written by ``save_checkpoint`` / ``resnets-jax
    convert``. A file's recorded ``num_classes``/``in_chans`` (``io.model_metadata``: our
    checkpoints and exports record them) are the defaults, and one given that differs is a
    ``ValueError`` naming both; a run directory of ``finetune`` stands for its best export
    (``io.run_dir``). ``use_ema``, True as
    in timm's ``load_checkpoint``, takes a training checkpoint's ``state_dict_ema`` (else
    ``model_ema``) when it has one, else its ``state_dict``; which one is said on stderr), else from the hub when ``pretrained`` (``cache_dir`` as huggingface_hub's), else
    from a random init with ``rng`` (each variable drawn from the initializer its module
    declares, without compiling the network: ``convert.init_variables``, a second or two; a
    new classifier, from a different ``num_classes``, is drawn from ``rng`` too, and only it).
    ``pretrained_cfg_overlay`` updates the tag's pretrained config
    as timm's: ``dict(file=path)`` loads a local timm checkpoint as the pretrained weights, so that
    a different ``num_classes`` gets a new classifier (``checkpoint_path`` loads a file strictly).
    Other keyword arguments go to ``build_model`` (timm's meaning: ``num_classes``, ``in_chans``,
    ``global_pool``, ``drop_rate``, ``drop_path_rate``, ... and ``dtype``/``param_dtype``).
    ``scriptable``, ``exportable``, ``no_jit``: timm's switches of layers for TorchScript and
    ONNX, accepted so that timm's calls run unchanged; a JAX model has nothing to switch.
    Returns ``(model, variables)``; ``model.apply(variables, x)`` gives logits in eval mode.
    Raises ``UnknownModelError`` (a ``ValueError`` and, as timm's, a ``RuntimeError``) for an
    unknown name, ``CheckpointError`` for a file that is not a checkpoint or does not fit the model.
    """
    cfg = resolve_pretrained_cfg(model_name, cache_dir, pretrained_cfg_overlay, pretrained_cfg)
    if checkpoint_path is not None:
        checkpoint_path = resolve_checkpoint_path(checkpoint_path)  # a run directory: its best export
        state_dict = load_state_dict(checkpoint_path, use_ema=use_ema)
        _checkpoint_defaults(checkpoint_path, state_dict, kwargs)
        source = getattr(state_dict, "source", None)
        if source is not None:  # a training checkpoint: say which weights (timm logs it)
            print(f"{checkpoint_path}: loaded checkpoint[{source!r}] (use_ema={use_ema})", file=sys.stderr)
        model = _build(model_name, cfg, **kwargs)
        _check_head_width(checkpoint_path, state_dict, model, cfg)
        if getattr(state_dict, "kind", "") == "bit_npz":  # timm: model.load_pretrained(path)
            view, skip = fit_bit_npz(model, state_dict)
            return model, load_variables(model, view, skip_missing=skip, rng=rng)
        return model, load_variables(model, view_state_dict(state_dict, drop=pruned_prefixes(model)))
    model = _build(model_name, cfg, **kwargs)
    if pretrained:
        return model, load_pretrained(model, cfg, cache_dir=cache_dir, rng=rng)
    return model, init_variables(model, rng)


def _checkpoint_defaults(path, state_dict, kwargs: dict) -> None:
    """The file's recorded ``num_classes`` / ``in_chans`` into ``kwargs`` as defaults; a value
    given that differs is one ``ValueError`` naming both."""
    meta = decode_model_metadata(getattr(state_dict, "metadata", None) or {}, where=str(path))
    for key, recorded in (("num_classes", meta.num_classes), ("in_chans", meta.in_chans)):
        if recorded is None:
            continue
        given = kwargs.get(key)
        if given is None:
            kwargs[key] = recorded
        elif given != recorded:
            raise ValueError(f"{key}={given} was asked for, but {path} records {key}={recorded}: drop the "
                             f"argument (--{key.replace('_', '-')}) or give {recorded}")


def _check_head_width(path, state_dict, model, cfg: dict) -> None:
    """A timm file whose classifier has another width than the model's: one error saying which
    ``num_classes`` to give (the strict load would list every mismatch instead)."""
    key = f"{cfg.get('classifier', '')}.weight"
    if getattr(model, "features_only", False) or not model.num_classes or is_flax_layout(state_dict) or \
            getattr(state_dict, "kind", "") == "bit_npz" or key not in state_dict:
        return
    width = tensor_shape(state_dict, key)[0]
    if width != model.num_classes:
        raise ValueError(f"{path}: its classifier ({key}) has {width} outputs, the model {model.num_classes} "
                         f"classes; give num_classes={width} (--num-classes {width})")
