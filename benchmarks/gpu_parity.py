"""The GPU check's parity steps (``benchmarks/gpu_check.py``), by the suite's own rule
(docs/exactness.md): timm's model with every parameter and buffer perturbed as the CPU parity
tests do (``tests/timm_ref.perturb_``: weights scaled around their init's spread, BatchNorm
statistics of order one), a float64 reference computed by timm on the CPU, and on the device
both timm's fp32 (TF32 off) and ours (JAX at ``highest`` precision) measured against it. Ours
passes when it is within ``max(AS_TIMM_FACTOR x timm's distance, FLOOR)``.

- ``forward_parity``: eval-mode logits and features (``forward_features``), batch 2.
- ``train_parity``: one training step at a reduced depth (timm's ``layers`` override, both sides):
  train-mode logits, the updated running statistics, every parameter's gradient.
"""
import contextlib
import copy
import os
import sys

import numpy as np

# tests/timm_ref.py: the suite's perturbation and reference helpers, imported where used (importing
# it asks JAX for its backend, which must wait until --cpu-smoke has chosen the CPU)
TESTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")

# "As exact as timm's own fp32": ours within twice timm's fp32 distance from float64 on the same
# device (the factor tests/test_train.py holds fp32 gradients and steps to on CPU)...
AS_TIMM_FACTOR = 2.0
# ...or this floor, so that a timm figure that lands unusually close to float64 does not make the
# bound unreachable: fp32's unit roundoff (2^-24 = 6e-8) grown over the ~150 sequential conv/norm
# layers of the deepest model checked (each adds about one rounding, relative to the largest value).
FLOOR = 150 * 2.0 ** -24
PARITY_BATCH = 2
MAX_PARITY_SIZE = 256  # BiT's native 448 runs at 256, as in tests/test_parity.py (time, not numerics)
# The training step: depth (2, 1, 1, 1) on both sides (every stage's first block with its shortcut,
# and a plain block), as tests/test_train.py; full-depth numerics are the forward rows' job.
TRAIN_LAYERS = (2, 1, 1, 1)
TRAIN_BATCH, TRAIN_SIZE = 8, 96  # batch statistics over 8 x 3 x 3 values in the last stage
SMOOTHING = 0.1  # timm's default label smoothing
SEED = 1


@contextlib.contextmanager
def torch_tf32(torch, allowed: bool):
    """torch's TF32 switches (cuBLAS matmuls and cuDNN convs) set for the block, then restored."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def judge(ours: float, timm: float) -> dict:
    bound = max(AS_TIMM_FACTOR * timm, FLOOR)
    return {"ours": ours, "timm": timm, "bound": bound, "ok": bool(ours <= bound)}


def _ref():
    if TESTS_DIR not in sys.path:
        sys.path.insert(0, TESTS_DIR)
    import timm_ref
    return timm_ref


def _perturbed(name, **kwargs):
    import timm
    import torch
    torch.manual_seed(0)
    return _ref().perturb_(timm.create_model(name, **kwargs), seed=SEED)


def forward_parity(name: str, size: int, device: str) -> dict:
    """Eval-mode logits and features of ``name`` at ``size`` x ``size``: float64 timm on the CPU,
    fp32 timm on ``device`` (TF32 off), ours on JAX's default backend at ``highest`` precision."""
    import jax
    import torch
    import resnets_jax as rj
    rel_err, timm_forward, timm_state_dict = _ref().rel_err, _ref().timm_forward, _ref().timm_state_dict
    tmodel = _perturbed(name).eval()
    sd = timm_state_dict(tmodel)
    x = np.random.default_rng(0).standard_normal((PARITY_BATCH, size, size, 3)).astype(np.float32)
    ref = copy.deepcopy(tmodel).double()
    f64, l64 = (timm_forward(ref, x.astype(np.float64), "cpu", m) for m in ("forward_features", "forward"))
    with torch_tf32(torch, False):
        ft, lt = (timm_forward(tmodel, x, device, m) for m in ("forward_features", "forward"))
    model = rj.build_model(name)
    variables = rj.convert_timm_state_dict(model, sd)

    def features_and_logits(v, x):
        f = model.apply(v, x, method="forward_features")
        return f, model.apply(v, f, method="forward_head")
    with jax.default_matmul_precision("highest"):
        fo, lo = jax.jit(features_and_logits)(variables, jax.device_put(x))
    logits, features = judge(rel_err(lo, l64), rel_err(lt, l64)), judge(rel_err(fo, f64), rel_err(ft, f64))
    return {"model": name, "input": size, "logit_scale": float(np.abs(l64).max()),
            "feature_scale": float(np.abs(f64).max()), "logits": logits, "features": features,
            "ok": logits["ok"] and features["ok"]}


def _running_stats(sd: dict) -> dict:
    return {k: v for k, v in sd.items() if k.endswith(("running_mean", "running_var"))}


def _stats_err(ours: dict, ref: dict) -> float:
    return max([_ref().rel_err(ours[k], v) for k, v in ref.items()] or [0.0])


def train_parity(name: str, device: str, layers=TRAIN_LAYERS, batch=TRAIN_BATCH, size=TRAIN_SIZE) -> dict:
    """One training step of ``name`` at depth ``layers``: train-mode logits, updated running
    statistics (max relative error over the tensors) and gradients (||Δ|| / ||g|| over every
    parameter), ours and timm's fp32 each against timm's float64 step on the CPU. ``layers=None``:
    full depth (BiT's timm entry points fix their depths)."""
    import jax
    import torch
    import resnets_jax as rj
    from resnets_jax.train import make_loss_fn
    ref = _ref()
    rel_err, norm_err, timm_state_dict, timm_train_step = ref.rel_err, ref.norm_err, ref.timm_state_dict, ref.timm_train_step
    depth = {"layers": layers} if layers else {}
    tmodel = _perturbed(name, **depth)
    sd = {k: v.copy() for k, v in timm_state_dict(tmodel).items()}  # timm's step updates buffers in place
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
    y = rng.integers(0, 1000, batch)
    l64, sd64, g64 = timm_train_step(copy.deepcopy(tmodel).double(), x.astype(np.float64), y, SMOOTHING, "cpu")
    with torch_tf32(torch, False):
        lt, sdt, gt = timm_train_step(tmodel, x, y, SMOOTHING, device)
    model = rj.build_model(name, **depth)
    variables = rj.convert_timm_state_dict(model, sd)
    loss = make_loss_fn(model, SMOOTHING)
    with jax.default_matmul_precision("highest"):
        grads, (lo, after) = jax.jit(jax.grad(loss, has_aux=True))(
            variables["params"], variables.get("batch_stats", {}), {"image": x, "label": y}, jax.random.PRNGKey(0))
    go = rj.export_timm_state_dict(model, {"params": grads})
    so = rj.export_timm_state_dict(model, {"batch_stats": after}) if after else {}
    stats64 = _running_stats(sd64)
    row = {"model": name, "layers": list(layers) if layers else "full", "input": size, "batch": batch,
           "logits": judge(rel_err(lo, l64), rel_err(lt, l64)),
           # None: no running statistics (GroupNorm / EvoNorm / FRN models)
           "running_stats": judge(_stats_err(so, stats64), _stats_err(sdt, stats64)) if stats64 else None,
           "gradients": judge(norm_err(go, g64), norm_err(gt, g64))}
    row["ok"] = all(row[k]["ok"] for k in ("logits", "running_stats", "gradients") if row[k])
    return row
