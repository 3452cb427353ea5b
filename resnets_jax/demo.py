"""The main job, end to end: get a timm checkpoint, convert it, classify a photo with JAX, and
check the logits against timm on the same input.

    resnets-jax demo            # or: make demo

The hub is tried first; when it cannot be reached, a timm random-init checkpoint is written
locally instead and the first line of output says so.
"""
import os
import sys
import time

import jax
import numpy as np

from . import weights
from .builder import create_model
from .data import sample_image_path
from .predict import load_images, top_k
from .registry import get_pretrained_cfg
from .xla import jit

DEMO_MODEL = "resnetv2_50.a1h_in1k"


def _local_random_checkpoint(name: str, out_dir: str) -> str:
    import timm
    import torch
    from safetensors.torch import save_file
    torch.manual_seed(0)
    path = os.path.join(out_dir, f"{name.replace('.', '_')}_timm_random_init.safetensors")
    save_file(timm.create_model(name.split(".")[0]).state_dict(), path)
    return path


def _timm_logits(name: str, checkpoint: str, x: np.ndarray) -> np.ndarray:
    import timm
    import torch
    from timm.models import load_checkpoint
    model = timm.create_model(name.split(".")[0]).eval()
    load_checkpoint(model, checkpoint)
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()


def run(name: str = DEMO_MODEL, image: str = None, out_dir: str = "demo_out", top: int = 5) -> float:
    image = image or sample_image_path()
    os.makedirs(out_dir, exist_ok=True)
    try:
        checkpoint = weights.download_pretrained(get_pretrained_cfg(name))
        print(f"Pretrained weights for {name} from the Hugging Face hub: {checkpoint}")
        labelled = True
    except weights.CheckpointError as e:
        checkpoint = _local_random_checkpoint(name, out_dir)
        print(f"HUB UNREACHABLE - LOCAL FALLBACK: {name} weights could not be fetched, so this run uses a "
              f"timm RANDOM-INIT checkpoint written to {checkpoint}. Its predictions are meaningless; "
              f"the JAX-vs-timm logit difference below is what it demonstrates.")
        print(f"  (hub error: {str(e).splitlines()[0][:200]})")
        labelled = False

    t0 = time.perf_counter()
    model, variables = create_model(name, checkpoint_path=checkpoint)
    print(f"Converted {os.path.basename(checkpoint)} to Flax variables in {time.perf_counter() - t0:.1f}s")

    x = load_images(model, [image])
    print(f"Image: {image} -> input {x.shape} (NHWC, normalized with {name}'s eval config)")
    logits = np.asarray(jit(model.apply)(variables, x))
    ref = _timm_logits(name, checkpoint, x)

    kind = "pretrained" if labelled else "random-init, labels meaningless"
    print(f"\nTop-{top} with JAX ({jax.default_backend()}, {kind}):")
    for r in top_k(logits, top)[0]:
        print(f"  {r['probability']:7.2%}  {r['index']:5d}  {r['label']}")
    print(f"Top-{top} with timm (PyTorch):")
    for r in top_k(ref, top)[0]:
        print(f"  {r['probability']:7.2%}  {r['index']:5d}  {r['label']}")
    diff = float(np.abs(logits - ref).max())
    print(f"\nmax |logit difference| JAX vs timm: {diff:.3e}  (max |logit| {np.abs(ref).max():.3f})")
    return diff


if __name__ == "__main__":
    run(*sys.argv[1:2])
