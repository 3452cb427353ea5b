"""Run with XLA_FLAGS=--xla_force_host_platform_device_count=8: inference and one training
step (batch 16) of a small model on one device and sharded over all 8 CPU devices; prints the largest
relative differences as JSON."""
import json
import sys

import jax
import numpy as np
import optax

import resnets_jax as rj
from resnets_jax.parallel import DataParallel, data_mesh
from resnets_jax.train import TrainState, make_train_step

jax.config.update("jax_default_matmul_precision", "highest")


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def whole(tree):
    return np.concatenate([np.ravel(x).astype(np.float64) for x in jax.tree_util.tree_leaves(tree)])


def main(name, batch):
    """Inference on ``batch`` images (any length: padded), training on the first 16."""
    assert jax.device_count() == 8, jax.devices()
    model, variables = rj.create_model(name, num_classes=10, drop_path_rate=0.1, rng=jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 64, 64, 3)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    tx = optax.sgd(0.1, momentum=0.9)
    step_fn = make_train_step(model, tx, label_smoothing=0.1)
    out = {}
    results = {}
    for label, dp in (("single", DataParallel(data_mesh(jax.devices()[:1]))), ("sharded", DataParallel())):
        v = dp.replicate(variables)
        logits = dp.predict(model, v, x)
        state = dp.replicate(TrainState.create(variables, tx))
        state, metrics = dp.jit_step(step_fn)(state, dp.shard({"image": x[:16], "label": y[:16]}), dp.replicate(jax.random.PRNGKey(1)))
        results[label] = (logits, dp.gather(state.variables), dp.gather(metrics))
        out[f"{label}_devices"] = dp.num_devices
    (l1, v1, m1), (l8, v8, m8) = results["single"], results["sharded"]
    out["logits"] = rel(l8, l1)
    out["logits_shape"] = list(l8.shape)
    out["loss"] = rel(m8["loss"], m1["loss"])
    # whole-model L2 norms (per-leaf maxima amplify summation-order rounding: see test_parallel)
    diff = np.linalg.norm(whole(v8) - whole(v1))
    out["variables"] = float(diff / np.linalg.norm(whole(v1)))
    out["of_update"] = float(diff / np.linalg.norm(whole(v1["params"]) - whole(variables["params"])))
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
