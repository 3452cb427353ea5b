"""Helpers shared by the model families."""
import jax


def check_input(x: jax.Array, in_chans: int) -> None:
    """One clear error for the usual layout mistakes instead of an XLA shape error."""
    layout = f"a float array of shape (batch, height, width, {in_chans}) (NHWC)"
    if x.ndim != 4:
        raise ValueError(f"Expected {layout}; got rank {x.ndim} with shape {tuple(x.shape)}.")
    if not jax.numpy.issubdtype(x.dtype, jax.numpy.floating):
        raise TypeError(f"Expected {layout}; got dtype {x.dtype}. Normalize images to float first "
                        "(resnets_jax.data.create_transform).")
    if x.shape[-1] != in_chans:
        hint = " It looks like NCHW: transpose with x.transpose(0, 2, 3, 1)." if x.shape[1] == in_chans else ""
        raise ValueError(f"Expected {layout}; got shape {tuple(x.shape)}.{hint}")
