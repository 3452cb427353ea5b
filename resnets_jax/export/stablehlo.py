"""A model as a ``jax.export`` (StableHLO) artifact: the serialized program, its weights as
program inputs in a safetensors file beside it, run later with JAX alone (no flax, no
resnets_jax; docs/export.md has the loader).

    exported, weights = export_stablehlo(model, variables, input_size=(224, 224))   # batch symbolic
    y = exported.call(weights, x)              # x: float32 (B, H, W, C), normalized, NHWC

The weights are inputs rather than constants: the artifact stays a few hundred KiB for every
model (the BiT x3/x4 weights, 1.5-3.7 GB, would pass flatbuffers' 2 GiB limit as constants),
and one program serves every checkpoint of an architecture."""
from typing import Dict, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ..xla import BACKEND_COMPILER_OPTIONS, compiling_with, lowering_platforms

WEIGHT_SEP = "/"  # a weight's name in the safetensors file: its Flax path, 'params/conv1/kernel'
BATCH_SYMBOL = "batch"  # the name of the symbolic batch dimension in the program
# jax.export's platform names; 'cuda' and 'rocm' lower for GPUs without one being present
EXPORT_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
# the train-mode program's third input: a raw PRNG key (jax.random.key_data of a threefry key)
DROPOUT_KEY_SHAPE = (2,)


def flat_weights(variables) -> Dict[str, np.ndarray]:
    """``variables`` as ``{'params/conv1/kernel': array, 'batch_stats/bn1/mean': array, ...}``
    (numpy, the layout the program takes); ``jax.ShapeDtypeStruct`` leaves (``jax.eval_shape``
    of ``model.init``: a program without weights) are kept as they are."""
    flat = traverse_util.flatten_dict(dict(variables), sep=WEIGHT_SEP)
    return {k: v if isinstance(v, jax.ShapeDtypeStruct) else np.asarray(jax.device_get(v)) for k, v in flat.items()}


def resolve_platforms(platforms: Optional[Sequence[str]]) -> Tuple[str, ...]:
    """``platforms`` checked against ``EXPORT_PLATFORMS``; None: the default backend's platform."""
    if not platforms:
        return (jax.default_backend().replace("gpu", "cuda"),)
    bad = [p for p in platforms if p not in EXPORT_PLATFORMS]
    if bad:
        raise ValueError(f"platforms must be among {EXPORT_PLATFORMS}, got {tuple(platforms)}")
    return tuple(dict.fromkeys(platforms))


def export_stablehlo(model, variables, *, input_size: Sequence[int], batch: Optional[int] = None,
                     train: bool = False, platforms: Optional[Sequence[str]] = None,
                     dtype=jnp.float32) -> Tuple["jax.export.Exported", Dict[str, np.ndarray]]:
    """``model``'s forward pass as a ``jax.export.Exported`` and its weights (``flat_weights``).

    ``input_size``: (H, W); ``batch``: an int, or None for a symbolic batch (any size at call
    time, 1 included). Eval mode: ``exported.call(weights, x) -> logits`` (B, num_classes), x
    (B, H, W, in_chans) ``dtype``. ``train``: ``exported.call(weights, x, key_data) -> (logits,
    new batch_stats as {name: array})`` with batch statistics and, where the model has them,
    dropout / drop path from ``key_data`` (uint32 (2,), ``jax.random.key_data`` of a threefry key).
    ``platforms``: jax.export's names (default: this backend's); with more than one, or a non-CPU
    one, no CPU-only lowering is traced in (``xla.lowering_platforms``).

    Raises ``ValueError`` for a batch below 1, a malformed ``input_size`` or an unknown platform."""
    platforms = resolve_platforms(platforms)
    if batch is not None and (not isinstance(batch, int) or batch < 1):
        raise ValueError(f"batch must be a positive int or None (symbolic), got {batch!r}")
    if len(input_size) != 2 or not all(isinstance(s, int) and s > 0 for s in input_size):
        raise ValueError(f"input_size must be (H, W) positive ints, got {tuple(input_size)!r}")
    b = jax.export.symbolic_shape(BATCH_SYMBOL)[0] if batch is None else batch
    x_spec = jax.ShapeDtypeStruct((b, *input_size, model.in_chans), dtype)
    weights = flat_weights(variables)
    unflatten = lambda w: traverse_util.unflatten_dict(w, sep=WEIGHT_SEP)  # noqa: E731

    if train:
        def forward(w, x, key_data):
            rng = jax.random.wrap_key_data(key_data, impl="threefry2x32")
            logits, updates = model.apply(unflatten(w), x, train=True, mutable=["batch_stats"],
                                          rngs={"dropout": rng})
            # {} for a model without BatchNorm (BiT's GroupNorm, EvoNorm, FRN)
            return logits, traverse_util.flatten_dict({"batch_stats": updates.get("batch_stats", {})},
                                                      sep=WEIGHT_SEP)
        specs = (x_spec, jax.ShapeDtypeStruct(DROPOUT_KEY_SHAPE, jnp.uint32))
    else:
        def forward(w, x):
            return model.apply(unflatten(w), x)
        specs = (x_spec,)
    w_specs = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in weights.items()}
    # a fresh jit of a fresh function, traced for these platforms and for the options the artifact
    # is run with (call_compiler_options)
    with lowering_platforms(platforms), compiling_with(call_compiler_options(platforms).get("cpu", {})):
        exported = jax.export.export(jax.jit(forward), platforms=platforms)(w_specs, *specs)
    return exported, weights


def call_compiler_options(platforms: Sequence[str]) -> Dict[str, Dict[str, str]]:
    """The XLA options to compile the artifact with, per platform (``xla.BACKEND_COMPILER_OPTIONS``):
    ``jax.jit(exported.call, compiler_options=options[platform])``; absent: XLA's defaults."""
    return {p: dict(BACKEND_COMPILER_OPTIONS[p]) for p in platforms if p in BACKEND_COMPILER_OPTIONS}


def run_stablehlo(exported: Union["jax.export.Exported", bytes], weights: Dict[str, np.ndarray], x: np.ndarray,
                  compiler_options: Optional[dict] = None, extra: Sequence = ()):
    """Run an artifact (``Exported`` or its serialized bytes) as a server would: deserialized,
    compiled with ``compiler_options`` (``call_compiler_options()[platform]``), on ``x`` (and
    ``extra`` inputs: train mode's ``key_data``). Returns its outputs as numpy."""
    if isinstance(exported, (bytes, bytearray)):
        exported = jax.export.deserialize(bytearray(exported))
    out = jax.jit(exported.call, compiler_options=compiler_options or None)(weights, x, *extra)
    return jax.tree_util.tree_map(np.asarray, out)
