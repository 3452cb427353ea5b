"""Run with XLA_FLAGS=--xla_force_host_platform_device_count=8: inference and one training
step (batch 16, drop path 0.1) of a small model on one device and sharded over all 8 CPU
devices, under one compiler option set ('xla-defaults' or 'rj-options'); prints the largest
relative differences as JSON.

The training step is compared with its ReLU decisions held (timm_ref.with_decisions, taken from
one single-device fp32 forward): an fp32 step is only as exact as its ReLU decisions, which
rounding in another order may flip (docs/exactness.md). The reference spread: the same
single-device step with the batch in another order (reversed among samples with the same drop
path decisions, the held ReLU decisions reordered with them), which changes only the order of
the sums, as sharding does.
"""
import json
import sys
from pathlib import Path

import jax
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: timm_ref
import resnets_jax as rj  # noqa: E402
from resnets_jax.parallel import DataParallel, data_mesh  # noqa: E402
from resnets_jax.train import TrainState, make_train_step  # noqa: E402
from timm_ref import compiler_options_for, relu_inputs, with_decisions  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
TRAIN_BATCH = 16
# one block a stage: sharding is the program's, not the depth's (half the compile time)
LAYERS = (1, 1, 1, 1)


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def whole(tree):
    return np.concatenate([np.ravel(x).astype(np.float64) for x in jax.tree_util.tree_leaves(tree)])


def held_decisions(model, variables, batch, key):
    """The ReLU decisions of one single-device fp32 forward of the step's batch, and an order of
    the batch that keeps every drop path decision: samples with the same decisions reversed."""
    found = relu_inputs(model, variables, batch["image"], jax.random.fold_in(key, 0))  # the step's key
    relu = {k: np.asarray(v) > 0 for k, v in found.items() if not k.startswith("drop/")}
    drops = np.stack([np.asarray(v) for k, v in found.items() if k.startswith("drop/")], axis=1)
    order = np.arange(len(drops))
    for row in np.unique(drops, axis=0):
        same = np.flatnonzero((drops == row).all(axis=1))
        order[same] = same[::-1]
    return relu, order


def main(name, batch, option_set):
    """Inference on ``batch`` images (any length: padded), training on the first 16."""
    assert jax.device_count() == 8, jax.devices()
    options = compiler_options_for(option_set)
    model, variables = rj.create_model(name, num_classes=10, drop_path_rate=0.1, rng=jax.random.PRNGKey(0),
                                       layers=LAYERS)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 64, 64, 3)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    train = {"image": x[:TRAIN_BATCH], "label": y[:TRAIN_BATCH]}
    key = jax.random.PRNGKey(1)
    tx = optax.sgd(0.1, momentum=0.9)
    relu, order = held_decisions(model, variables, train, key)
    assert (order != np.arange(TRAIN_BATCH)).sum() >= TRAIN_BATCH // 2  # most samples moved
    step_fn = make_train_step(model, tx, label_smoothing=0.1)
    out, results = {}, {}
    single = DataParallel(data_mesh(jax.devices()[:1]))
    runs = (("single", single, train, relu), ("sharded", DataParallel(), train, relu),
            ("reordered", single, {k: v[order] for k, v in train.items()}, {k: v[order] for k, v in relu.items()}))
    for label, dp, data, decisions in runs:
        v = dp.replicate(variables)
        logits = dp.predict(model, v, x) if label != "reordered" else None
        step = dp.jit_step(with_decisions(step_fn, decisions), compiler_options=options)
        state, metrics = step(dp.replicate(TrainState.create(variables, tx)), dp.shard(data), dp.replicate(key))
        results[label] = (logits, dp.gather(state.variables), dp.gather(metrics))
        out[f"{label}_devices"] = dp.num_devices
    (l1, v1, m1), (l8, v8, m8), (_, vr, mr) = results["single"], results["sharded"], results["reordered"]
    out["logits"] = rel(l8, l1)
    out["logits_shape"] = list(l8.shape)
    out["loss"] = rel(m8["loss"], m1["loss"])
    out["loss_spread"] = rel(mr["loss"], m1["loss"])
    # whole-model L2 norms of parameters and running statistics, as a fraction of the update
    update = np.linalg.norm(whole(v1["params"]) - whole(variables["params"]))
    out["of_update"] = float(np.linalg.norm(whole(v8) - whole(v1)) / update)
    out["spread_of_update"] = float(np.linalg.norm(whole(vr) - whole(v1)) / update)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "rj-options")
