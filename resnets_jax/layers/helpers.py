"""Small helpers shared by layers and models."""
import jax.numpy as jnp


def make_divisible(v: float, divisor: int = 8, min_value=None, round_limit: float = 0.9) -> int:
    """timm's ``make_divisible``: round to the nearest multiple of ``divisor``, never dropping
    more than 10%."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


def per_branch_weights(attn):
    """(B, n, C) attention weights -> n arrays (B, 1, 1, C), one per branch (ResNeSt's radix
    splits, SK's paths), to multiply NHWC maps with. Slices, never ``attn[:, i]``: under a symbolic
    batch (``jax.export``) an integer index becomes a gather, which LiteRT's converter refuses."""
    return [jnp.expand_dims(a, 2) for a in jnp.split(attn, attn.shape[1], axis=1)]
