"""Weights for the demo and the notebooks: the tag's pretrained weights from the hub when they
can be had, else a clearly labelled random-init stand-in in timm's layout."""
import dataclasses
import os
from typing import Optional

import jax

from .._optional import optional_import
from ..convert import export_timm_state_dict
from ..factory import create_model, resolve_pretrained_cfg
from ..io import CheckpointError
from ..io.files import write_atomic
from ..io.safetensors import write_safetensors
from ..pretrained import pretrained_file
from .verify import timm_available

FALLBACK_BANNER = "HUB UNREACHABLE - LOCAL FALLBACK"

@dataclasses.dataclass
class TimmCheckpoint:
    path: str
    pretrained: bool  # False: a random-init stand-in (predictions meaningless)
    message: str      # what to show the user: where the weights came from

def timm_checkpoint(name: str, fallback_dir: str, cache_dir: Optional[str] = None) -> TimmCheckpoint:
    """A timm checkpoint file for ``name`` (``arch.tag``): the tag's pretrained weights from the
    Hugging Face hub (or its cache) when they can be had, otherwise a clearly labelled stand-in,
    a random-init checkpoint in timm's layout written to ``fallback_dir`` (by timm when it is
    installed, else by ``export_timm_state_dict``). What the demo, the CLI and the notebooks use."""
    try:
        path = pretrained_file(resolve_pretrained_cfg(name, cache_dir), cache_dir=cache_dir)
        return TimmCheckpoint(path, True, f"Pretrained weights for {name} from the Hugging Face hub: {path}")
    except CheckpointError as e:
        reason = " ".join(str(e).split())  # whole: huggingface_hub's messages break lines mid-sentence
    os.makedirs(fallback_dir, exist_ok=True)
    path = os.path.join(os.path.abspath(fallback_dir), f"{name.replace('.', '_')}_random_init.safetensors")
    if not os.path.exists(path):
        write_atomic(path, lambda tmp: write_safetensors(tmp, _random_timm_state_dict(name)))
    return TimmCheckpoint(path, False, (
        f"{FALLBACK_BANNER}: {name} weights could not be fetched, so this run uses a RANDOM-INIT "
        f"checkpoint in timm's layout, {path}. Its predictions are meaningless; what it shows is the "
        f"conversion and the JAX-vs-timm agreement.\n  (hub error: {reason})"))

def _random_timm_state_dict(name: str) -> dict:
    arch = resolve_pretrained_cfg(name)["architecture"]
    if timm_available():
        torch = optional_import("torch", "a timm random init")
        timm = optional_import("timm", "a timm random init")
        torch.manual_seed(0)
        return {k: v.numpy() for k, v in timm.create_model(arch).state_dict().items()}
    model, variables = create_model(arch, rng=jax.random.PRNGKey(0))
    return export_timm_state_dict(model, variables)
