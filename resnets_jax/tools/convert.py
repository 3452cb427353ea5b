"""``resnets-jax convert``: timm checkpoints (a file, or a tag's hub weights) into Flax
checkpoint files, one or many, each written atomically and optionally verified against timm
before it is moved into place. A failed conversion leaves no file behind and never touches
an existing one; an existing output is replaced only with ``force``."""
import dataclasses
import os
import re
import time
from typing import Callable, Optional

import jax
import numpy as np

from ..factory import create_model, resolve_pretrained_cfg
from .._optional import require
from ..io import CheckpointError, is_flax_checkpoint
from ..io.bit_npz import bit_npz_head_width
from ..io.files import atomic_output, check_output
from ..io.flax_checkpoint import resolve_format, write_flax_checkpoint
from ..io.formats import is_bit_npz
from ..io.kinds import open_checkpoint
from ..io.formats import read_model_metadata
from ..io.run_dir import resolve_checkpoint_path
from ..pretrained import pretrained_file
from ..registry import list_pretrained
from .verify import VERIFY_NEEDS, VERIFY_TOL, verify_with_timm


@dataclasses.dataclass
class ConversionResult:
    name: str
    output: str
    format: str
    checkpoint: str          # the timm checkpoint converted (a hub cache path with from_hub)
    num_params: int
    file_bytes: int
    seconds: float
    parity: Optional[float]  # max |Δlogit| / max |logit| against timm; None when not verified
    note: str = ""           # e.g. why verification did not run

def convert_checkpoint(name: str, output: str, *, checkpoint_path: Optional[str] = None, from_hub: bool = False,
                       format: Optional[str] = None, force: bool = False, verify: bool = False,
                       cache_dir: Optional[str] = None, use_ema: bool = True, verify_tol: float = VERIFY_TOL,
                       num_classes: Optional[int] = None, log: Callable[[str], None] = lambda s: None
                       ) -> ConversionResult:
    """Convert the timm checkpoint of ``name`` (``checkpoint_path``, or the tag's hub weights
    with ``from_hub``; ``hf-hub:<org>/<repo>`` names work too) into a Flax checkpoint at
    ``output``. With ``verify`` (torch and timm needed), the written file is loaded back and held
    against timm's model on the same checkpoint before it is moved into place; a parity
    figure above ``verify_tol`` fails the conversion. Nothing is written on failure. The
    source's recorded class names and eval data config (``io.model_metadata``) are carried into
    the output; ``num_classes`` is for a file that records none (a timm checkpoint with a new
    head). A fine-tuning run directory stands for its best export.
    ``verify`` without timm and torch: ``MissingExtraError`` before any work."""
    start = time.perf_counter()
    if (checkpoint_path is None) == (not from_hub):
        raise ValueError("Give exactly one weights source: a checkpoint file (--checkpoint PATH) or --from-hub")
    if from_hub and num_classes is not None:
        raise ValueError("--num-classes is for a --checkpoint file that does not record its classes, not --from-hub")
    if verify:
        require(*VERIFY_NEEDS)
    output = check_output(output, force)  # before any work: fail fast
    format = resolve_format(output, format)
    if from_hub:
        log(f"fetching {name} from the hub")
        checkpoint_path = pretrained_file(resolve_pretrained_cfg(name, cache_dir), cache_dir=cache_dir)
    source = open_checkpoint(resolve_checkpoint_path(checkpoint_path, log))  # its kind, decided once
    meta = read_model_metadata(source)
    if from_hub:
        model, variables = create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=source),
                                        cache_dir=cache_dir)
    else:
        model, variables = create_model(name, checkpoint_path=source, use_ema=use_ema, cache_dir=cache_dir,
                                        num_classes=num_classes)
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(variables["params"]))
    if is_flax_checkpoint(source):
        verify_note = "the source is already a resnets_jax checkpoint"
    else:
        verify_note = _bit_npz_note(source, model)
    parity = None
    with atomic_output(output, force) as tmp:
        write_flax_checkpoint(tmp, model, variables, format, label_names=meta.label_names,
                              data_config=meta.data_config)
        del variables  # verification loads the written file back: hold one copy at a time
        if verify and not verify_note:
            log(f"verifying {name} against timm")
            model, variables = create_model(name, checkpoint_path=tmp, cache_dir=cache_dir)
            parity = verify_with_timm(model, variables, source.path, use_ema=use_ema)
            if not parity <= verify_tol:
                raise CheckpointError(
                    f"Verification failed for {name}: max |logit difference| / max |logit| = {parity:.2e} "
                    f"against timm, above {verify_tol:.0e}; nothing written")
    return ConversionResult(name=name, output=output, format=format, checkpoint=source.path,
                            num_params=num_params, file_bytes=os.path.getsize(output),
                            seconds=time.perf_counter() - start, parity=parity,
                            note=verify_note if verify else "")


def _bit_npz_note(path: str, model) -> str:
    """Why timm cannot be held against a model read from a BiT ``.npz`` ('' when it can): timm
    reads one only by its ``.npz`` name, and a head of another width stays a random init in both."""
    if not is_bit_npz(path):
        return ""
    if not os.fspath(path).lower().endswith(".npz"):
        return "timm reads a BiT checkpoint only from a file named .npz"
    if bit_npz_head_width(path) != model.num_classes:
        return "the BiT file's head has another width, so both heads are random inits"
    return ""


def expand_names(names):
    """Names and patterns over the pretrained tags (``'resnetv2_50*'``) -> names, in order,
    without duplicates. ``ValueError`` for a pattern that matches nothing."""
    out = []
    for n in names:
        matches = list_pretrained(n) if any(c in n for c in "*?[") else [n]
        if not matches:
            raise ValueError(f"no pretrained model matches {n!r}")
        out += [m for m in matches if m not in out]
    return out


def output_name(name: str, format: str) -> str:
    """A file name for ``name``'s checkpoint: ``resnetv2_50.a1h_in1k.safetensors``."""
    return re.sub(r"[^\w.\-]+", "_", name.replace("hf-hub:", "hf-hub_")) + f".{format}"


def convert_many(names, output_dir: str, *, format: str = "safetensors", log: Callable[[str], None] = lambda s: None,
                 **kwargs):
    """``convert_checkpoint`` for each of ``names`` (patterns expanded) into
    ``output_dir/<name>.<format>`` (created if missing). A failure does not stop the others.
    Returns ``(results, errors)``: the ``ConversionResult``s, and ``(name, message)`` per failure.
    ``verify`` without timm and torch: ``MissingExtraError`` before any work."""
    if kwargs.get("verify"):
        require(*VERIFY_NEEDS)
    os.makedirs(output_dir, exist_ok=True)
    results, errors = [], []
    for name in expand_names(names):
        try:
            results.append(convert_checkpoint(name, os.path.join(output_dir, output_name(name, format)),
                                              format=format, log=log, **kwargs))
        except (ValueError, OSError) as e:  # report it and go on with the others
            errors.append((name, f"{type(e).__name__}: {e}"))
    return results, errors
