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

from .._optional import require
from ..data import sample_image_path
from ..factory import create_model
from ..xla import jit
from .fallback import timm_checkpoint
from .predict import load_images, top_k
from .verify import timm_logits

DEMO_MODEL = "resnetv2_50.a1h_in1k"


def run(name: str = DEMO_MODEL, image: str = None, out_dir: str = "demo_out", top: int = 5) -> float:
    """The demo (see the module docstring); returns max |logit difference| against timm. Needs
    torch and timm: ``MissingExtraError`` before anything is fetched or written."""
    require("the demo (held against timm)", "torch", "timm")
    image = image or sample_image_path()
    source = timm_checkpoint(name, out_dir)
    print(source.message)
    checkpoint, labelled = source.path, source.pretrained

    t0 = time.perf_counter()
    model, variables = create_model(name, checkpoint_path=checkpoint)
    print(f"Converted {os.path.basename(checkpoint)} to Flax variables in {time.perf_counter() - t0:.1f}s")

    x = load_images(model, [image])
    print(f"Image: {image} -> input {x.shape} (NHWC, normalized with {name}'s eval config)")
    logits = np.asarray(jit(model.apply)(variables, x))
    ref = timm_logits(model, checkpoint, x)

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
