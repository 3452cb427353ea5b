"""What a weights file says about the model it holds, as timm's ``pretrained_cfg`` says it:
``num_classes``, ``in_chans``, ``label_names`` and the eval data config (``input_size``,
``mean``, ``std``, ``interpolation``, ``crop_pct``, ``crop_mode``), kept in a safetensors
header's ``__metadata__`` (or a msgpack checkpoint's ``__resnets_jax__`` entry). Values are
strings, as safetensors requires: numbers as decimal text, structured values (lists) as JSON,
under timm's ``pretrained_cfg`` key names.

    meta = read_model_metadata("run/model_best.safetensors")     # io.formats
    meta.num_classes, meta.label_names, meta.data_config   # 2, ['blue', 'red'], {'input_size': (3, 32, 32), ...}

A file without these keys (a timm checkpoint, a file of an earlier version) gives ``None`` /
an empty data config: the model's tag then decides, as before.
"""
import dataclasses
import json
from typing import Dict, List, Mapping, Optional, Sequence

from .errors import CheckpointError

# timm's pretrained_cfg keys of the eval data config (timm.data.resolve_data_config's output)
DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
_INT_KEYS = ("num_classes", "in_chans")
_JSON_KEYS = ("label_names", "input_size", "mean", "std")  # structured values: JSON text
_FLOAT_KEYS = ("crop_pct",)


@dataclasses.dataclass(frozen=True)
class ModelMetadata:
    """A weights file's description of its model; ``None`` / ``{}`` where the file says nothing."""
    num_classes: Optional[int] = None
    in_chans: Optional[int] = None
    label_names: Optional[List[str]] = None
    data_config: Dict = dataclasses.field(default_factory=dict)  # the DATA_CONFIG_KEYS the file has


def encode_model_metadata(num_classes: Optional[int] = None, in_chans: Optional[int] = None,
                          label_names: Optional[Sequence[str]] = None,
                          data_config: Optional[Mapping] = None) -> Dict[str, str]:
    """The header entries (strings) that record a model's classes and eval data config.
    ``data_config``: timm's ``resolve_data_config`` dict (keys other than ``DATA_CONFIG_KEYS``
    are left out). ``ValueError`` when ``label_names`` does not hold ``num_classes`` names."""
    if label_names is not None and num_classes is not None and len(label_names) != num_classes:
        raise ValueError(f"{len(label_names)} label names for a model of num_classes={num_classes}: expected one "
                         "name per class")
    values = {"num_classes": num_classes, "in_chans": in_chans,
              "label_names": list(map(str, label_names)) if label_names is not None else None,
              **{k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in (data_config or {}).items()
                 if k in DATA_CONFIG_KEYS}}
    return {k: json.dumps(v) if k in _JSON_KEYS else str(v) for k, v in values.items() if v is not None}


def decode_model_metadata(meta: Mapping[str, str], where: str = "checkpoint") -> ModelMetadata:
    """``encode_model_metadata``'s entries (other keys ignored) -> a ``ModelMetadata``. A value
    that does not parse is a ``CheckpointError`` naming ``where``, the key and the value."""
    parsed = {}
    for key in (*_INT_KEYS, "label_names", *DATA_CONFIG_KEYS):
        if key not in meta:
            continue
        text = meta[key]
        try:
            value = json.loads(text) if key in _JSON_KEYS else int(text) if key in _INT_KEYS else \
                float(text) if key in _FLOAT_KEYS else str(text)
            _check(key, value)
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"{where}: metadata {key}={text!r} does not parse ({e})") from None
        parsed[key] = tuple(value) if key in ("input_size", "mean", "std") else value
    return ModelMetadata(num_classes=parsed.pop("num_classes", None), in_chans=parsed.pop("in_chans", None),
                         label_names=parsed.pop("label_names", None), data_config=parsed)


def _check(key: str, value) -> None:
    if key == "label_names" and not (isinstance(value, list) and all(isinstance(x, str) for x in value)):
        raise ValueError("expected a JSON list of strings")
    if key == "input_size" and not (isinstance(value, list) and len(value) == 3 and all(
            isinstance(x, int) and x > 0 for x in value)):
        raise ValueError("expected [channels, height, width], positive integers")
    if key in ("mean", "std") and not (isinstance(value, list) and value and all(
            isinstance(x, (int, float)) for x in value)):
        raise ValueError("expected a JSON list of numbers")
    if key in _INT_KEYS and value < 0:
        raise ValueError("expected a non-negative integer")
