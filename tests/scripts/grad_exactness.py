"""How far one fp32 gradient of the training loss lands from float64, ours against timm's own, on
the same weights and batch (issue 20; docs/exactness.md).

    PYTHONPATH=. python tests/scripts/grad_exactness.py resnetv2_50 resnetv2_50d_gn resnest14d res2net50_26w_4s
    PYTHONPATH=. python tests/scripts/grad_exactness.py --highest resnetv2_50   # jax_default_matmul_precision

Per model: a fresh init of ours (rj.create_model, seed 0), exported to timm; step_conditioning's
batch (16 images at 64 px, 10 classes, label smoothing 0.1). Prints, against the same side's
float64 gradient: the worst parameter's max |dg| / max |g| ("worst") and ||dg|| / ||g|| over all
parameters ("norm"), for timm fp32, ours under plain jax.jit and ours under rj.compiler_options().
"""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

import resnets_jax as rj
from resnets_jax.train import make_loss_fn
from step_conditioning import CLASSES, SMOOTHING, batch_for

# step_conditioning sets "highest" on import; users' code runs at JAX's default unless asked
jax.config.update("jax_default_matmul_precision", "highest" if "--highest" in sys.argv else None)


def ours_grads(model_name, variables, batch, dtype, options, **kwargs):
    model = rj.build_model(model_name, num_classes=CLASSES, dtype=dtype, param_dtype=dtype, **kwargs)
    v = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a,
                               variables)
    fn = jax.jit(jax.grad(lambda p, s, b, r: make_loss_fn(model, SMOOTHING)(p, s, b, r)[0]),
                 compiler_options=options)
    grads = fn(v["params"], v.get("batch_stats", {}), batch, jax.random.PRNGKey(1))
    return {k: np.asarray(a, np.float64) for k, a in rj.export_timm_state_dict(model, {"params": grads}).items()}


def timm_grads(model_name, sd, batch, double, **kwargs):
    import timm
    import torch
    from timm.loss import LabelSmoothingCrossEntropy
    tm = timm.create_model(model_name, num_classes=CLASSES, **kwargs)
    tm.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()})
    tm = (tm.double() if double else tm).train()
    x = torch.from_numpy(np.ascontiguousarray(batch["image"].transpose(0, 3, 1, 2)))
    with torch.enable_grad():
        LabelSmoothingCrossEntropy(SMOOTHING)(tm(x.to(next(tm.parameters()).dtype)),
                                              torch.from_numpy(batch["label"])).backward()
    return {k: p.grad.numpy().astype(np.float64) for k, p in tm.named_parameters()}


def errors(g, ref) -> dict:
    keys = sorted(ref)
    worst = max(keys, key=lambda k: np.abs(g[k] - ref[k]).max() / max(np.abs(ref[k]).max(), 1e-30))
    flat = lambda d: np.concatenate([np.ravel(d[k]) for k in keys])  # noqa: E731
    return {"worst": float(np.abs(g[worst] - ref[worst]).max() / np.abs(ref[worst]).max()), "worst_at": worst,
            "norm": float(np.linalg.norm(flat(g) - flat(ref)) / np.linalg.norm(flat(ref)))}


def measure(model_name, **kwargs):
    model, variables = rj.create_model(model_name, num_classes=CLASSES, rng=jax.random.PRNGKey(0), **kwargs)
    sd = rj.export_timm_state_dict(model, variables)
    batch = batch_for()
    t64 = timm_grads(model_name, sd, batch, True, **kwargs)
    with jax.enable_x64(True):
        o64 = ours_grads(model_name, variables, batch, jnp.float64, {}, **kwargs)
    out = {"model": model_name, "precision": jax.config.jax_default_matmul_precision,
           "timm_fp32": errors(timm_grads(model_name, sd, batch, False, **kwargs), t64),
           "ours_jit": errors(ours_grads(model_name, variables, batch, jnp.float32, {}, **kwargs), o64),
           "ours_options": errors(ours_grads(model_name, variables, batch, jnp.float32, rj.compiler_options(),
                                             **kwargs), o64),
           "ours64_vs_timm64": errors(o64, t64)["norm"]}
    return out


if __name__ == "__main__":
    for name in [a for a in sys.argv[1:] if not a.startswith("--")] or ["resnetv2_50", "resnetv2_50d_gn",
                                                                       "resnest14d", "res2net50_26w_4s"]:
        print(json.dumps(measure(name)), flush=True)
