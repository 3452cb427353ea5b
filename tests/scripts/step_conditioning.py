"""How far one fp32 SGD step lands from the float64 step, ours against timm's own, on the
same weights and batch (the figures behind tests/test_train.py's bounds, docs/exactness.md).

    PYTHONPATH=. python tests/scripts/step_conditioning.py resnetv2_18d resnest14d res2net50_26w_4s

Per model: a fresh init of ours (rj.create_model, seed 0), exported to timm; 16 images at
64 px, 10 classes, SGD momentum 0.9 lr 0.1, label smoothing 0.1. Prints
||p32 - p64|| / ||p64 - p0|| (a fraction of the update) for timm, ours under plain jax.jit and
ours under rj.compiler_options(), and ours-float64 against timm-float64.
"""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import resnets_jax as rj
from resnets_jax.train import TrainState, make_train_step

jax.config.update("jax_default_matmul_precision", "highest")
CLASSES, BATCH, SIZE, LR, SMOOTHING = 10, 16, 64, 0.1, 0.1


def batch_for(seed=0):
    rng = np.random.default_rng(seed)
    return {"image": rng.standard_normal((BATCH, SIZE, SIZE, 3)).astype(np.float32),
            "label": rng.integers(0, CLASSES, BATCH)}


def ours_step(name, variables, batch, dtype, options, **kwargs):
    """Our parameters after one step, in timm's names, as float64 numpy."""
    tx = optax.sgd(LR, momentum=0.9)
    model = rj.build_model(name, num_classes=CLASSES, dtype=dtype, param_dtype=dtype, **kwargs)
    v = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a,
                               variables)
    step = jax.jit(make_train_step(model, tx, SMOOTHING), compiler_options=options)
    state = step(TrainState.create(v, tx), batch, jax.random.PRNGKey(1))[0]
    out = rj.export_timm_state_dict(model, {"params": state.params})
    return {k: np.asarray(a, np.float64) for k, a in out.items()}


def timm_step(name, sd, batch, double, **kwargs):
    """timm's parameters after one step of torch SGD on the same weights and batch."""
    import timm
    import torch
    from timm.loss import LabelSmoothingCrossEntropy
    tm = timm.create_model(name, num_classes=CLASSES, **kwargs)
    tm.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()})
    if double:
        tm = tm.double()
    tm.train()
    opt = torch.optim.SGD(tm.parameters(), lr=LR, momentum=0.9)
    x = torch.from_numpy(np.ascontiguousarray(batch["image"].transpose(0, 3, 1, 2)))
    with torch.enable_grad():
        loss = LabelSmoothingCrossEntropy(SMOOTHING)(tm(x.to(next(tm.parameters()).dtype)),
                                                     torch.from_numpy(batch["label"]))
        loss.backward()
    opt.step()
    return {k: p.detach().numpy().astype(np.float64) for k, p in tm.named_parameters()}


def of_update(p, ref, p0) -> float:
    keys = sorted(ref)
    flat = lambda d: np.concatenate([np.ravel(d[k]) for k in keys])  # noqa: E731
    return float(np.linalg.norm(flat(p) - flat(ref)) / np.linalg.norm(flat(ref) - flat(p0)))


def measure(name, **kwargs):
    model, variables = rj.create_model(name, num_classes=CLASSES, rng=jax.random.PRNGKey(0), **kwargs)
    sd = rj.export_timm_state_dict(model, variables)
    p0 = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    batch = batch_for()
    t32, t64 = timm_step(name, sd, batch, False, **kwargs), timm_step(name, sd, batch, True, **kwargs)
    with jax.enable_x64(True):
        o64 = ours_step(name, variables, batch, jnp.float64, {}, **kwargs)
    o32 = ours_step(name, variables, batch, jnp.float32, {}, **kwargs)
    o32opt = ours_step(name, variables, batch, jnp.float32, rj.compiler_options(), **kwargs)
    return {"model": name, "timm_fp32": of_update(t32, t64, p0), "ours_jit": of_update(o32, o64, p0),
            "ours_options": of_update(o32opt, o64, p0), "ours64_vs_timm64": of_update(o64, t64, p0)}


if __name__ == "__main__":
    for name in sys.argv[1:] or ["resnetv2_18d", "resnest14d", "res2net50_26w_4s"]:
        print(json.dumps(measure(name)), flush=True)
