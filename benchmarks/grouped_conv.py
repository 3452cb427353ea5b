"""Grouped 3x3 convs (ResNeSt's SplitAttn ``conv``, Res2NeXt's ``convs``): one
``feature_group_count`` convolution vs the same conv split per group and concatenated.

    python benchmarks/grouped_conv.py [--batch 8] [--repeats 10] [--model resnest50d ...]

Jitted, fp32, on whatever backend JAX finds; prints the median time per call and the max
difference between the two (they compute the same sums, so it stays at rounding level).
``--model``: also the whole forward pass of registered models (224x224, random init) with
``Conv2d``'s grouped convs one way, then the other (``SPLIT_GROUPED_CONV_BACKENDS``).
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

# (label, H=W, in_chs, out_chs, groups, stride): 3x3 grouped convs of the registered models
SHAPES = [
    ("resnest50d layer1 conv2", 56, 64, 128, 2, 1),
    ("resnest50d layer2 conv2", 28, 128, 256, 2, 1),
    ("resnest50d layer3 conv2", 14, 256, 512, 2, 1),
    ("resnest101e@256 layer1 conv2", 64, 64, 128, 2, 1),
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


def bench(fn, *args, repeats):
    fn(*args).block_until_ready()  # compile
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(*args).block_until_ready()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def bench_models(names, batch, repeats):
    import resnets_jax as rj
    from resnets_jax.layers import conv as conv_mod
    from resnets_jax.registry import model_entrypoint
    print(f"\n{'model (224x224)':34s} {'grouped ms':>11s} {'split ms':>9s} {'split/grouped':>13s} {'max|diff|':>10s}")
    x = jnp.asarray(np.random.RandomState(0).randn(batch, 224, 224, 3), jnp.float32)
    default = conv_mod.SPLIT_GROUPED_CONV_BACKENDS
    for name in names:
        model = model_entrypoint(name)(zero_init_last=False)  # live residual branches, so diffs show
        variables = rj.weights._init(model)
        times, outs = {}, {}
        for mode, backends in (("grouped", ()), ("split", (jax.default_backend(),))):
            conv_mod.SPLIT_GROUPED_CONV_BACKENDS = backends  # read when jit traces
            fn = jax.jit(model.apply)
            outs[mode] = fn(variables, x)
            times[mode] = bench(fn, variables, x, repeats=repeats)
        conv_mod.SPLIT_GROUPED_CONV_BACKENDS = default
        diff = float(jnp.abs(outs["grouped"] - outs["split"]).max())
        print(f"{name:34s} {times['grouped'] * 1e3:11.1f} {times['split'] * 1e3:9.1f} "
              f"{times['split'] / times['grouped']:13.2f} {diff:10.1e}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--model", nargs="*", default=[], help="registered models to time end to end")
    args = p.parse_args()
    print(f"backend={jax.default_backend()} devices={jax.devices()} batch={args.batch}")
    print(f"{'shape':34s} {'grouped ms':>11s} {'split ms':>9s} {'split/grouped':>13s} {'max|diff|':>10s}")
    rng = np.random.RandomState(0)
    for label, hw, cin, cout, g, s in SHAPES:
        x = jnp.asarray(rng.randn(args.batch, hw, hw, cin), jnp.float32)
        w = jnp.asarray(rng.randn(3, 3, cin // g, cout) * 0.1, jnp.float32)
        f_g = jax.jit(grouped, static_argnums=(2, 3))
        f_s = jax.jit(split, static_argnums=(2, 3))
        diff = float(jnp.abs(f_g(x, w, s, g) - f_s(x, w, s, g)).max())
        tg = bench(f_g, x, w, s, g, repeats=args.repeats)
        ts = bench(f_s, x, w, s, g, repeats=args.repeats)
        print(f"{label:34s} {tg * 1e3:11.2f} {ts * 1e3:9.2f} {ts / tg:13.2f} {diff:10.1e}")
    if args.model:
        bench_models(args.model, args.batch, args.repeats)


if __name__ == "__main__":
    main()
