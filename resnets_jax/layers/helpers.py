"""Small helpers shared by layers and models."""
import jax
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


@jax.custom_jvp
def residual_relu(x: jax.Array) -> jax.Array:
    """The ReLU that ends a residual block, ``relu(branch + shortcut)``: ``nn.relu``'s values
    (NaN kept) and gradient (0 at 0), written as a select so that XLA computes each block's
    residual sum once.

    ``max(x, 0)`` counts as a unary op in XLA's fusion pass (its other operand is a broadcast
    constant), so XLA fuses it, and the add feeding it, into every consumer: the next block's
    residual add then recomputes this block's sum from its inputs, and so on back to the stage's
    first block (res2net101_26w_4s: one loop fusion reading 21 conv outputs; such fusions took a
    fifth of the forward pass on CPU). A select has a predicate operand, so XLA duplicates it only
    where it can fuse it on every path, and the chain stops at the next block's conv.
    benchmarks/README.md has the figures."""
    return jnp.where(x < 0, jnp.zeros_like(x), x)


residual_relu.defjvps(lambda g, ans, x: jnp.where(x > 0, g, jnp.zeros_like(g)))  # jax.nn.relu's rule
