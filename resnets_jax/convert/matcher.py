"""Checkpoint -> a model's variables: one matcher for both layouts a checkpoint may hold, timm's
keys (``stages.0.blocks.1.conv2.weight``, NCHW) and ours (``params/stages_0/...``, as
``save_checkpoint`` writes them).

Every key is mapped structurally (``keys``), each tensor copied once into Flax's layout, and the
result checked against ``jax.eval_shape(model.init, ...)`` (``shapes``): missing keys,
unexpected keys and shape mismatches are all reported at once, in the file's own key names.
"""
import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from ..io.arrays import permuted_copy, read_permuted, tensor_shape
from ..io.errors import CheckpointError
from ..io.flax_checkpoint import is_flax_layout
from ..io.torch_zip import torch_to_numpy
from ..registry import get_pretrained_cfg
from .keys import (
    TO_FLAX_PERM,
    flat_variables,
    flax_to_timm_key,
    timm_shape,
    timm_to_flax_key,
    unflatten_variables,
)
from .random_init import fresh_variables
from .shapes import expected_variables

FlaxKey = Tuple[str, Tuple[str, ...]]  # (collection, module path + leaf)


@dataclasses.dataclass(frozen=True)
class Layout:
    """How one kind of checkpoint names and lays out a variable."""
    what: str
    item: Callable[[Mapping, str], Tuple[FlaxKey, np.ndarray]]  # (state dict, key) -> (Flax key, array)
    name: Callable[[FlaxKey], str]                              # Flax key -> the checkpoint's key
    shape: Callable[[FlaxKey, tuple], tuple]                    # Flax shape -> the checkpoint's shape


def _timm_item(state_dict: Mapping, key: str) -> Tuple[FlaxKey, np.ndarray]:
    ndim = len(tensor_shape(state_dict, key))
    flax_key = timm_to_flax_key(key, ndim)
    return flax_key, read_permuted(state_dict, key, TO_FLAX_PERM[ndim] if flax_key[1][-1] == "kernel" else None)


def _flax_item(state_dict: Mapping, key: str) -> Tuple[FlaxKey, np.ndarray]:
    col, _, rest = key.partition("/")
    return (col, tuple(rest.split("/"))), read_permuted(state_dict, key)


TIMM = Layout("timm", _timm_item, lambda k: flax_to_timm_key(*k), timm_shape)
FLAX = Layout("flax", _flax_item, lambda k: "/".join((k[0], *k[1])), lambda k, s: tuple(s))


def _workers() -> int:
    try:
        return max(1, min(8, len(os.sched_getaffinity(0))))
    except AttributeError:  # not on Linux
        return max(1, min(8, os.cpu_count() or 1))


def _expected_and_items(model, example_input, layout: Layout, state_dict):
    """``(expected variables, {key: layout.item(state_dict, key)})``, computed at the same time:
    tracing the model is Python-bound (about 0.4 s for a 100-layer network, once per
    architecture) while reading and transposing tensors is file I/O and numpy copies, which
    release the GIL, so worker threads do those, several tensors at once."""
    keys = list(state_dict)
    with ThreadPoolExecutor(_workers()) as pool:
        items = pool.map(lambda k: layout.item(state_dict, k), keys)
        expected = expected_variables(model, example_input)
        return expected, dict(zip(keys, items))


def _to_device(arrays: Dict[FlaxKey, np.ndarray], expected) -> Dict[FlaxKey, jax.Array]:
    """numpy -> JAX arrays of the model's dtypes, in one ``device_put`` (one call, not one per
    array). On CPU, JAX adopts the fresh, aligned numpy buffers without copying them."""
    keys = list(arrays)
    values = [arrays[k] if arrays[k].dtype == expected[k].dtype else permuted_copy(arrays[k], dtype=expected[k].dtype)
              for k in keys]
    arrays.clear()
    return dict(zip(keys, jax.device_put(values)))


def _fmt(keys, limit=12):
    keys = sorted(keys)
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _mismatch_error(model, missing, unexpected, mismatched, note: str = "") -> CheckpointError:
    name = getattr(model, "variant", "") or type(model).__name__
    lines = [f"Checkpoint does not match {name}{note}:"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}), in the model but not the checkpoint: {_fmt(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}), in the checkpoint but not the model: "
                     f"{_fmt(unexpected)}")
    if mismatched:
        lines.append(f"  shape mismatches ({len(mismatched)}): {_fmt(mismatched, 6)}")
    return CheckpointError("\n".join(lines))


def _registered_architecture(name: str) -> str:
    """The architecture of a name a file records (``arch`` or ``arch.tag``), or '' for one not
    registered here (nothing to hold the model against)."""
    try:
        return get_pretrained_cfg(name)["architecture"]
    except ValueError:
        return ""


def _model_architecture(model) -> str:
    variant = getattr(model, "variant", "")
    return get_pretrained_cfg(variant)["architecture"] if variant else ""


def load_variables(model, state_dict: Mapping[str, np.ndarray], *, skip_missing: Tuple[str, ...] = (),
                   example_input=None, rng: Optional[jax.Array] = None) -> dict:
    """The variables ``{'params', 'batch_stats'}`` of ``model`` from a checkpoint mapping (numpy
    arrays, or a lazy file from ``load_state_dict``) in either layout: timm's keys (NCHW) or
    ours (``params/...``, whose recorded architecture must be the model's).

    Raises ``CheckpointError`` naming every missing key, unexpected key and shape mismatch.
    ``skip_missing``: key prefixes (e.g. timm's ``'fc.'``) allowed to be absent; they keep a
    fresh initialisation (``convert.fresh_variables`` of those keys alone, from ``rng``).
    ``example_input`` (an array or ``jax.ShapeDtypeStruct``) lets any
    Flax module named after its timm counterpart be converted, not only registered models.

    Memory: each tensor is read (from a lazy file mapping, see ``SafetensorsFile``), put in
    Flax's layout and handed to JAX one at a time, so the peak is about one copy of the
    weights, not a numpy and a JAX copy of everything."""
    layout = FLAX if is_flax_layout(state_dict) else TIMM
    expected, items = _expected_and_items(model, example_input, layout, state_dict)
    names = {layout.name(k): k for k in expected}
    out, unexpected, mismatched = {}, [], []
    for key, (flax_key, value) in items.items():
        if flax_key not in expected:
            unexpected.append(key)
        elif value.shape != expected[flax_key].shape:
            mismatched.append(f"{key}: checkpoint {layout.shape(flax_key, value.shape)} vs model "
                              f"{layout.shape(flax_key, expected[flax_key].shape)}")
        else:
            out[flax_key] = value
    del items
    out = _to_device(out, expected)
    for k in expected:
        if k not in out and k[1][-1] == "num_batches_tracked":  # optional, as torch's BatchNorm loads it
            out[k] = jnp.zeros(expected[k].shape, expected[k].dtype)
    missing = [n for n, k in names.items() if k not in out and not n.startswith(tuple(skip_missing))]
    written_for = (getattr(state_dict, "metadata", None) or {}).get("architecture", "")
    arch = _model_architecture(model)
    if written_for and arch and _registered_architecture(written_for) not in ("", arch):  # before any key list
        raise CheckpointError(f"Checkpoint was written for {written_for}, not {arch}. Load it as {written_for}: "
                              f"create_model('{written_for}', checkpoint_path=...) in Python, the model name "
                              f"{written_for} on the command line.")
    if missing or unexpected or mismatched:
        note = f" (the checkpoint was written for {written_for})" if written_for else ""
        raise _mismatch_error(model, missing, unexpected, mismatched, note)
    if len(out) < len(expected):  # skipped keys (a new head): only they are initialised
        out.update(fresh_variables(model, rng, example_input, only={k for k in expected if k not in out}))
    return unflatten_variables(out)


def convert_timm_state_dict(model, state_dict: Mapping[str, np.ndarray], *,
                            skip_missing: Tuple[str, ...] = (), example_input=None) -> dict:
    """timm state dict (numpy arrays, or torch tensors of any dtype as ``model.state_dict()``
    gives them; NCHW, timm's keys) -> Flax variables ``{'params', 'batch_stats'}``;
    ``load_variables`` with the layout stated. Raises ``CheckpointError`` if the keys are ours
    (``params/...``) rather than timm's."""
    if any(type(v).__module__.partition(".")[0] == "torch" for v in state_dict.values()):
        state_dict = torch_to_numpy(dict(state_dict))  # bfloat16 too (np.asarray of one fails)
    if is_flax_layout(state_dict):
        raise CheckpointError("expected a timm state dict (keys like 'stem.conv.weight'), found Flax variables "
                              "('params/...'): use load_variables")
    return load_variables(model, state_dict, skip_missing=skip_missing, example_input=example_input)
