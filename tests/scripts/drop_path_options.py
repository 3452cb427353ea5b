"""Issue 15's open question: with drop path, does one training step under rj.compiler_options()
differ from the same step under XLA's defaults because of different drop decisions, or because
the step is ill-conditioned? resnetv2_18d, fresh init, drop_path_rate 0.1, 16 images at 64 px,
SGD momentum, label smoothing 0.1 (the setup of tests/scripts/sharded_vs_single.py).

Prints, for each option set: whether the drop decisions equal those under XLA's defaults, and
the step's distance from a float64 step with the same decisions (float64 draws its uniforms in
float64, so the float64 run draws at float32 here); and the two fp32 steps' distance from each
other. All as ||Δp|| / ||p64 - p0||.

    PYTHONPATH=. python tests/scripts/drop_path_options.py [drop_path_rate]
"""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

import resnets_jax as rj
from resnets_jax.layers import DropPath
from resnets_jax.train import TrainState, make_train_step
from step_conditioning import CLASSES, LR, SMOOTHING, batch_for

jax.config.update("jax_default_matmul_precision", "highest")


def run(model, variables, batch, options):
    """(parameters after one step as flat float64, every DropPath's keep mask)"""
    tx = optax.sgd(LR, momentum=0.9)
    train_step = make_train_step(model, tx, SMOOTHING)

    def f(state, batch):
        masks = []

        def draw_fp32(next_fun, args, kwargs, context):
            module = context.module
            if not (isinstance(module, DropPath) and context.method_name == "__call__" and module.rate):
                return next_fun(*args, **kwargs)
            x = args[0]
            keep = 1.0 - module.rate
            mask = jax.random.bernoulli(module.make_rng("dropout"), jnp.float32(keep), (x.shape[0],) + (1,) * (x.ndim - 1))
            masks.append(mask.ravel())
            return jnp.where(mask, x / keep, jnp.zeros_like(x))
        with nn.intercept_methods(draw_fp32):
            params = train_step(state, batch, jax.random.PRNGKey(1))[0].params
        return params, masks

    params, masks = jax.jit(f, compiler_options=options)(TrainState.create(variables, tx), batch)
    flat = np.concatenate([np.ravel(np.asarray(p, np.float64)) for p in jax.tree_util.tree_leaves(params)])
    return flat, np.stack([np.asarray(m) for m in masks]) if masks else np.zeros((0,))


def main(rate=0.1):
    name = "resnetv2_18d"
    model, variables = rj.create_model(name, num_classes=CLASSES, drop_path_rate=rate, rng=jax.random.PRNGKey(0))
    batch = batch_for()
    p0 = np.concatenate([np.ravel(np.asarray(p, np.float64)) for p in jax.tree_util.tree_leaves(variables["params"])])
    with jax.enable_x64(True):
        model64 = rj.build_model(name, num_classes=CLASSES, drop_path_rate=rate, dtype=jnp.float64,
                                 param_dtype=jnp.float64)
        v64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating)
                                     else a, variables)
        p64, m64 = run(model64, v64, batch, {})
    pd, md = run(model, variables, batch, {})
    po, mo = run(model, variables, batch, rj.compiler_options())
    upd = np.linalg.norm(p64 - p0)
    print(json.dumps({
        "drop_path_rate": rate, "samples_dropped": int(md.size - md.sum()), "of": int(md.size),
        "same_decisions_options_vs_defaults": bool(np.array_equal(md, mo)),
        "same_decisions_fp32_vs_fp64": bool(np.array_equal(md, m64)),
        "defaults_vs_fp64": float(np.linalg.norm(pd - p64) / upd),
        "options_vs_fp64": float(np.linalg.norm(po - p64) / upd),
        "options_vs_defaults": float(np.linalg.norm(po - pd) / upd)}))


if __name__ == "__main__":
    main(*map(float, sys.argv[1:]))
