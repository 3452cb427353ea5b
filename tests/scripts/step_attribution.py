"""Where one fp32 SGD step of resnetv2_18d (fresh init, 16 images at 64 px, label smoothing 0.1)
loses its agreement with float64 (docs/exactness.md):

* per BatchNorm+ReLU layer: ReLU decisions that differ between the fp32 and float64 forward
  (training mode), the layer's map size, and its smallest batch variance;
* the stem's 3x3/2 max-pool: windows whose winner differs;
* per parameter: its share of ||p32 - p64||^2 after the step;
* float64 only: the step's sensitivity to fp32-sized rounding (relative noise 2^-24) injected at
  one conv's output at a time, as a fraction of the update.

    PYTHONPATH=. python tests/scripts/step_attribution.py [resnetv2_18d] [--options]
"""
import os
import pickle
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

import resnets_jax as rj
from resnets_jax.layers.conv import Conv2d
from resnets_jax.train import TrainState, make_train_step
from step_conditioning import CLASSES, LR, SMOOTHING, batch_for

jax.config.update("jax_default_matmul_precision", "highest")
EPS32 = 2.0 ** -24


def cast(tree, dtype):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def flat(tree):
    return {jax.tree_util.keystr(k): np.asarray(v, np.float64) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def forward_maps(model, variables, x, options):
    """Every BatchNormAct2d output and the stem's output (pre-pool), training mode."""
    def f(v, x):
        _, state = model.apply(v, x, train=True, mutable=["batch_stats", "intermediates"], capture_intermediates=True)
        return state["intermediates"]
    return flat(jax.jit(f, compiler_options=options)(variables, x))


def step(model, variables, batch, options, noise_at=None):
    """Parameters after one step; ``noise_at``: (conv index, relative size) of noise on one conv's output."""
    tx = optax.sgd(LR, momentum=0.9)
    train_step = make_train_step(model, tx, SMOOTHING)

    def run(state, batch, scales):
        count = [0]

        def inject(next_fun, args, kwargs, context):
            y = next_fun(*args, **kwargs)
            if isinstance(context.module, Conv2d) and context.method_name == "__call__":
                i = count[0]
                count[0] += 1
                noise = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(7), i), y.shape, y.dtype)
                y = y * (1 + scales[i] * noise)
            return y
        with nn.intercept_methods(inject):
            return train_step(state, batch, jax.random.PRNGKey(1))[0].params

    return jax.jit(run, compiler_options=options)


def main(name="resnetv2_18d", options=False):
    cache = os.environ.get("ATTRIBUTION_CACHE")  # a pickle of the measurements, to re-run the report
    if cache and os.path.exists(cache):
        with open(cache, "rb") as f:
            report(name, options, *pickle.load(f))
        return
    data = measure(name, options)
    if cache:
        with open(cache, "wb") as f:
            pickle.dump(data, f)
    report(name, options, *data)


def measure(name, options):
    opts = rj.compiler_options() if options else {}
    model32, variables = rj.create_model(name, num_classes=CLASSES, rng=jax.random.PRNGKey(0))
    batch = batch_for()
    tx = optax.sgd(LR, momentum=0.9)
    with jax.enable_x64(True):
        model64 = rj.build_model(name, num_classes=CLASSES, dtype=jnp.float64, param_dtype=jnp.float64)
        v64 = cast(variables, jnp.float64)
        maps64 = forward_maps(model64, v64, jnp.asarray(batch["image"], jnp.float64), {})
        run64 = step(model64, v64, batch, {})
        n_conv = len(jax.tree_util.tree_leaves(variables["params"]))  # an upper bound on the conv count
        zeros = np.zeros(n_conv)
        s64 = TrainState.create(v64, tx)
        p64 = flat(run64(s64, batch, zeros))
        convs = [k for k in flat(variables["params"]) if k.endswith("['kernel']") and "head" not in k]
        p0 = flat(variables["params"])
        upd = np.sqrt(sum(np.sum((p64[k] - p0[k]) ** 2) for k in p64))
        sens = {}
        for i, k in enumerate(convs):
            scales = zeros.copy()
            scales[i] = EPS32
            p = flat(run64(s64, batch, scales))
            sens[k.replace("['kernel']", "")] = np.sqrt(sum(np.sum((p[j] - p64[j]) ** 2) for j in p)) / upd
        scales = zeros.copy()
        scales[:len(convs)] = EPS32
        p = flat(run64(s64, batch, scales))
        sens["all convs"] = np.sqrt(sum(np.sum((p[j] - p64[j]) ** 2) for j in p)) / upd
    maps32 = forward_maps(model32, variables, batch["image"], opts)
    p32 = flat(step(model32, variables, batch, opts)(TrainState.create(variables, tx), batch, zeros.astype(np.float32)))
    return maps32, maps64, p32, p64, p0, sens, upd


def report(name, options, maps32, maps64, p32, p64, p0, sens, upd):

    print(f"{name}, fp32 under {'rj.compiler_options()' if options else 'plain jax.jit'} against float64")
    print(f"update {upd:.3e}; fp32 step off float64 by {np.sqrt(sum(np.sum((p32[k] - p64[k]) ** 2) for k in p64)) / upd:.2e}"
          " of the update")
    print("\nReLU decisions differing (count / elements), map HxW:")
    for k, y64 in maps64.items():
        parts = k.split("]")
        if len(parts) < 4 or not k.endswith("['__call__'][0]") or "norm" not in parts[-4]:
            continue
        y32 = maps32[k]
        flips = int(np.sum((y32 > 0) != (y64 > 0)))
        print(f"  {k.replace(chr(39), '').replace('][', '.').replace(']', '').replace('[', '')}: {flips} / {y64.size}"
              f"  {y64.shape[1]}x{y64.shape[2]}")
    stem = [k for k in maps64 if k.startswith("['stem']['__call__']")][0]
    s32, s64_ = maps32[stem], maps64[stem]
    print(f"\nstem max-pool windows with a different winner: {pool_flips(s32, s64_)} of {pool_windows(s64_)}")
    print("\nshare of ||p32 - p64||^2 per parameter (top 10):")
    d2 = {k: float(np.sum((p32[k] - p64[k]) ** 2)) for k in p64}
    total = sum(d2.values())
    for k in sorted(d2, key=d2.get, reverse=True)[:10]:
        print(f"  {k}: {d2[k] / total:.3f}")
    print("\nfloat64 step moved by relative noise 2^-24 on one conv's output (fraction of the update):")
    for k, s in sens.items():
        print(f"  {k}: {s:.1e}")


def _windows(x):
    """3x3/2 windows with padding 1 (torch's max_pool2d(3, 2, 1)): (B, Ho, Wo, C, 9)."""
    b, h, w, c = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    return np.stack([xp[:, i:i + 2 * ho:2, j:j + 2 * wo:2] for i in range(3) for j in range(3)], -1)


def pool_flips(a, b) -> int:
    return int(np.sum(np.argmax(_windows(a), -1) != np.argmax(_windows(b), -1)))


def pool_windows(a) -> int:
    return int(np.prod(_windows(a).shape[:-1]))


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(*args, options="--options" in sys.argv)
