"""Classify images: preprocessing from the model's data config, jitted forward, top-k labels."""
from typing import List, Sequence

import jax
import numpy as np
from PIL import Image

from .data import create_transform, imagenet_class_names, resolve_data_config


def load_images(model, paths: Sequence[str], use_test_size: bool = False) -> np.ndarray:
    """Images -> a normalized NHWC batch, with the eval transform of the model's tag."""
    transform = create_transform(**resolve_data_config(model, use_test_size=use_test_size))
    batch = []
    for p in paths:
        try:
            with Image.open(p) as img:
                batch.append(transform(img))
        except (OSError, SyntaxError) as e:
            raise ValueError(f"{p}: not an image PIL can read ({e})") from None
    return np.stack(batch)


def top_k(logits: np.ndarray, k: int = 5) -> List[List[dict]]:
    """Per image, the k most probable classes: index, label (when known), probability."""
    logits = np.asarray(logits, np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    try:
        names = imagenet_class_names(logits.shape[-1])
    except ValueError:
        names = None
    out = []
    for p in probs:
        idx = np.argsort(-p)[:k]
        out.append([{"index": int(i), "label": names[i] if names else str(i), "probability": float(p[i])}
                    for i in idx])
    return out


def predict(model, variables, paths: Sequence[str], k: int = 5) -> List[List[dict]]:
    logits = jax.jit(model.apply)(variables, load_images(model, paths))
    return top_k(np.asarray(logits), k)
