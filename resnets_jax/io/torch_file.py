"""PyTorch checkpoints (``pytorch_model.bin``, ``.pth``, timm training checkpoints)."""
from typing import Dict

import numpy as np

from .errors import CheckpointError

StateDict = Dict[str, np.ndarray]


def read_torch_checkpoint(path: str, use_ema: bool = False) -> StateDict:
    """``pytorch_model.bin`` / ``.pth`` / timm training checkpoints (``state_dict`` or
    ``state_dict_ema``, ``module.`` prefixes), loaded with ``weights_only=True``."""
    try:
        import torch
    except ImportError:
        raise CheckpointError(f"{path} is a PyTorch pickle: reading it needs torch "
                              "(pip install 'resnets-jax[torch]'), or convert it to .safetensors") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for bad files; one clear error
        raise CheckpointError(f"{path}: could not be read as a PyTorch checkpoint with weights_only=True "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if isinstance(obj, dict):
        for k in (("state_dict_ema", "model_ema") if use_ema else ()) + ("state_dict", "model"):
            if isinstance(obj.get(k), dict):
                obj = obj[k]
                break
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors (a state dict), found {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        k = k[len("module."):] if k.startswith("module.") else k
        v = v.detach().cpu()
        if v.dtype == torch.bfloat16:
            import ml_dtypes
            out[k] = v.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        else:
            out[k] = v.numpy()
    return out
