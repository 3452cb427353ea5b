"""What ``resnets-jax info`` prints: parameters, multiply-adds and the data config of a model."""
from typing import Optional, Sequence

import jax
import numpy as np

from ..registry import get_pretrained_cfg
from ..xla import jit


def _variable_shapes(model):
    spec = jax.ShapeDtypeStruct((1, 64, 64, model.in_chans), np.float32)
    rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(0)}
    return jax.eval_shape(model.init, rngs, spec)


def count_params(model, shapes=None) -> int:
    """Trainable parameters (the ``params`` collection), without computing anything."""
    shapes = _variable_shapes(model) if shapes is None else shapes
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes["params"]))


def model_gmacs(model, input_size: Sequence[int], shapes=None) -> float:
    """Giga multiply-adds of one forward pass at ``input_size`` (C, H, W): XLA's cost analysis of
    the compiled eval forward, ``flops / 2``. XLA counts the multiply-adds a convolution really
    does, not those on its zero padding, so this is a few percent below the figures timm's
    model cards give (fvcore / torch's flop counter count the padding too)."""
    shapes = _variable_shapes(model) if shapes is None else shapes
    c, h, w = input_size
    x = jax.ShapeDtypeStruct((1, h, w, c), np.float32)
    # rj.jit: plain convolutions (plain jax.jit's wide conv form would count its extra column)
    cost = jit(model.apply).lower(shapes, x).compile().cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
        cost = cost[0]
    return float(cost["flops"]) / 2 / 1e9


def model_info(name: str, input_size: Optional[Sequence[int]] = None) -> dict:
    """Name, architecture, parameters, GMACs (at the tag's input size unless given), classes,
    hub repository, eval data config and the test-size one (``test_data_config``: what predict
    and embed use by default) of ``name`` (``arch``, ``arch.tag`` or ``hf-hub:...``)."""
    from ..data import resolve_data_config
    from ..factory import build_model
    model = build_model(name)
    cfg = get_pretrained_cfg(name)
    data_cfg = resolve_data_config(model)
    input_size = tuple(input_size or data_cfg["input_size"])
    shapes = _variable_shapes(model)
    return {
        "name": model.variant,
        "architecture": cfg["architecture"],
        "parameters": count_params(model, shapes),
        "gmacs": model_gmacs(model, input_size, shapes),
        "gmacs_input_size": input_size,
        "num_classes": model.num_classes,
        "num_features": getattr(model, "num_features", None),
        "hub": cfg.get("hf_hub_id") or None,
        "data_config": data_cfg,
        "test_data_config": resolve_data_config(model, use_test_size=True),  # what predict and embed use
    }
