"""The two CPU speed-ups, measured: XLA compiler options and the persistent compilation cache.

    python benchmarks/before_after.py [--models ...] [--batch 8] [--repeats 5] [--size N] [--skip-cache]

1. Per model (native input size, fp32, random weights shared with timm): timm eager, ours under
   plain ``jax.jit`` (XLA's defaults: before) and under ``rj.jit`` (``rj.compiler_options()``:
   after), and plain ``jax.jit`` with plain convolutions ("plain convs": ``Conv2d``'s forms off
   YNNPACK turned off, ``xla.convs_on_ynnpack``; the code before issue 23), timed interleaved in
   one process; prints each ratio to timm and the max |logit difference| / max |logit| of each
   against timm.
2. The first call (compile + run) of ``--cache-model`` in a fresh process with an empty
   persistent compilation cache, then in a second fresh process with the cache it left.
"""
import argparse
import os
import sys
import tempfile
from unittest import mock

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import (SEED_MODELS, _input, _interleaved, _jax_model, _timm_call, _torch_setup,  # noqa: E402
                   native_size, run_worker, WORKER_TIMEOUT_S)


def compare_options(name, batch, repeats, threads, size=None):
    import jax
    import timm
    import resnets_jax as rj
    torch = _torch_setup(threads)
    torch.manual_seed(0)
    tmodel = timm.create_model(name).eval()
    model, variables = _jax_model(name, "fp32", tmodel)
    x = _input(batch, size or native_size(name))
    xj = jax.device_put(x)
    call = _timm_call(torch, tmodel, "fp32")
    ref = call(x)
    fns, diffs = {"timm": lambda: call(x)}, {}
    for label, jit, forms in (("jax.jit", jax.jit, True), ("rj.jit", rj.jit, True),
                              ("jax.jit, plain convs", jax.jit, False)):
        with mock.patch.object(rj.xla, "convs_on_ynnpack", rj.xla.convs_on_ynnpack if forms else lambda: False):
            # a new function each time: jax.jit would reuse the trace it holds for model.apply
            compiled = jit(lambda v, x: model.apply(v, x)).lower(variables, xj).compile()
        diffs[label] = float(np.abs(np.asarray(compiled(variables, xj)) - ref).max() / np.abs(ref).max())
        fns[label] = lambda c=compiled: c(variables, xj).block_until_ready()
    t = _interleaved(fns, repeats)
    print(f"{name} batch {batch} fp32: timm eager {t['timm'] * 1e3:.0f} ms; "
          + "; ".join(f"{k} {t[k] * 1e3:.0f} ms = x{t['timm'] / t[k]:.2f} timm (diff {diffs[k]:.1e})"
                      for k in diffs) + f"; rj.jit / jax.jit speed x{t['jax.jit'] / t['rj.jit']:.2f}", flush=True)


def compile_cache(name, batch, threads, size=None):
    with tempfile.TemporaryDirectory(prefix="resnets_jax_cache_") as cache_dir:
        cfg = dict(name=name, size=size or native_size(name), dtype="fp32", batch=batch, threads=threads, repeats=1,
                   cache_dir=cache_dir, impl="jax")
        for label in ("empty cache", "warm cache (second process)"):
            res = run_worker("first", cfg, WORKER_TIMEOUT_S)
            print(f"{name} batch {batch} first call (compile + run), fresh process, {label}: "
                  f"{res.get('first_call_s', float('nan')):.1f} s {res.get('error', '')}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(SEED_MODELS))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--cache-model", default="resnest101e")
    p.add_argument("--size", type=int, default=None, help="input size (default: each model's native one)")
    p.add_argument("--skip-cache", action="store_true", help="only part 1")
    args = p.parse_args()
    print("load average %.1f / %.1f / %.1f" % os.getloadavg())
    for name in args.models:
        compare_options(name, args.batch, args.repeats, args.threads, args.size)
    if not args.skip_cache:
        compile_cache(args.cache_model, args.batch, args.threads, args.size)
    print("load average %.1f / %.1f / %.1f" % os.getloadavg())


if __name__ == "__main__":
    main()
