"""How far one fp32 gradient of the training loss lands from float64, ours against timm's own, on
the same weights and batch (issue 20; docs/exactness.md).

    cd tests/scripts
    PYTHONPATH=../.. python grad_exactness.py resnetv2_50 resnetv2_50d_gn resnest14d res2net50_26w_4s
    PYTHONPATH=../.. python grad_exactness.py --held resnest14d     # every ReLU at float64's decisions
    PYTHONPATH=../.. python grad_exactness.py --highest resnetv2_50  # jax_default_matmul_precision

Per model: a fresh init of ours (rj.create_model, seed 0), exported to timm; step_conditioning's
batch (16 images at 64 px, 10 classes, label smoothing 0.1). Against the same side's float64
gradient: the worst parameter's max |dg| / max |g| ("worst") and ||dg|| / ||g|| over all
parameters ("norm"), for timm fp32, ours under plain jax.jit and ours under rj.compiler_options().
JAX's default matmul precision unless --highest (users' code does not set it; the tests do).
With --held every ReLU of each side takes its float64 run's decisions (timm_ref.holding_relus,
TorchReluHeld): what is left is arithmetic; "flips" counts the decisions fp32 took otherwise.
"""
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: timm_ref
import resnets_jax as rj  # noqa: E402
from resnets_jax.train import make_loss_fn  # noqa: E402
from step_conditioning import CLASSES, SMOOTHING, batch_for  # noqa: E402
from timm_ref import TorchReluHeld, holding_relus  # noqa: E402

# step_conditioning sets "highest" on import; users' code runs at JAX's default unless asked
jax.config.update("jax_default_matmul_precision", "highest" if "--highest" in sys.argv else None)
HELD = "--held" in sys.argv


def ours_grads(model_name, variables, batch, dtype, options, masks=None):
    """Our gradient (timm's names, float64 numpy) and every ReLU's input."""
    model = rj.build_model(model_name, num_classes=CLASSES, dtype=dtype, param_dtype=dtype)
    v = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a,
                               variables)
    held = holding_relus(lambda p, s, b, r: make_loss_fn(model, SMOOTHING)(p, s, b, r)[0], masks)
    grads, relus = jax.jit(jax.grad(held, has_aux=True), compiler_options=options)(
        v["params"], v.get("batch_stats", {}), batch, jax.random.PRNGKey(1))
    grads = {k: np.asarray(a, np.float64) for k, a in rj.export_timm_state_dict(model, {"params": grads}).items()}
    return grads, [np.asarray(r, np.float64) for r in relus]


def timm_grads(model_name, sd, batch, double, masks=None):
    import timm
    import torch
    from timm.loss import LabelSmoothingCrossEntropy
    tm = timm.create_model(model_name, num_classes=CLASSES)
    tm.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()})
    tm = (tm.double() if double else tm).train()
    x = torch.from_numpy(np.ascontiguousarray(batch["image"].transpose(0, 3, 1, 2)))
    with torch.enable_grad(), TorchReluHeld(masks) as relus:
        LabelSmoothingCrossEntropy(SMOOTHING)(tm(x.to(next(tm.parameters()).dtype)),
                                              torch.from_numpy(batch["label"])).backward()
    return {k: p.grad.numpy().astype(np.float64) for k, p in tm.named_parameters()}, relus.inputs


def errors(g, ref, relus=None, relus64=None) -> dict:
    keys = sorted(ref)
    worst = max(keys, key=lambda k: np.abs(g[k] - ref[k]).max() / max(np.abs(ref[k]).max(), 1e-30))
    flat = lambda d: np.concatenate([np.ravel(d[k]) for k in keys])  # noqa: E731
    out = {"worst": float(np.abs(g[worst] - ref[worst]).max() / np.abs(ref[worst]).max()), "worst_at": worst,
           "norm": float(np.linalg.norm(flat(g) - flat(ref)) / np.linalg.norm(flat(ref)))}
    if relus is not None:
        out["flips"] = int(sum(np.sum((a > 0) != (b > 0)) for a, b in zip(relus, relus64)))
        out["relu_rounding"] = float(np.mean([np.sqrt(np.mean((a - b) ** 2)) / np.abs(b).max()
                                              for a, b in zip(relus, relus64)]))
    return out


def measure(model_name):
    model, variables = rj.create_model(model_name, num_classes=CLASSES, rng=jax.random.PRNGKey(0))
    sd = rj.export_timm_state_dict(model, variables)
    batch = batch_for()
    t64, t64_relus = timm_grads(model_name, sd, batch, True)
    with jax.enable_x64(True):
        o64, o64_relus = ours_grads(model_name, variables, batch, jnp.float64, {})
    tmask = [x > 0 for x in t64_relus] if HELD else None
    omask = [x > 0 for x in o64_relus] if HELD else None
    t32, t32_relus = timm_grads(model_name, sd, batch, False, tmask)
    out = {"model": model_name, "precision": jax.config.jax_default_matmul_precision, "held": HELD,
           "timm_fp32": errors(t32, t64, t32_relus, t64_relus)}
    for key, options in (("ours_jit", {}), ("ours_options", rj.compiler_options())):
        g, relus = ours_grads(model_name, variables, batch, jnp.float32, options, omask)
        out[key] = errors(g, o64, relus, o64_relus)
    out["ours64_vs_timm64"] = errors(o64, t64)["norm"]
    return out


if __name__ == "__main__":
    for name in [a for a in sys.argv[1:] if not a.startswith("--")] or ["resnetv2_50", "resnetv2_50d_gn",
                                                                       "resnest14d", "res2net50_26w_4s"]:
        print(json.dumps(measure(name)), flush=True)
