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
@jax.jit  # as jax.nn.relu: one named call in a jaxpr (tests/timm_ref.py holds every ReLU by it)
def select_relu(x: jax.Array) -> jax.Array:
    """``nn.relu``'s values (NaN kept; -0.0 stays -0.0, as in torch) and gradient (0 at 0),
    written as a select: a ReLU at which XLA:CPU's fusion passes stop. Used where a chain of
    fusible ops would otherwise grow through whole stages:

    - the ReLU that ends a residual block, ``relu(branch + shortcut)``. ``max(x, 0)`` counts as a
      unary op in XLA's fusion pass (its other operand is a broadcast constant), so XLA fuses it,
      and the add feeding it, into every consumer: the next block's residual add then recomputes
      this block's sum from its inputs, and so on back to the stage's first block
      (res2net101_26w_4s: one loop fusion reading 21 conv outputs; such fusions took a fifth of
      the forward pass on CPU). A select has a predicate operand, so XLA duplicates it only where
      it can fuse it on every path, and the chain stops at the next block's conv.
    - the pre-activation norms of ResNetV2. jaxlib 0.10 hands a large reduce or reduce-window to
      YNNPACK (LIBRARY_FUSION_TYPE_REDUCE, in XLA's defaults and in ``rj.compiler_options()``)
      and grows its fusion through the ops around it that YNNPACK takes (convolutions, adds,
      multiplies, max), but not through a select: with ``max(x, 0)`` the head's global pool took
      the whole last stage of resnetv2_50 (8 convolutions, which YNNPACK ran about 2x slower than
      XLA's own).

    benchmarks/README.md has the figures."""
    return jnp.where(x < 0, jnp.zeros_like(x), x)


select_relu.defjvps(lambda g, ans, x: jnp.where(x > 0, g, jnp.zeros_like(g)))  # jax.nn.relu's rule
