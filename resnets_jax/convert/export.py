"""Flax -> timm: our variables under timm's keys and NCHW layout, in memory or as a
``.safetensors`` file that ``timm.create_model(..., checkpoint_path=...)`` loads."""
import os
from typing import Mapping

import numpy as np

from ..io.files import check_output, write_atomic
from ..io.model_metadata import encode_model_metadata
from ..io.safetensors import write_safetensors
from .keys import TO_TIMM_PERM, StateDict, flat_variables, flax_to_timm_key

TIMM_SAFETENSORS_METADATA = {"format": "pt"}  # what safetensors.torch.save_file (timm's writer) records


def export_timm_state_dict(model, variables: Mapping) -> StateDict:
    """Flax variables -> timm state dict (numpy, timm's keys and NCHW layout)."""
    out = {}
    for (col, path), v in flat_variables(variables).items():
        v = np.asarray(v)
        if path[-1] == "kernel":
            v = v.transpose(TO_TIMM_PERM[v.ndim])
        if path[-1] == "num_batches_tracked":
            v = v.astype(np.int64)
        out[flax_to_timm_key(col, path)] = np.array(v, order="C")  # a copy, 0-d stays 0-d
    return out


def export_timm_checkpoint(model, variables, output: str, *, force: bool = False, label_names=None,
                           data_config=None) -> str:
    """Write ``variables`` as a timm checkpoint (``.safetensors``, timm's keys and layout) that
    ``timm.create_model(arch, num_classes=model.num_classes, checkpoint_path=output)`` loads.
    The header's metadata (which timm ignores) records the model as timm's ``pretrained_cfg``
    would (``io.model_metadata``): ``architecture``, ``num_classes``, ``in_chans``, and
    ``label_names`` (a name per class) and ``data_config`` (the eval data config) when given;
    ``create_model(checkpoint_path=...)`` and every ``resnets-jax`` command read them back.
    Atomic; refuses to overwrite without ``force``. Returns the absolute path."""
    if not os.fspath(output).endswith(".safetensors"):  # timm reads any other name with torch.load
        raise ValueError(f"{output}: a timm export is a .safetensors file; name it *.safetensors")
    output = check_output(output, force)
    metadata = {**TIMM_SAFETENSORS_METADATA, **encode_model_metadata(model.num_classes, model.in_chans, label_names,
                                                                      data_config)}
    architecture = getattr(model, "variant", "").partition(".")[0]
    if architecture and not architecture.startswith("hf-hub:"):
        metadata["architecture"] = architecture
    state_dict = export_timm_state_dict(model, variables)
    return write_atomic(output, lambda tmp: write_safetensors(tmp, state_dict, metadata), force)
