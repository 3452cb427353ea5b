"""Our logits against timm's on the same checkpoint: what ``convert --verify``, the demo and the
notebooks show. Needs torch and timm (the ``torch`` extra: ``VERIFY_NEEDS``, ``timm_available``)."""
import jax
import numpy as np

from .._optional import available, optional_import
from ..data import create_transform, resolve_data_config, sample_image_path
from ..export.onnx import timm_module
from ..xla import jit

VERIFY_TOL = 1e-4  # max |Δlogit| / max |logit| against timm, fp32: the parity suite's bound
# ``_optional.require(*VERIFY_NEEDS)``: what holding a result against timm needs
VERIFY_NEEDS = ("holding the result against timm (--verify)", "torch", "timm")

def timm_available() -> bool:
    return available("torch", "timm")

def _verification_input(model) -> np.ndarray:
    """The bundled photo, preprocessed as the model's data config says (random values for
    models that do not take 3 channels)."""
    from PIL import Image
    cfg = resolve_data_config(model)
    if model.in_chans != 3:
        return np.random.default_rng(0).standard_normal((1, *cfg["input_size"][1:], model.in_chans), np.float32)
    with Image.open(sample_image_path()) as img:
        return create_transform(**cfg)(img)[None]

def timm_logits(model, checkpoint_path: str, x: np.ndarray, *, use_ema: bool = True) -> np.ndarray:
    """timm's logits (float64 numpy) for NHWC ``x``: timm's model of ``model``'s architecture
    and class count, loading ``checkpoint_path`` with timm's own reader. Needs torch and timm
    (``MissingExtraError`` naming the extra)."""
    torch = optional_import("torch", "timm's reference logits")
    timm = optional_import("timm", "timm's reference logits")
    tmodel = timm_module(model)
    timm.models.load_checkpoint(tmodel, checkpoint_path, use_ema=use_ema, strict=True)
    with torch.no_grad():
        return tmodel.eval()(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).double().numpy()

def verify_with_timm(model, variables, checkpoint_path: str, *, use_ema: bool = True) -> float:
    """max |Δlogit| / max |logit| between ``model`` and timm's model loading ``checkpoint_path``
    with timm's own reader, on the bundled photo. Needs torch and timm."""
    x = _verification_input(model)
    with jax.default_matmul_precision("highest"):
        ours = np.asarray(jit(model.apply)(variables, x), np.float64)
    theirs = timm_logits(model, checkpoint_path, x, use_ema=use_ema)
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())
