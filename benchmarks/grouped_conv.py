"""Grouped 3x3 convs (ResNeSt's SplitAttn ``conv``, Res2NeXt's ``convs``): one
``feature_group_count`` convolution vs the same conv split per group and concatenated, and
which of the two ``resnets_jax.xla.split_grouped_conv`` picks.

    python benchmarks/grouped_conv.py [--batch 1 8] [--repeats 10] [--shapes resnest101e ...]
                                      [--model resnest50d ...] [--size 224]

Jitted, fp32, on whatever backend JAX finds, under XLA's defaults (plain ``jax.jit``) and under
``rj.compiler_options()`` (``rj.jit``); per shape and batch size prints the minimum time per call
of each form (interleaved), the rule's pick (``*``) and the max difference between the two
(they compute the same sums, so it stays at rounding level).
``--model``: also the whole forward pass of registered models (random init) with every grouped
conv one way, then the other (``xla.split_grouped_conv`` replaced while jit traces), then as the
rule picks.
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

# (label, H=W of the input, in_chs, out_chs, groups, stride): 3x3 grouped convs of registered models
SHAPES = [
    ("resnest50d layer1 conv2", 56, 64, 128, 2, 1),
    ("resnest50d layer3 conv2", 14, 256, 512, 2, 1),
    ("resnest101e@256 layer1 conv2", 64, 64, 128, 2, 1),
    ("resnest101e@256 layer2.0 conv2", 64, 128, 256, 2, 1),
    ("resnest101e@256 layer2 conv2", 32, 128, 256, 2, 1),
    ("resnest101e@256 layer3 conv2", 16, 256, 512, 2, 1),
    ("resnest101e@256 layer4 conv2", 8, 512, 1024, 2, 1),
    ("resnest50d_4s2x40d layer1 conv2", 56, 80, 320, 8, 1),
    ("res2next50 layer1 convs", 56, 32, 32, 8, 1),
    ("res2next50 layer2.0 convs (s2)", 56, 64, 64, 8, 2),
    ("(ref.) resnext50_32x4d layer1 g32", 56, 128, 128, 32, 1),
    ("(ref.) resnext50_32x4d layer3 g32", 14, 512, 512, 32, 1),
]


def conv(x, w, stride, groups):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)


def grouped(x, w, stride, groups):
    return conv(x, w, stride, groups)


def split(x, w, stride, groups):
    xs = jnp.split(x, groups, axis=-1)
    ws = jnp.split(w, groups, axis=-1)  # HWIO: output channels in group order, as torch's
    return jnp.concatenate([conv(xi, wi, stride, 1) for xi, wi in zip(xs, ws)], axis=-1)


def interleaved_min(fns, repeats):
    """Minimum seconds per call of each ``fn()`` (called once first), calling them in turn."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: min(v) for k, v in times.items()}


def jits():
    import resnets_jax as rj
    return {"jax.jit": jax.jit, "rj.jit": rj.jit}


def bench_shapes(shapes, batches, repeats):
    from resnets_jax.xla import split_grouped_conv
    print(f"{'shape':34s} {'batch':>5s} {'jit':>7s} {'grouped ms':>11s} {'split ms':>9s} "
          f"{'split/grouped':>13s} {'max|diff|':>10s}")
    rng = np.random.RandomState(0)
    for label, hw, cin, cout, g, s in shapes:
        w = jnp.asarray(rng.randn(3, 3, cin // g, cout) * 0.1, jnp.float32)
        for b in batches:
            x = jnp.asarray(rng.randn(b, hw, hw, cin), jnp.float32)
            pick = split_grouped_conv(x.shape, g, 3, backend=jax.default_backend())
            for jit_name, jit in jits().items():
                f_g = jit(grouped, static_argnums=(2, 3))
                f_s = jit(split, static_argnums=(2, 3))
                diff = float(jnp.abs(f_g(x, w, s, g) - f_s(x, w, s, g)).max())
                t = interleaved_min({"g": lambda: f_g(x, w, s, g).block_until_ready(),
                                     "s": lambda: f_s(x, w, s, g).block_until_ready()}, repeats)
                marks = ("", "*") if pick else ("*", "")
                print(f"{label:34s} {b:5d} {jit_name:>7s} {t['g'] * 1e3:10.2f}{marks[0]:1s} "
                      f"{t['s'] * 1e3:8.2f}{marks[1]:1s} {t['s'] / t['g']:13.2f} {diff:10.1e}", flush=True)


def bench_models(names, batches, size, repeats):
    import resnets_jax as rj
    from resnets_jax import xla
    print(f"\n{'model':34s} {'batch':>5s} {'jit':>7s} {'grouped ms':>11s} {'split ms':>9s} "
          f"{'rule ms':>8s} {'split/grouped':>13s} {'max|diff|':>10s} {'programs':>8s}")
    for name in names:
        model, variables = rj.create_model(name, zero_init_last=False)  # live residual branches: diffs show
        for b in batches:
            x = jnp.asarray(np.random.RandomState(0).randn(b, size, size, 3), jnp.float32)
            for jit_name, jit in jits().items():
                fns, outs, texts = {}, {}, {}
                rule = xla.split_grouped_conv
                for mode in ("grouped", "split", "rule"):
                    if mode != "rule":  # Conv2d(split_groups=None) asks xla.split_grouped_conv while jit traces
                        xla.split_grouped_conv = lambda *a, _split=(mode == "split"), **k: _split
                    try:
                        # a new function each time: jax.jit (and rj.jit's memo) would reuse the trace it holds
                        compiled = jit(lambda v, x: model.apply(v, x)).lower(variables, x).compile()
                    finally:
                        xla.split_grouped_conv = rule
                    outs[mode], texts[mode] = compiled(variables, x), compiled.as_text()
                    fns[mode] = lambda c=compiled: c(variables, x).block_until_ready()
                t = interleaved_min(fns, repeats)
                diff = float(jnp.abs(outs["grouped"] - outs["split"]).max())
                print(f"{name:34s} {b:5d} {jit_name:>7s} {t['grouped'] * 1e3:11.1f} {t['split'] * 1e3:9.1f} "
                      f"{t['rule'] * 1e3:8.1f} {t['split'] / t['grouped']:13.2f} {diff:10.1e} "
                      # 'same': one program timed as both modes (a model without grouped convs, or a reused trace)
                      f"{'differ' if texts['grouped'] != texts['split'] else 'same':>8s}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--shapes", nargs="*", default=None,
                   help="only the shapes whose label contains one of these (default: all; none: skip)")
    p.add_argument("--model", nargs="*", default=[], help="registered models to time end to end")
    p.add_argument("--size", type=int, default=224, help="input size for --model")
    args = p.parse_args()
    print(f"backend={jax.default_backend()} devices={jax.devices()}; min of {args.repeats}, interleaved; "
          f"* = what xla.split_grouped_conv picks")
    shapes = SHAPES if args.shapes is None else [s for s in SHAPES if any(k in s[0] for k in args.shapes)]
    if shapes:
        bench_shapes(shapes, args.batch, args.repeats)
    if args.model:
        bench_models(args.model, args.batch, args.size, args.repeats)


if __name__ == "__main__":
    main()
