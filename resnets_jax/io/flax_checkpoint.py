"""Our own checkpoint format: a model's Flax variables as they are (``params/...`` and
``batch_stats/...``), in safetensors (flattened keys, metadata in the header) or msgpack
(``flax.serialization``), with what the model was built as."""
import os
from typing import Dict, Mapping, Optional

import jax
import numpy as np
from flax import traverse_util

from ..registry import get_pretrained_cfg, parse_hf_hub_name
from .errors import CheckpointError
from .files import check_output, write_atomic
from .model_metadata import encode_model_metadata
from .safetensors import write_safetensors

FLAX_FORMAT = "resnets_jax"  # the ``format`` metadata of the checkpoints save_checkpoint writes

_FLAX_METADATA_KEY = "__resnets_jax__"  # where msgpack files keep the metadata

_FLAX_COLLECTIONS = ("params", "batch_stats")

class FlaxStateDict(dict):
    """A flattened Flax checkpoint read from msgpack: ``'params/stem/conv/kernel' -> array``."""
    metadata: Dict[str, str] = {}

def flatten_variables(variables: Mapping) -> Dict[str, np.ndarray]:
    """``{'params': {'stem': {'conv': {'kernel': x}}}}`` -> ``{'params/stem/conv/kernel': x}`` (numpy)."""
    return {f"{col}/{path}": np.asarray(v) for col in variables
            for path, v in traverse_util.flatten_dict(dict(variables[col]), sep="/").items()}

def is_flax_layout(state_dict: Mapping) -> bool:
    """Whether a checkpoint holds Flax variables (``params/...``) rather than timm's keys."""
    return len(state_dict) > 0 and all(k.split("/", 1)[0] in _FLAX_COLLECTIONS and "/" in k for k in state_dict)

def checkpoint_metadata(model, label_names=None, data_config=None) -> Dict[str, str]:
    """What ``save_checkpoint`` records beside the weights (all strings, as safetensors wants):
    the format, the architecture and ``io.model_metadata``'s entries (``num_classes``,
    ``in_chans``, and ``label_names`` / the eval data config when given)."""
    from .. import __version__
    meta = {"format": FLAX_FORMAT, "format_version": "1", "resnets_jax_version": __version__,
            **encode_model_metadata(model.num_classes, model.in_chans, label_names, data_config)}
    variant = getattr(model, "variant", "")
    if variant:
        if parse_hf_hub_name(variant):
            meta["architecture"] = get_pretrained_cfg(variant)["architecture"]
            meta["source"] = variant
        else:
            meta["architecture"] = variant
    return meta

def write_flax_checkpoint(path: str, model, variables: Mapping, format: str = "safetensors", *,
                          label_names=None, data_config=None) -> None:
    """Write ``variables`` to ``path`` as is (no temp file: ``save_checkpoint`` is the atomic,
    no-clobber way). ``format``: ``'safetensors'`` (flattened keys ``params/stem/conv/kernel``,
    metadata in the header) or ``'msgpack'`` (``flax.serialization``, the nested tree plus a
    ``__resnets_jax__`` entry). ``label_names``, ``data_config``: recorded (``checkpoint_metadata``)."""
    meta = checkpoint_metadata(model, label_names, data_config)
    if format == "safetensors":
        write_safetensors(path, flatten_variables({c: variables[c] for c in variables}), meta)
    elif format == "msgpack":
        from flax import serialization
        tree = {col: jax.tree_util.tree_map(np.asarray, dict(variables[col])) for col in variables}
        tree[_FLAX_METADATA_KEY] = meta
        with open(path, "wb") as f:
            f.write(serialization.msgpack_serialize(tree))
    else:
        raise ValueError(f"Unknown checkpoint format {format!r}: expected 'safetensors' or 'msgpack'")

def read_flax_msgpack(path: str) -> FlaxStateDict:
    """A msgpack Flax checkpoint (``flax.serialization``) -> flattened ``params/...`` keys."""
    from flax import serialization
    with open(path, "rb") as f:
        data = f.read()
    try:
        tree = serialization.msgpack_restore(data)
    except Exception as e:  # msgpack raises several types on bad input; one clear error
        raise CheckpointError(f"{path}: not a msgpack Flax checkpoint ({type(e).__name__}: {e})") from None
    del data
    if not isinstance(tree, dict):
        raise CheckpointError(f"{path}: not a Flax checkpoint (a msgpack {type(tree).__name__}, expected a map)")
    meta = tree.pop(_FLAX_METADATA_KEY, None) or {}
    out = FlaxStateDict()
    out.metadata = {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}
    for path_, v in traverse_util.flatten_dict(tree, sep="/").items():
        if not isinstance(v, np.ndarray) and not np.isscalar(v):
            raise CheckpointError(f"{path}: not a Flax checkpoint ({path_} is a {type(v).__name__}, not an array)")
        out[path_] = np.asarray(v)
    return out


FORMATS = ("safetensors", "msgpack")

# Suffixes a reader goes by: a checkpoint whose name says another format is refused (safetensors
# bytes in a .npz would be handed to np.load, msgpack in a .safetensors to safetensors)
NAMED_FORMATS = {".safetensors": "safetensors", ".msgpack": "msgpack", ".npz": "npz", ".npy": "npy",
                 ".json": "json", ".onnx": "onnx", ".stablehlo": "stablehlo"}


def resolve_format(output: str, format: Optional[str] = None) -> str:
    """``format`` if given, else from the file name: ``.msgpack`` is msgpack, anything else
    safetensors. ``ValueError`` for an unknown format, or a name whose suffix says another
    format (``NAMED_FORMATS``)."""
    if format is not None and format not in FORMATS:
        raise ValueError(f"Unknown checkpoint format {format!r}: expected one of {', '.join(FORMATS)}")
    suffix = os.path.splitext(os.fspath(output))[1].lower()
    named = NAMED_FORMATS.get(suffix)
    format = format or ("msgpack" if named == "msgpack" else "safetensors")
    if named and named != format:
        hint = f" or --format {named}" if named in FORMATS else ""
        raise ValueError(f"{output}: a {format} checkpoint named {suffix} would be misread by what goes by the "
                         f"name; name it .{format}{hint}")
    return format


def save_checkpoint(model, variables, output: str, *, format: Optional[str] = None, force: bool = False,
                    label_names=None, data_config=None) -> str:
    """Write ``variables`` as a Flax checkpoint that ``create_model(name, checkpoint_path=output)``
    loads: safetensors (flattened keys ``params/stem/conv/kernel``, ``batch_stats/...``, with
    metadata ``format: resnets_jax``, ``architecture``, ``num_classes``, ``in_chans``, and
    ``label_names`` (a name per class) and ``data_config`` (timm's eval data config) when given,
    which every command that reads the file uses) unless ``format='msgpack'`` or the name ends in
    ``.msgpack``. Atomic; refuses to overwrite without ``force``. Returns the absolute path."""
    output = check_output(output, force)
    format = resolve_format(output, format)
    return write_atomic(output, lambda tmp: write_flax_checkpoint(tmp, model, variables, format,
                                                                  label_names=label_names, data_config=data_config),
                        force)
