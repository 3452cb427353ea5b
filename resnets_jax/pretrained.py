"""Pretrained weights into a model that may differ from the one they were trained as (timm's
``_builder.load_pretrained``): a new classifier when ``num_classes`` differs, the first conv
adapted to ``in_chans``, and only the layers a ``features_only`` model keeps.

``pretrained_file`` is the one way to the hub's weights: ``create_model(pretrained=True)``,
``resnets-jax convert --from-hub`` and the demo all come through it.
"""
from typing import Optional, Tuple

import numpy as np

from .convert import expected_variables, flax_to_timm_key, load_variables
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


def load_pretrained(model, cfg: dict, *, cache_dir: Optional[str] = None) -> dict:
    """The variables of ``model`` from the pretrained weights ``cfg`` names (``pretrained_file``),
    as timm's ``load_pretrained``: the checkpoint's classifier is left out, and the model's
    freshly initialised, when ``model.num_classes`` differs from ``cfg['num_classes']``; an
    RGB first conv is adapted to ``model.in_chans``; a ``features_only`` model takes only its
    layers. Raises ``CheckpointError`` when the file cannot be had or does not fit."""
    state_dict = load_state_dict(pretrained_file(cfg, cache_dir))
    skip, replace = (), {}
    if not model.features_only and model.num_classes != cfg["num_classes"]:
        skip = (cfg["classifier"] + ".",)
    first_conv = cfg["first_conv"] + ".weight"
    if first_conv in state_dict and state_dict[first_conv].shape[1] != model.in_chans:
        replace[first_conv] = adapt_input_conv(model.in_chans, state_dict[first_conv])
    state_dict = view_state_dict(state_dict, drop=skip + pruned_prefixes(model), replace=replace)
    return load_variables(model, state_dict, skip_missing=skip)
