"""GPU check: parity of the seed models (and resnet50, resnet18) on the GPU, then throughput
against timm. Run through ``benchmarks/gpu_check.sh`` (which bounds it to 8 minutes);
``--cpu-smoke`` runs every step at tiny settings on CPU (the test suite does).

    python benchmarks/gpu_check.py [--batch 256] [--repeats 10] [--budget-s 450] [--output PREFIX]
    python benchmarks/gpu_check.py --cpu-smoke --output /tmp/gpu_smoke

1. Parity: per model, timm's model with every parameter and buffer perturbed (the hub is
   unreachable, so random weights made far from init), on CUDA with TF32 off (matmul and cuDNN),
   against ours converted from it, JAX at ``highest`` matmul/conv precision; batch 2 at the
   native input size. Reports max |logit difference| / max |logit| against ``PARITY_TOL``.
2. Throughput at ``--batch`` (images/s, minimum time of ``--repeats`` calls after warm-up), fp32
   and bf16: timm eager (channels_last; bf16 under ``torch.autocast``), timm under
   ``torch.compile`` (the same), ours through plain ``jax.jit(model.apply)`` (bf16:
   ``create_model(dtype=jnp.bfloat16)``), at JAX's default precision.
Every step is time-boxed by ``--budget-s``: once it is spent the remaining steps are reported as
skipped. Writes ``PREFIX.md`` and ``PREFIX.json`` (default ``benchmarks/results/gpu-<device>``).
"""
import argparse
import contextlib
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import DEFAULT_MODELS, RESULTS_DIR, native_size  # noqa: E402

PARITY_TOL = 1e-4  # fp32 on both sides, no TF32: cuDNN's and XLA's algorithms sum in different orders
SMOKE_MODELS = ("resnetv2_18",)  # the smallest: the smoke run checks the script, test_parity the models


def perturb_(model, seed):
    """Every float parameter and buffer of a timm model moved far from its init (running
    variances kept positive), so that parity tests all of them."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=g) * 0.1
            t.copy_(t.abs() * (1 + noise.abs()) + 0.05 if name.endswith("running_var") else t + noise)
    return model


class Budget:
    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self):
        return self.end - time.monotonic()


def parity(name, size, device, tol):
    import jax
    import torch
    import timm
    import resnets_jax as rj
    torch.manual_seed(0)
    tmodel = perturb_(timm.create_model(name), seed=1).eval()
    sd = {k: v.detach().float().numpy() for k, v in tmodel.state_dict().items()}
    x = np.random.default_rng(0).standard_normal((2, size, size, 3)).astype(np.float32)
    with torch.inference_mode():
        ref = tmodel.to(device)(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(device)).float().cpu().numpy()
    model = rj.build_model(name)
    variables = rj.convert_timm_state_dict(model, sd)
    with jax.default_matmul_precision("highest"):
        out = np.asarray(jax.jit(model.apply)(variables, jax.device_put(x)))
    err = float(np.abs(out - ref).max() / np.abs(ref).max())
    return {"model": name, "input": size, "rel_err": err, "ok": err <= tol}


def _min_time(fn, repeats, sync):
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return min(times)


def throughput(name, size, batch, dtype, device, repeats, compile_):
    """images/s of timm eager, timm compiled and ours (jax.jit) for one model and dtype."""
    import jax
    import jax.numpy as jnp
    import torch
    import timm
    import resnets_jax as rj
    torch.manual_seed(0)
    tmodel = timm.create_model(name).eval()
    model, variables = rj.create_model(name, dtype=jnp.bfloat16 if dtype == "bf16" else jnp.float32)
    variables = rj.convert_timm_state_dict(model, {k: v.float().numpy() for k, v in tmodel.state_dict().items()})
    tmodel = tmodel.to(device).to(memory_format=torch.channels_last)
    x = np.random.default_rng(0).standard_normal((batch, size, size, 3)).astype(np.float32)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(device).contiguous(memory_format=torch.channels_last)
    amp = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if dtype == "bf16" else contextlib.nullcontext
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    out = {"model": name, "input": size, "batch": batch, "dtype": dtype}

    def timm_fn(m):
        def call():
            with torch.inference_mode(), amp():
                return m(xt)
        return call
    out["timm_img_s"] = batch / _min_time(timm_fn(tmodel), repeats, sync)
    if compile_:
        t = time.perf_counter()
        compiled = timm_fn(torch.compile(tmodel))
        compiled()
        sync()
        out["compile_s"] = time.perf_counter() - t
        out["compiled_img_s"] = batch / _min_time(compiled, repeats, sync)
    xj = jax.device_put(x)
    exe = jax.jit(model.apply).lower(variables, xj).compile()
    out["jax_img_s"] = batch / _min_time(lambda: exe(variables, xj).block_until_ready(), repeats, lambda: None)
    return out


def write(results, prefix, header):
    with open(prefix + ".json", "w") as f:
        json.dump({"header": header, **results}, f, indent=1)
    lines = [f"# GPU check: {header}", "", f"`{' '.join(['python', 'benchmarks/gpu_check.py'] + sys.argv[1:])}`",
             "", f"## Parity (batch 2, perturbed random weights, timm TF32 off, JAX `highest`; tol {PARITY_TOL})", "",
             "| model | input | rel err | ok |", "| --- | --- | --- | --- |"]
    for r in results["parity"]:
        err = f"{r['rel_err']:.1e}" if "rel_err" in r else "-"
        lines.append(f"| {r['model']} | {r.get('input', '-')} | {err} | {r.get('ok', r.get('error'))} |")
    lines += ["", "## Throughput (images/s, min time of the repeats; ours: plain `jax.jit`)", "",
              "| model | input | batch | dtype | timm eager | torch.compile | ours | ours / eager | ours / compiled |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results["throughput"]:
        if "error" in r:
            lines.append(f"| {r['model']} | - | - | {r['dtype']} | {r['error']} | | | | |")
            continue
        c, ours = r.get("compiled_img_s"), r["jax_img_s"]
        compiled, vs_compiled = ("-", "-") if c is None else (f"{c:.1f}", f"{ours / c:.2f}")
        lines.append(f"| {r['model']} | {r['input']} | {r['batch']} | {r['dtype']} | {r['timm_img_s']:.1f} | "
                     f"{compiled} | {ours:.1f} | {ours / r['timm_img_s']:.2f} | {vs_compiled} |")
    with open(prefix + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-smoke", action="store_true",
                   help="on CPU: parity of three small models at 32x32, throughput of one, no torch.compile")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--budget-s", type=float, default=450,
                   help="time for all steps; the rest is skipped (--cpu-smoke: no limit)")
    p.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    p.add_argument("--output", default=None)
    args = p.parse_args()
    if args.cpu_smoke:
        os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    import torch
    torch.backends.cuda.matmul.allow_tf32 = False  # the parity step; AMP rows use bf16 anyway
    torch.backends.cudnn.allow_tf32 = False
    device = "cpu" if args.cpu_smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: torch sees no CUDA device (use --cpu-smoke on CPU)")
    if device == "cuda" and jax.default_backend() != "gpu":
        sys.exit(f"gpu_check: JAX's backend is {jax.default_backend()!r}, not 'gpu' (install jax[cuda12])")
    models = SMOKE_MODELS if args.cpu_smoke else DEFAULT_MODELS
    sizes = {m: 32 if args.cpu_smoke else native_size(m) for m in models}
    batch = 2 if args.cpu_smoke else args.batch
    repeats = 1 if args.cpu_smoke else args.repeats
    compile_ = not (args.cpu_smoke or args.no_compile)
    dev_name = str(jax.devices()[0].device_kind)
    header = (f"{dev_name}; jax {jax.__version__}, torch {torch.__version__}"
              + (f" (CUDA {torch.version.cuda})" if device == "cuda" else " (--cpu-smoke)"))
    prefix = args.output or os.path.join(RESULTS_DIR, "gpu-" + "-".join(dev_name.lower().split()))
    budget = Budget(float("inf") if args.cpu_smoke else args.budget_s)
    results = {"parity": [], "throughput": []}
    print(header, flush=True)

    def step(kind, fn, **info):
        if budget.left() <= 0:
            r = {**info, "error": "skipped: time budget spent"}
        else:
            try:
                r = fn()
            except Exception as e:  # one failing step must not lose the others' figures
                r = {**info, "error": f"{type(e).__name__}: {str(e)[:200]}"}
        results[kind].append(r)
        print(kind, json.dumps(r), flush=True)
        return r

    for m in models:
        step("parity", lambda: parity(m, sizes[m], device, PARITY_TOL), model=m)
    for dtype in ("fp32", "bf16"):
        for m in models[:1] if args.cpu_smoke else models:  # smoke: one model runs every code path
            step("throughput", lambda: throughput(m, sizes[m], batch, dtype, device, repeats, compile_),
                 model=m, dtype=dtype)
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    write(results, prefix, header)
    print(f"wrote {prefix}.md, .json", flush=True)
    failed = [r for r in results["parity"] if not r.get("ok")] + [r for r in results["throughput"] if "error" in r]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
