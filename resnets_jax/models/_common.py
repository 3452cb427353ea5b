"""What both trunks share: input checks, the stride plan, timm's feature API and the
forward path around a trunk's own ``forward_intermediates`` and ``forward_head``."""
from typing import List, Tuple

import jax

from ..layers import global_pool_feat_mult
from ..registry import get_pretrained_cfg, with_cfg_changes


def merged_args(model_args: dict, kwargs: dict) -> dict:
    """timm's ``dict(model_args, **kwargs)``: the keyword arguments of ``create_model`` override an
    architecture's own (``create_model('resnest14d', avg_down=False)``, ``block_args=dict(scale=8)``
    replacing the whole ``block_args`` as in timm), with timm's lists and dicts made the tuples a
    Flax module field holds (hashable: a static jit argument)."""
    out = dict(model_args, **kwargs)
    for key in ("layers", "channels", "block"):
        if isinstance(out.get(key), list):
            out[key] = tuple(out[key])
    block_args = out.get("block_args")
    if isinstance(block_args, dict):
        out["block_args"] = tuple((k, tuple(v.items()) if isinstance(v, dict) else v) for k, v in block_args.items())
    return out


def check_input(x: jax.Array, in_chans: int) -> None:
    """One clear error for the usual layout mistakes instead of an XLA shape error."""
    layout = f"a float array of shape (batch, height, width, {in_chans}) (NHWC)"
    if x.ndim != 4:
        raise ValueError(f"Expected {layout}; got rank {x.ndim} with shape {tuple(x.shape)}.")
    if not jax.numpy.issubdtype(x.dtype, jax.numpy.floating):
        raise TypeError(f"Expected {layout}; got dtype {x.dtype}. Normalize images to float first "
                        "(resnets_jax.data.create_transform).")
    if x.shape[-1] != in_chans:
        hint = " It looks like NCHW: transpose with x.transpose(0, 2, 3, 1)." if x.shape[1] == in_chans else ""
        raise ValueError(f"Expected {layout}; got shape {tuple(x.shape)}.{hint}")


def stride_plan(num_stages: int, output_stride: int) -> List[Tuple[int, int, int]]:
    """``(stride, dilation, reduction)`` per stage of a ResNet after its stride-4 stem, as timm's
    trunks: the first stage keeps the resolution, each later one halves it until the reduction
    reaches ``output_stride``, after which stages dilate instead."""
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    plan, reduction, dilation = [], 4, 1
    for i in range(num_stages):
        stride = 1 if i == 0 else 2
        if reduction >= output_stride:
            dilation *= stride
            stride = 1
        reduction *= stride
        plan.append((stride, dilation, reduction))
    return plan


def feature_take_indices(num_features: int, indices) -> Tuple[int, ...]:
    """timm's ``out_indices``: an int ``n`` takes the last ``n`` feature maps; a sequence takes
    those indices (negative ones count from the end). Sorted, as timm's models return them."""
    if isinstance(indices, int):
        if not 0 <= indices <= num_features:  # 0: none, as timm's (its FeatureListNet returns [])
            raise ValueError(f"out_indices={indices} (last n): expected 0 to {num_features}")
        indices = range(num_features - indices, num_features)
    taken = []
    for i in indices:
        if not -num_features <= i < num_features:
            raise ValueError(f"out_indices: {i} is out of range for {num_features} feature maps")
        taken.append(i % num_features)
    return tuple(sorted(set(taken)))


class FeatureInfo(list):
    """``model.feature_info``: the list of the dicts (``num_chs``, ``reduction``, ``module``,
    ``index``) of the maps ``features_only`` returns, in network order, with the accessors of
    timm's ``FeatureInfo`` (timm ``_features.py``): ``channels()``, ``reduction()``,
    ``module_name()``, ``get(key)``, ``get_dicts()``, over ``out_indices`` in the order given, or
    with ``idx`` (an int or a list) over every map of the network (``info``). Unlike timm's,
    ``len()`` and ``[i]`` count the selected maps (the list), which for the default
    ``out_indices`` (every map) is the same."""

    def __init__(self, info: List[dict], out_indices):
        self.info = [dict(d, index=i) for i, d in enumerate(info)]
        # timm's _out_indices_as_tuple: an int n is the last n maps
        self.out_indices = tuple(range(-out_indices, 0)) if isinstance(out_indices, int) else tuple(out_indices)
        super().__init__(self.info[i] for i in feature_take_indices(len(info), out_indices))

    def get(self, key: str, idx=None):
        if idx is None:
            return [self.info[i][key] for i in self.out_indices]
        return [self.info[i][key] for i in idx] if isinstance(idx, (tuple, list)) else self.info[idx][key]

    def get_dicts(self, keys=None, idx=None):
        def pick(d):
            return d if keys is None else {k: d[k] for k in keys}
        if idx is None:
            return [pick(self.info[i]) for i in self.out_indices]
        return [pick(self.info[i]) for i in idx] if isinstance(idx, (tuple, list)) else pick(self.info[idx])

    def channels(self, idx=None):
        return self.get("num_chs", idx)

    def reduction(self, idx=None):
        return self.get("reduction", idx)

    def module_name(self, idx=None):
        return self.get("module", idx)


class Trunk:
    """The part of timm's model API both trunks share (a base of the ResNet v1 and v2 modules).

    The model defines the fields ``features_only``, ``out_indices`` and ``global_pool``,
    ``all_feature_info()`` (one dict per feature map: ``num_chs``, ``reduction``, ``module`` in
    timm's names), ``forward_intermediates(x, train, stop)`` (the first ``stop`` feature maps,
    unnormalized) and ``forward_head(x, pre_logits, train)``; a trunk with a final norm
    overrides ``final_norm``. With ``features_only`` the model returns the list of the selected
    NHWC maps, in network order, and holds only the layers they need (as timm's
    ``FeatureListNet``)."""

    @property
    def pretrained_cfg(self) -> dict:
        """timm's ``model.pretrained_cfg``: the pretrained config of the tag the model was built
        as (its ``variant``: ``'arch.tag'``, or ``'hf-hub:org/repo'`` with its ``config.json``)
        with what ``create_model``'s ``pretrained_cfg`` / ``pretrained_cfg_overlay`` changed in it,
        a copy; ``{}`` for a module built without a name. Derived from fields, so ``clone`` keeps it."""
        if not self.variant:
            return {}
        return with_cfg_changes(get_pretrained_cfg(self.variant), self.pretrained_cfg_overlay)

    @property
    def default_cfg(self) -> dict:
        """timm's older name of ``pretrained_cfg`` (timm keeps it as an alias)."""
        return self.pretrained_cfg

    @property
    def num_features(self) -> int:
        """Channels of the last feature map (what ``forward_features`` returns)."""
        return self.all_feature_info()[-1]["num_chs"]

    @property
    def head_hidden_size(self) -> int:
        """Width of the pooled features the classifier sees (``pre_logits=True``)."""
        return self.num_features * global_pool_feat_mult(self.global_pool)

    def final_norm(self, x: jax.Array, train: bool) -> jax.Array:
        return x  # v1 has none; ResNetV2's pre-activation trunk ends with ``norm``

    def forward_features(self, x: jax.Array, train: bool = False) -> jax.Array:
        """(B, H, W, C) -> (B, H/32, W/32, num_features) at output_stride 32 (NHWC)."""
        self._require_head("forward_features")
        return self.final_norm(self.forward_intermediates(x, train)[-1], train)

    def __call__(self, x: jax.Array, train: bool = False):
        """Logits (B, num_classes), or pooled features when num_classes=0; with
        ``features_only`` the list of selected feature maps. ``train``: batch statistics,
        dropout and drop path (needs ``mutable=['batch_stats']`` and a ``'dropout'`` RNG)."""
        if self.features_only:
            return self._forward_features_only(x, train)
        return self.forward_head(self.forward_features(x, train), train=train)

    @property
    def feature_indices(self) -> Tuple[int, ...]:
        return feature_take_indices(len(self.all_feature_info()), self.out_indices)

    @property
    def feature_info(self) -> FeatureInfo:
        """Channels, reduction, timm module name and index of each map ``features_only`` returns
        (a list, with timm's ``FeatureInfo`` accessors: ``channels()``, ``reduction()``, ...)."""
        return FeatureInfo(self.all_feature_info(), self.out_indices)

    @property
    def num_stages_built(self) -> int:
        """Stages to build: all, or only up to the deepest selected feature map."""
        return max(self.feature_indices, default=0) if self.features_only else len(self.all_feature_info()) - 1

    def _forward_features_only(self, x, train: bool):
        if not self.feature_indices:  # out_indices=(): no maps, as timm's FeatureListNet returns []
            return []
        feats = self.forward_intermediates(x, train, stop=max(self.feature_indices) + 1)
        return [feats[i] for i in self.feature_indices]

    def _require_head(self, what: str):
        if self.features_only:
            raise ValueError(f"{what} is not available with features_only=True: the model returns "
                             "the list of feature maps from model.apply(variables, x)")
