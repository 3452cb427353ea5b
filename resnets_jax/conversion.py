"""Flax checkpoint files: write them safely, convert timm checkpoints into them, verify them.

What ``resnets-jax convert`` and ``convert/convert_many.py`` run. A checkpoint is written to a
temporary file in the output's directory and moved into place with ``os.replace`` only once it
is complete (and, with ``verify``, loaded back and checked against timm): a failed conversion
leaves no file behind and never touches an existing one, and an existing output is replaced
only with ``force``.
"""
import dataclasses
import os
import time
from typing import Callable, Optional

import jax
import numpy as np

from . import weights
from .files import _commit, _temp_beside, write_atomic
from .registry import get_pretrained_cfg, parse_hf_hub_name
from .xla import jit

FORMATS = ("safetensors", "msgpack")
TIMM_SAFETENSORS_METADATA = {"format": "pt"}  # what safetensors.torch.save_file (timm's writer) records
VERIFY_TOL = 1e-4  # max |Δlogit| / max |logit| against timm, fp32: the parity suite's bound


def resolve_format(output: str, format: Optional[str] = None) -> str:
    """``format`` if given, else from the file name: ``.msgpack`` is msgpack, anything else safetensors."""
    if format is None:
        return "msgpack" if os.fspath(output).endswith(".msgpack") else "safetensors"
    if format not in FORMATS:
        raise ValueError(f"Unknown checkpoint format {format!r}: expected one of {', '.join(FORMATS)}")
    return format


def check_output(output: str, force: bool = False) -> str:
    """The absolute output path, after the checks a write must pass: its directory exists, it is
    not a directory, and it does not exist unless ``force``."""
    output = os.path.abspath(os.fspath(output))
    directory = os.path.dirname(output)
    if not os.path.isdir(directory):
        raise ValueError(f"{output}: the output directory {directory} does not exist")
    if os.path.isdir(output):
        raise ValueError(f"{output} is a directory, expected a file name")
    if os.path.exists(output) and not force:
        raise ValueError(f"{output} exists; pass --force (force=True) to overwrite it")
    return output


def save_checkpoint(model, variables, output: str, *, format: Optional[str] = None, force: bool = False) -> str:
    """Write ``variables`` as a Flax checkpoint that ``create_model(name, checkpoint_path=output)``
    loads: safetensors (flattened keys ``params/stem/conv/kernel``, ``batch_stats/...``, with
    metadata ``format: resnets_jax``, ``architecture``, ``num_classes``, ``in_chans``) unless
    ``format='msgpack'`` or the name ends in ``.msgpack``. Atomic; refuses to overwrite
    without ``force``. Returns the absolute path."""
    output = check_output(output, force)
    format = resolve_format(output, format)
    return write_atomic(output, lambda tmp: weights.write_flax_checkpoint(tmp, model, variables, format), force)


def export_timm_checkpoint(model, variables, output: str, *, force: bool = False) -> str:
    """Write ``variables`` as a timm checkpoint (``.safetensors``, timm's keys and layout) that
    ``timm.create_model(arch, num_classes=model.num_classes, checkpoint_path=output)`` loads.
    Atomic; refuses to overwrite without ``force``. Returns the absolute path."""
    if not os.fspath(output).endswith(".safetensors"):  # timm reads any other name with torch.load
        raise ValueError(f"{output}: a timm export is a .safetensors file; name it *.safetensors")
    output = check_output(output, force)
    state_dict = weights.export_timm_state_dict(model, variables)
    return write_atomic(output, lambda tmp: weights.write_safetensors(tmp, state_dict, TIMM_SAFETENSORS_METADATA),
                        force)


# --------------------------------------------------------------------------- verification

def timm_available() -> bool:
    try:
        import timm  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _verification_input(model) -> np.ndarray:
    """The bundled photo, preprocessed as the model's data config says (random values for
    models that do not take 3 channels)."""
    from .data import create_transform, resolve_data_config, sample_image_path
    from PIL import Image
    cfg = resolve_data_config(model)
    if model.in_chans != 3:
        return np.random.default_rng(0).standard_normal((1, *cfg["input_size"][1:], model.in_chans), np.float32)
    with Image.open(sample_image_path()) as img:
        return create_transform(**cfg)(img)[None]


def timm_logits(model, checkpoint_path: str, x: np.ndarray, *, use_ema: bool = False) -> np.ndarray:
    """timm's logits (float64 numpy) for NHWC ``x``: timm's model of ``model``'s architecture
    and class count, loading ``checkpoint_path`` with timm's own reader. Needs torch and timm."""
    import timm
    import torch
    cfg = get_pretrained_cfg(model.variant)
    args = {k: v for k, v in cfg.get("model_args", {}).items() if k not in ("num_classes", "in_chans")}
    tmodel = timm.create_model(cfg["architecture"], pretrained=False, num_classes=model.num_classes,
                               in_chans=model.in_chans, **args)
    timm.models.load_checkpoint(tmodel, checkpoint_path, use_ema=use_ema, strict=True)
    with torch.no_grad():
        return tmodel.eval()(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).double().numpy()


def verify_with_timm(model, variables, checkpoint_path: str, *, use_ema: bool = False) -> float:
    """max |Δlogit| / max |logit| between ``model`` and timm's model loading ``checkpoint_path``
    with timm's own reader, on the bundled photo. Needs torch and timm."""
    x = _verification_input(model)
    with jax.default_matmul_precision("highest"):
        ours = np.asarray(jit(model.apply)(variables, x), np.float64)
    theirs = timm_logits(model, checkpoint_path, x, use_ema=use_ema)
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


# --------------------------------------------------------------------------- weights for demos

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
        path = weights.download_pretrained(get_pretrained_cfg(name), cache_dir=cache_dir)
        return TimmCheckpoint(path, True, f"Pretrained weights for {name} from the Hugging Face hub: {path}")
    except weights.CheckpointError as e:
        reason = str(e).splitlines()[0][:200]
    os.makedirs(fallback_dir, exist_ok=True)
    path = os.path.join(os.path.abspath(fallback_dir), f"{name.replace('.', '_')}_random_init.safetensors")
    if not os.path.exists(path):
        write_atomic(path, lambda tmp: weights.write_safetensors(tmp, _random_timm_state_dict(name)))
    return TimmCheckpoint(path, False, (
        f"{FALLBACK_BANNER}: {name} weights could not be fetched, so this run uses a RANDOM-INIT "
        f"checkpoint in timm's layout, {path}. Its predictions are meaningless; what it shows is the "
        f"conversion and the JAX-vs-timm agreement.\n  (hub error: {reason})"))


def _random_timm_state_dict(name: str) -> dict:
    arch = get_pretrained_cfg(name)["architecture"]
    if timm_available():
        import timm
        import torch
        torch.manual_seed(0)
        return {k: v.numpy() for k, v in timm.create_model(arch).state_dict().items()}
    from .builder import create_model
    model, variables = create_model(arch, rng=jax.random.PRNGKey(0))
    return weights.export_timm_state_dict(model, variables)


# --------------------------------------------------------------------------- conversion

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
                       cache_dir: Optional[str] = None, use_ema: bool = False, verify_tol: float = VERIFY_TOL,
                       log: Callable[[str], None] = lambda s: None) -> ConversionResult:
    """Convert the timm checkpoint of ``name`` (``checkpoint_path``, or the tag's hub weights
    with ``from_hub``; ``hf-hub:<org>/<repo>`` names work too) into a Flax checkpoint at
    ``output``. With ``verify`` (and timm installed), the written file is loaded back and held
    against timm's model on the same checkpoint before it is moved into place; a parity
    figure above ``verify_tol`` fails the conversion. Nothing is written on failure."""
    start = time.perf_counter()
    if (checkpoint_path is None) == (not from_hub):
        raise ValueError("Give exactly one weights source: a checkpoint file (--checkpoint PATH) or --from-hub")
    output = check_output(output, force)  # before any work: fail fast
    format = resolve_format(output, format)
    if from_hub:
        if parse_hf_hub_name(name):
            weights.hf_hub_config(name, cache_dir=cache_dir)
        log(f"fetching {name} from the hub")
        checkpoint_path = weights.download_pretrained(get_pretrained_cfg(name), cache_dir=cache_dir)
    from .builder import create_model
    model, variables = create_model(name, checkpoint_path=checkpoint_path, use_ema=use_ema, cache_dir=cache_dir)
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(variables["params"]))
    if weights.is_flax_checkpoint(checkpoint_path):
        verify_note = "the source is already a resnets_jax checkpoint"
    else:
        verify_note = "" if timm_available() else "timm is not installed"
    tmp = _temp_beside(output)
    try:
        weights.write_flax_checkpoint(tmp, model, variables, format)
        del variables  # verification loads the written file back: hold one copy at a time
        parity = None
        if verify and not verify_note:
            log(f"verifying {name} against timm")
            model, variables = create_model(name, checkpoint_path=tmp, cache_dir=cache_dir)
            parity = verify_with_timm(model, variables, checkpoint_path, use_ema=use_ema)
            if not parity <= verify_tol:
                raise weights.CheckpointError(
                    f"Verification failed for {name}: max |logit difference| / max |logit| = {parity:.2e} "
                    f"against timm, above {verify_tol:.0e}; nothing written")
        _commit(tmp, output, force)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return ConversionResult(name=name, output=output, format=format, checkpoint=os.fspath(checkpoint_path),
                            num_params=num_params, file_bytes=os.path.getsize(output),
                            seconds=time.perf_counter() - start, parity=parity,
                            note=verify_note if verify else "")
