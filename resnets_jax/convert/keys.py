"""timm <-> Flax names and layouts: a handful of structural rules, the same in both directions,
because every Flax submodule is named after the timm attribute it mirrors:

* module path: ``stages.2.blocks.5.norm2`` <-> ``stages_2/blocks_5/norm2`` (an integer
  segment joins its parent with ``_``);
* leaf: a conv ``weight`` (4-D, OIHW) <-> ``kernel`` (HWIO), a 1-d conv ``weight`` (3-D, OIW:
  ECA's ``se.conv.weight``) <-> ``kernel`` (WIO), a linear ``weight`` (2-D) <-> ``kernel`` transposed, a norm ``weight`` (1-D) <-> ``scale``; ``running_mean`` /
  ``running_var`` / ``num_batches_tracked`` <-> ``batch_stats`` ``mean`` / ``var`` /
  ``num_batches_tracked``; any other leaf (``bias``, EvoNorm's ``v``, FRN's ``tau``) keeps its
  name.
"""
import re
from typing import Dict, Mapping, Tuple

import numpy as np
from flax import traverse_util

StateDict = Dict[str, np.ndarray]

# OIHW -> HWIO, OIW -> WIO and (out, in) -> (in, out); the inverse permutations give the way back.
TO_FLAX_PERM = {4: (2, 3, 1, 0), 3: (2, 1, 0), 2: (1, 0)}

TO_TIMM_PERM = {4: (3, 2, 0, 1), 3: (2, 1, 0), 2: (1, 0)}

_STATS = {"running_mean": "mean", "running_var": "var", "num_batches_tracked": "num_batches_tracked"}

_STATS_BACK = {v: k for k, v in _STATS.items()}

_INDEXED = re.compile(r"^(.*)_(\d+)$")

def timm_to_flax_key(key: str, ndim: int) -> Tuple[str, Tuple[str, ...]]:
    """``'stages.0.blocks.1.conv2.weight'`` (4-D) -> ``('params', ('stages_0', 'blocks_1', 'conv2', 'kernel'))``."""
    *mods, leaf = key.split(".")
    path = []
    for m in mods:
        if m.isdigit() and path:
            path[-1] = f"{path[-1]}_{m}"
        else:
            path.append(m)
    if leaf in _STATS:
        return "batch_stats", (*path, _STATS[leaf])
    if leaf == "weight":
        leaf = "kernel" if ndim in TO_FLAX_PERM else "scale"
    return "params", (*path, leaf)

def flax_to_timm_key(collection: str, path: Tuple[str, ...]) -> str:
    *mods, leaf = path
    if collection == "batch_stats":
        leaf = _STATS_BACK[leaf]
    elif leaf in ("kernel", "scale"):
        leaf = "weight"
    out = []
    for m in mods:
        match = _INDEXED.match(m)
        out.extend(match.groups() if match else (m,))
    return ".".join((*out, leaf))

def timm_shape(flax_key, shape) -> tuple:
    """A Flax variable's shape in timm's layout."""
    if flax_key[1][-1] != "kernel":
        return tuple(shape)
    return tuple(shape[i] for i in TO_TIMM_PERM[len(shape)])

def flat_variables(tree: Mapping) -> Dict[Tuple[str, Tuple[str, ...]], object]:
    return {(col, path): v for col in tree for path, v in traverse_util.flatten_dict(dict(tree[col])).items()}

def unflatten_variables(flat: Mapping) -> dict:
    cols = {}
    for (col, path), v in flat.items():
        cols.setdefault(col, {})[path] = v
    return {col: traverse_util.unflatten_dict(d) for col, d in cols.items()}
