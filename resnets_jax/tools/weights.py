"""A model and what its weights file says about it, for the commands that read weights
(``predict``, ``embed``, ``validate``): ``--weights``/``--checkpoint`` (a file, or a fine-tuning
run directory: its best export), else the tag's hub weights; the file's recorded class names
label the predictions and its eval data config drives the preprocessing (``io.model_metadata``)."""
import dataclasses
import sys
from typing import Any, Callable, List, Optional

from ..data import resolve_data_config
from ..factory import create_model, resolve_pretrained_cfg
from ..io.formats import read_model_metadata
from ..io.model_metadata import ModelMetadata
from ..io.run_dir import resolve_checkpoint_path
from .predict import class_names


@dataclasses.dataclass
class LoadedModel:
    model: Any
    variables: dict
    data_config: dict                  # the eval data config: the file's where it records one, else the tag's
    label_names: Optional[List[str]]   # a name per class: the file's, else the tag's / ImageNet's, else None
    weights: Optional[str]             # the file read (a run directory resolved), None for hub weights
    metadata: ModelMetadata            # what the file records (empty for hub weights and timm's files)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def load_model(name: str, weights: Optional[str] = None, *, num_classes: Optional[int] = None,
               use_ema: bool = True, use_test_size: bool = True,
               log: Callable[[str], None] = _stderr) -> LoadedModel:
    """``name`` with ``weights`` (a checkpoint file of any kind ``create_model`` reads, or a
    fine-tuning run directory: its best, else latest, export, said through ``log``), else the
    tag's hub weights. ``num_classes``: for a file that records none (a timm checkpoint with a
    new head); one that differs from the file's record is a ``ValueError`` naming both. The data
    config is the tag's (its test size with ``use_test_size``, as timm's validate.py) updated
    with the file's record, which is the eval config the weights were fine-tuned for."""
    if weights:
        path = resolve_checkpoint_path(weights, log)
        meta = read_model_metadata(path)
        model, variables = create_model(name, checkpoint_path=path, use_ema=use_ema, num_classes=num_classes)
    else:
        hub_classes = resolve_pretrained_cfg(name).get("num_classes")
        if num_classes is not None and num_classes != hub_classes:
            raise ValueError(f"--num-classes {num_classes}: {name}'s hub weights have {hub_classes} classes; "
                             "--num-classes is for a --weights file that does not record its classes")
        path, meta = None, ModelMetadata()
        model, variables = create_model(name, pretrained=True)
    data_config = {**resolve_data_config(model, use_test_size=use_test_size), **meta.data_config}
    return LoadedModel(model, variables, data_config, meta.label_names or class_names(model), path, meta)
