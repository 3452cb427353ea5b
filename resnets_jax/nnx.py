"""NNX front door: every architecture as an ``nnx.Module``, over the same linen modules and weights.

    from flax import nnx
    import resnets_jax.nnx as rjn
    model = rjn.create_model("resnetv2_50.a1h_in1k", pretrained=True, num_classes=10, rngs=nnx.Rngs(0))
    logits = model(x)                      # x: (B, H, W, C) float, normalized; eval mode
    model.train()                          # batch statistics (updated in place), dropout, drop path
    optimizer = nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)
    wrt = freeze(model)                    # train the head only, trunk kept exactly (timm.utils.freeze)
    module, variables = to_linen(model)    # back to linen: module.apply(variables, x)
    state_dict = export_timm_state_dict(model)

The model is Flax's bridge (``nnx.bridge.ToNNX``) around the linen module ``resnets_jax.create_model``
builds, holding the variables that call loaded: the same numbers, so the same logits. Parameters
are ``nnx.Param``s and running statistics ``nnx.BatchStat``s, under timm's attribute names
(``model.stages_0['blocks_0']['conv1']['kernel']``). ``model.train()`` / ``model.eval()`` (or
``nnx.view``) set ``use_running_average`` and ``deterministic``, which the linen modules take as
one ``train`` flag (timm's ``model.train()``): training mode applies the linen module with
``mutable=['batch_stats']`` and writes the updated statistics back into the model, and draws the
``'dropout'`` key from the model's ``rngs`` (``nnx.Rngs``; a new key each call).
"""
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import numpy as np
from flax import nnx
from flax.nnx.bridge import variables as bridge_variables

from .convert import export_timm_state_dict as _export_linen
from .convert.keys import flat_variables
from .factory import create_model as _create_linen
from .pretrained import reset_classifier as _reset_linen
from .train.freeze import frozen_mask, frozen_norms, trunk

__all__ = ["ResNetNNX", "create_model", "freeze", "from_linen", "to_linen", "export_timm_state_dict"]


class ResNetNNX(nnx.bridge.ToNNX):
    """A linen model of this package and its variables as an NNX module (see the module docstring).

    ``model(x)``: ``x`` (B, H, W, C) float -> logits (B, num_classes) (``features_only``: the list
    of feature maps, NHWC). Methods of the linen module work the same way:
    ``model.forward_features(x)`` -> (B, h, w, num_features); ``model.forward_head(f, pre_logits=True)``.
    """

    def __init__(self, module, variables: Dict[str, Any], rngs: Optional[nnx.Rngs] = None):
        super().__init__(module, rngs=rngs if rngs is not None else nnx.Rngs(0))
        # the linen variables, as the bridge holds them after lazy_init (no second init needed)
        for name, value in bridge_variables.linen_vars_to_nnx_attrs(variables).items():
            setattr(self, name, nnx.data(value))
        self.to_nnx__train = False  # eval mode, as timm's and linen's default
        self.to_nnx__frozen = ()  # submodules whose BatchNorm keeps its running statistics (``freeze``)

    # nnx's train()/eval()/view() set these two by name; the linen modules take one `train` flag
    @property
    def use_running_average(self) -> bool:
        return not self.to_nnx__train

    @use_running_average.setter
    def use_running_average(self, value: bool):
        self.to_nnx__train = not value

    @property
    def deterministic(self) -> bool:
        return not self.to_nnx__train

    @deterministic.setter
    def deterministic(self, value: bool):
        self.to_nnx__train = not value

    def set_view(self, deterministic: Optional[bool] = None, use_running_average: Optional[bool] = None):
        """Used by ``nnx.view``; the two must agree when both are given (one ``train`` flag).
        Raises ``ValueError`` when they differ."""
        if None not in (deterministic, use_running_average) and deterministic != use_running_average:
            raise ValueError("the linen modules take one train flag: deterministic and use_running_average must "
                             f"agree, got {deterministic} and {use_running_average}")
        for value in (deterministic, use_running_average):
            if value is not None:
                self.to_nnx__train = not value

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        """timm's ``model.reset_classifier(num_classes, global_pool=None)``, in place: the linen
        module becomes ``module.clone(num_classes=..., global_pool=...)`` and the classifier's
        parameters are drawn afresh from the model's ``rngs`` (``params`` stream); every other
        variable is kept, the same objects (``resnets_jax.reset_classifier`` says the rest:
        ``num_classes=0`` gives pooled features; ``ValueError`` for a ``features_only`` model).
        An ``nnx.Optimizer`` made before holds the old head: make it after, as with timm."""
        module, variables = to_linen(self)
        new_module, new_variables = _reset_linen(module, variables, num_classes, global_pool,
                                                 rng=self.to_nnx__rngs.params())
        old, new = _top_level(variables), _top_level(new_variables)
        changed = {name for name in old.keys() | new.keys() if old.get(name) != new.get(name)}
        attrs = bridge_variables.linen_vars_to_nnx_attrs(new_variables)
        for name in changed:
            if hasattr(self, name):
                delattr(self, name)
            if name in attrs:
                setattr(self, name, nnx.data(attrs[name]))
        self.to_nnx__module = new_module

    def __call__(self, *args, method=None, **kwargs):
        train = self.to_nnx__train
        has_stats = any(isinstance(v, nnx.BatchStat) for _, v in nnx.iter_graph(self))
        # training draws the dropout / drop path key from the model's streams; eval draws nothing
        rngs = nnx.Rngs(dropout=self.to_nnx__rngs.dropout()) if train else nnx.Rngs()
        with frozen_norms(self.to_nnx__frozen):
            return super().__call__(*args, method=method, rngs=rngs, train=train,
                                    mutable=["batch_stats"] if train and has_stats else False, **kwargs)


def _top_level(variables) -> Dict[str, Dict[Any, int]]:
    """{top-level submodule name: {variable key: id of its array}}: which submodules changed."""
    out: Dict[str, Dict[Any, int]] = {}
    for (col, path), value in flat_variables(variables).items():
        out.setdefault(path[0], {})[(col, path)] = id(value)
    return out


def freeze(model: ResNetNNX, submodules: Optional[Sequence[str]] = None):
    """``timm.utils.freeze`` for NNX: keep ``submodules`` (Flax top-level names or '/' paths, as
    ``resnets_jax.train.freeze``; default: every submodule but the classifier, ``trunk``) exactly
    in training mode: their BatchNorm layers normalize with, and keep, their running statistics
    (timm's ``FrozenBatchNorm2d``). Returns the filter of the parameters left to train, for
    ``nnx.Optimizer(model, tx, wrt=...)`` and ``nnx.value_and_grad(f, argnums=nnx.DiffState(0,
    ...))``, which keep the frozen parameters. ``freeze(model, [])`` unfreezes. Raises
    ``ValueError`` naming a submodule the model lacks."""
    params = to_linen(model)[1]["params"]
    names = trunk(params) if submodules is None else tuple(submodules)
    frozen_mask(params, names)  # checks the names
    model.to_nnx__frozen = names
    frozen = tuple(tuple(n.split("/")) for n in names)

    def trainable(path, value) -> bool:
        return isinstance(value, nnx.Param) and not any(tuple(map(str, path[:len(f)])) == f for f in frozen)

    return trainable


def from_linen(module, variables: Dict[str, Any], *, rngs: Optional[nnx.Rngs] = None) -> ResNetNNX:
    """The NNX module holding ``variables`` (``{'params': ..., 'batch_stats': ...}``, arrays) of the
    linen ``module`` (a model of this package, as ``resnets_jax.create_model`` returns it)."""
    return ResNetNNX(module, jax.tree_util.tree_map(jax.numpy.asarray, variables), rngs=rngs)


def create_model(name: str, pretrained: bool = False, checkpoint_path: Optional[str] = None, *,
                 rngs: Optional[nnx.Rngs] = None, **timm_kwargs) -> ResNetNNX:
    """``resnets_jax.create_model`` as an ``nnx.Module``: the same architecture names, keyword
    arguments (timm's ``num_classes``, ``in_chans``, ``drop_rate``, ``drop_path_rate``,
    ``features_only``, ... and ``dtype``/``param_dtype``, ``cache_dir``, ``use_ema``,
    ``pretrained_cfg_overlay``) and weights (hub, a checkpoint file, or a random init drawn from
    ``rngs.params()``); ``rngs`` (default ``nnx.Rngs(0)``) also gives the dropout / drop path keys
    in training mode. Raises what ``resnets_jax.create_model`` raises (``KeyError``-style unknown
    names, ``CheckpointError`` for a checkpoint that does not fit). In eval mode."""
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    rng = None if pretrained or checkpoint_path is not None else rngs.params()
    module, variables = _create_linen(name, pretrained, checkpoint_path, rng=rng, **timm_kwargs)
    return from_linen(module, variables, rngs=rngs)


def to_linen(model: ResNetNNX) -> Tuple[Any, Dict[str, Any]]:
    """``(linen module, variables)`` of ``model``'s current state, for ``module.apply(variables, x)``,
    ``resnets_jax.export_timm_state_dict`` or ``resnets_jax.save_checkpoint``."""
    attrs = {k: v for k, v in vars(model).items() if not k.startswith(("to_nnx__", "_pytree__"))}
    variables = bridge_variables.nnx_attrs_to_linen_vars(attrs)
    return model.to_nnx__module, jax.tree_util.tree_map(lambda v: getattr(v, "value", v), variables)


def export_timm_state_dict(model: ResNetNNX) -> Dict[str, np.ndarray]:
    """timm's state dict (keys, layouts; numpy) of ``model``: ``resnets_jax.export_timm_state_dict``
    of ``to_linen(model)``; ``torch.save`` it or load it into ``timm.create_model(arch, ...)``."""
    return _export_linen(*to_linen(model))
