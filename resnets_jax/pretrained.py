"""Pretrained weights into a model that may differ from the one they were trained as (timm's
``_builder.load_pretrained``): a new classifier when ``num_classes`` differs, the first conv
adapted to ``in_chans``, and only the layers a ``features_only`` model keeps; and timm's
``reset_classifier`` (a new head on a model and its variables).

``pretrained_file`` is the one way to the hub's weights: ``create_model(pretrained=True)``,
``resnets-jax convert --from-hub`` and the demo all come through it.
"""
from typing import Any, Mapping, Optional, Tuple

import jax
import numpy as np

from .convert import expected_variables, flax_to_timm_key, fresh_variables, load_variables
from .convert.keys import flat_variables, unflatten_variables
from .io import CheckpointError, load_state_dict
from .io.arrays import view_state_dict
from .io.hub import download_pretrained


def pretrained_file(cfg: dict, cache_dir: Optional[str] = None) -> str:
    """The weights file of a pretrained config: ``cfg['file']`` (a local timm checkpoint, timm's
    ``pretrained_cfg_overlay=dict(file=...)``) when set, else the hub's ``model.safetensors`` (or
    ``pytorch_model.bin``), downloaded or from the huggingface_hub cache."""
    return cfg.get("file") or download_pretrained(cfg, cache_dir=cache_dir)


def adapt_input_conv(in_chans: int, weight: np.ndarray) -> np.ndarray:
    """timm's ``adapt_input_conv`` for a pretrained first conv (OIHW) trained on RGB: one
    channel sums the RGB filters; other counts tile them and scale by ``3 / in_chans``."""
    w = np.asarray(weight, np.float32)
    out_chs, chs = w.shape[:2]
    if in_chans == 1:
        w = w.reshape(out_chs, chs // 3, 3, *w.shape[2:]).sum(2) if chs > 3 else w.sum(1, keepdims=True)
    elif in_chans != chs:
        if chs != 3:
            raise CheckpointError(f"cannot adapt a first conv of {chs} input channels to in_chans={in_chans}")
        w = np.tile(w, (1, -(-in_chans // 3), 1, 1))[:, :in_chans] * (3 / in_chans)
    return w.astype(np.asarray(weight).dtype)


def pruned_prefixes(model) -> Tuple[str, ...]:
    """Checkpoint key prefixes (timm's and Flax's spelling) of the layers a ``features_only``
    model leaves out: the head, the final norm and stages past the last selected map."""
    if not getattr(model, "features_only", False):
        return ()
    full = {path[0] for _, path in expected_variables(model.clone(features_only=False))}
    kept = {path[0] for _, path in expected_variables(model)}
    prefixes = []
    for module in sorted(full - kept):
        prefixes.append(flax_to_timm_key("params", (module, "")))  # 'stages.3.'
        prefixes += [f"{col}/{module}/" for col in ("params", "batch_stats")]
    return tuple(prefixes)


def fit_bit_npz(model, state_dict) -> Tuple[Mapping, Tuple[str, ...]]:
    """A BiT ``.npz`` state dict (``io.load_state_dict``'s, with the file's head and RGB stem) as
    timm's ``ResNetV2.load_pretrained`` puts it into ``model`` (``_load_weights`` in
    ``timm/models/resnetv2.py``): the stem conv adapted to ``model.in_chans``, the head taken only
    when the model has one of the file's width (else the model keeps its own init), the layers a
    ``features_only`` model leaves out dropped. Returns ``(view, skip_missing)`` for
    ``load_variables``. ``CheckpointError`` for a model that is not a ResNetV2 (timm: "Model
    cannot load numpy checkpoint")."""
    if type(model).__name__ != "ResNetV2":
        raise CheckpointError(f"a BiT .npz checkpoint loads only into ResNetV2 models (timm's "
                              f"ResNetV2.load_pretrained), not {type(model).__name__} ({model.variant})")
    head, replace = "head.fc.", {}
    width = state_dict["head.fc.weight"].shape[0] if "head.fc.weight" in state_dict else None
    skip = () if not model.features_only and model.num_classes and model.num_classes == width else (head,)
    stem = "stem.conv.weight"
    if stem in state_dict and state_dict[stem].shape[1] != model.in_chans:
        replace[stem] = adapt_input_conv(model.in_chans, state_dict[stem])
    return view_state_dict(state_dict, drop=skip + pruned_prefixes(model), replace=replace), skip


def load_pretrained(model, cfg: dict, *, cache_dir: Optional[str] = None, rng: Optional[jax.Array] = None) -> dict:
    """The variables of ``model`` from the pretrained weights ``cfg`` names (``pretrained_file``),
    as timm's ``load_pretrained``: the checkpoint's classifier is left out, and the model's
    freshly initialised (only it, from ``rng``), when ``model.num_classes`` differs from ``cfg['num_classes']``; an
    RGB first conv is adapted to ``model.in_chans``; a ``features_only`` model takes only its
    layers. Raises ``CheckpointError`` when the file cannot be had or does not fit."""
    state_dict = load_state_dict(pretrained_file(cfg, cache_dir))
    if getattr(state_dict, "kind", "") == "bit_npz":
        view, skip = fit_bit_npz(model, state_dict)
        return load_variables(model, view, skip_missing=skip, rng=rng)
    skip, replace = (), {}
    if not model.features_only and model.num_classes != cfg["num_classes"]:
        skip = (cfg["classifier"] + ".",)
    first_conv = cfg["first_conv"] + ".weight"
    if first_conv in state_dict and state_dict[first_conv].shape[1] != model.in_chans:
        replace[first_conv] = adapt_input_conv(model.in_chans, state_dict[first_conv])
    state_dict = view_state_dict(state_dict, drop=skip + pruned_prefixes(model), replace=replace)
    return load_variables(model, state_dict, skip_missing=skip, rng=rng)


def reset_classifier(model, variables: Mapping, num_classes: int, global_pool: Optional[str] = None,
                     rng: Optional[jax.Array] = None) -> Tuple[Any, dict]:
    """timm's ``model.reset_classifier(num_classes, global_pool=None)`` (``ResNet`` and
    ``ResNetV2`` in ``timm/models/resnet.py``, ``resnetv2.py``) for a linen model, which cannot
    change in place: returns ``(model.clone(num_classes=..., global_pool=...), variables)`` with
    the classifier's parameters drawn afresh from ``rng`` (default ``jax.random.PRNGKey(0)``) and
    every other variable kept (the same arrays). ``num_classes=0`` removes the classifier: the
    model then gives the pooled features, (B, num_features). ``global_pool``: timm's pool type
    ('avg', 'max', 'avgmax', 'catavgmax', '' for none); None keeps the model's.

    The new head is initialised as ``create_model(..., num_classes=N)`` initialises it (timm's
    model init: ResNetV2's normal(0.01) conv, ResNet's torch-default ``Linear``); timm's
    ``reset_classifier`` leaves torch's default init on the new layer for both.
    Raises ``ValueError`` for a ``features_only`` model (it has no classifier), a negative
    ``num_classes``, an unknown ``global_pool``, or ``variables`` lacking some of the model's."""
    if getattr(model, "features_only", False):
        raise ValueError(f"reset_classifier: {getattr(model, 'variant', type(model).__name__)} was built with "
                         "features_only=True and has no classifier")
    if not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"reset_classifier: num_classes must be an int >= 0 (0: no classifier), got {num_classes!r}")
    new = model.clone(num_classes=num_classes, **({} if global_pool is None else {"global_pool": global_pool}))
    expected = expected_variables(new)
    trunk = set(expected_variables(new.clone(num_classes=0)))  # every variable but the classifier's
    flat = flat_variables(variables)
    missing = sorted("/".join((col,) + path) for col, path in trunk if (col, path) not in flat)
    if missing:
        raise ValueError(f"reset_classifier: the variables lack {len(missing)} of the model's, e.g. {missing[:3]}")
    kept = {k: flat[k] for k in expected if k in trunk}
    return new, unflatten_variables({**kept, **fresh_variables(new, rng, only=set(expected) - trunk)})
