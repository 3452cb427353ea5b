"""Speed ratios in one run: ours (recommended ``rj.jit`` and plain ``jax.jit``) against timm eager
and timm under ``torch.compile``, fp32, interleaved, minimum of N.

    python benchmarks/ratios.py [--models resnetv2_50 res2net101_26w_4s resnest101e resnet50 resnet18] [--batch 1 8]
                                [--repeats 7] [--size N] [--no-compile] [--first-call resnest101e]
                                [--output benchmarks/results/ratios-CPU-KIND]

Per model, one fresh process builds timm's model and ours on the same (random) weights, compiles
all four forward passes for every batch size (torch.compile with ``dynamic=False``), then calls
them in turn ``--repeats`` times (model by model, every batch size and implementation in each
round) and keeps each one's minimum: on a machine shared with other work the minimum is the
figure least disturbed by it, and interleaving exposes all four to the same disturbances. Then
the first call (compile + run, fresh process, empty compilation cache) of ``--first-call``
through ``rj.jit``. Writes ``OUTPUT.md`` and ``OUTPUT.csv``.
"""
import argparse
import csv
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import (DEFAULT_MODELS, RESULTS_DIR, WORKER_TIMEOUT_S, _input, _jax_model, _timm_call,  # noqa: E402
                   _torch_setup, cpu_info, load_note, machine_header, native_size, run_worker)

IMPLS = ("timm", "compiled", "rj.jit", "jax.jit")
# One model's process: two torch.compile runs of a 101-layer model take over 20 min on 2 busy cores.
MODEL_TIMEOUT_S = 3600
COLUMNS = ("cpu", "isa", "model", "input", "batch", "timm_ms", "compiled_ms", "rj_ms", "jax_ms",
           "rj_vs_timm", "rj_vs_compiled", "jax_vs_timm", "jax_vs_compiled", "max_rel_diff")


def work(cfg):
    """One model, every batch size: minimum ms per call of each implementation (JSON rows)."""
    import jax
    import resnets_jax as rj
    torch = _torch_setup(cfg["threads"])
    import timm
    torch.manual_seed(0)
    tmodel = timm.create_model(cfg["name"]).eval()
    model, variables = _jax_model(cfg["name"], "fp32", tmodel)
    eager = _timm_call(torch, tmodel, "fp32")
    compiled_model = torch.compile(tmodel, dynamic=False) if cfg["compile"] else None
    fns, diffs = {}, {}
    for b in cfg["batch"]:
        x = _input(b, cfg["size"])
        xj = jax.device_put(x)
        ref = eager(x)
        fns[b, "timm"] = lambda x=x: eager(x)
        if compiled_model is not None:
            call = _timm_call(torch, compiled_model, "fp32")
            call(x)  # compiles for this shape
            fns[b, "compiled"] = lambda x=x, call=call: call(x)
        for label, jit in (("rj.jit", rj.jit), ("jax.jit", jax.jit)):
            exe = jit(model.apply).lower(variables, xj).compile()
            out = np.asarray(exe(variables, xj))
            diffs[b] = max(diffs.get(b, 0.0), float(np.abs(out - ref).max() / np.abs(ref).max()))
            fns[b, label] = lambda exe=exe, xj=xj: exe(variables, xj).block_until_ready()
    times = {k: [] for k in fns}
    for _ in range(cfg["repeats"]):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return [{"batch": b, "diff": diffs[b],
             **{impl: 1e3 * min(times[b, impl]) for impl in IMPLS if (b, impl) in times}} for b in cfg["batch"]]


def _ratio(a, b):
    return None if a is None or b is None else b / a


def run(args):
    cpu, isa, _ = cpu_info()
    rows = []
    for name in args.models:
        size = args.size or native_size(name)
        cfg = dict(name=name, size=size, batch=args.batch, repeats=args.repeats, threads=args.threads,
                   compile=not args.no_compile)
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(cfg)]
        res = _subprocess(cmd, MODEL_TIMEOUT_S)
        if isinstance(res, str):
            print(f"{name}: failed: {res}", flush=True)
            continue
        for r in res:
            row = dict(cpu=cpu, isa=isa, model=name, input=size, batch=r["batch"], timm_ms=r["timm"],
                       compiled_ms=r.get("compiled"), rj_ms=r["rj.jit"], jax_ms=r["jax.jit"],
                       max_rel_diff=r["diff"])
            row.update(rj_vs_timm=_ratio(row["rj_ms"], row["timm_ms"]),
                       rj_vs_compiled=_ratio(row["rj_ms"], row["compiled_ms"]),
                       jax_vs_timm=_ratio(row["jax_ms"], row["timm_ms"]),
                       jax_vs_compiled=_ratio(row["jax_ms"], row["compiled_ms"]))
            rows.append(row)
            print(" ".join(f"{k}={_fmt(row[k])}" for k in COLUMNS[2:]), flush=True)
    first = None
    if args.first_call:
        with tempfile.TemporaryDirectory(prefix="resnets_jax_ratios_xla_") as cache_dir:
            cfg = dict(name=args.first_call, size=args.size or native_size(args.first_call), dtype="fp32",
                       batch=1, threads=args.threads, repeats=1, cache_dir=cache_dir, impl="jax")
            first = run_worker("first", cfg, WORKER_TIMEOUT_S)
        print(f"{args.first_call} first call (compile + run, fresh process, batch 1): {first}", flush=True)
    return rows, first


def _subprocess(cmd, timeout):
    import subprocess
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                             env=dict(os.environ, TORCHINDUCTOR_COMPILE_THREADS="1"))
    except subprocess.TimeoutExpired:
        return f"timeout after {timeout:.0f} s"
    lines = res.stdout.strip().splitlines()
    if res.returncode or not lines:
        return f"exit {res.returncode}: {(res.stderr.strip().splitlines() or ['no output'])[-1][:200]}"
    return json.loads(lines[-1])


def _fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1e}" if v < 1e-2 else f"{v:.2f}"
    return str(v)


def write(rows, first, args, header, loads):
    with open(args.output + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k) for k in COLUMNS})
    lines = [
        f"# Speed ratios, fp32: {header}", "",
        f"`{' '.join(['python', 'benchmarks/ratios.py'] + sys.argv[1:])}`", "",
        f"Machine load: {loads[0]} at the start, {loads[1]} at the end. The machine is shared: each "
        f"figure is the minimum of {args.repeats} calls, all implementations interleaved in one process "
        f"per model, {args.threads} torch threads. ms: per call; ratios > 1: ours faster. rj.jit: "
        "`rj.jit(model.apply)` (recommended); jax.jit: plain `jax.jit(model.apply)`; timm: eager, "
        "`torch.inference_mode()`; compiled: `torch.compile(model, dynamic=False)`. Diff: max |logit "
        "difference| / max |logit| of ours against timm eager.", "",
        "| model | input | batch | timm ms | compiled ms | rj.jit ms | jax.jit ms | rj.jit / timm "
        "| rj.jit / compiled | jax.jit / timm | jax.jit / compiled | diff |",
        "|" + " --- |" * 12,
    ]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r[k]) for k in COLUMNS[2:]) + " |")
    if first is not None:
        lines += ["", f"First call of {args.first_call} (batch 1, compile + run through `rj.jit`, fresh "
                      f"process, empty compilation cache): "
                      + (f"{first['first_call_s']:.1f} s" if "first_call_s" in first else first.get("error", "?"))]
    with open(args.output + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(work(json.loads(sys.argv[2]))))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    p.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--size", type=int, default=None, help="input size (default: each model's native one)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    p.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    p.add_argument("--first-call", default="resnest101e", help="model whose first call is timed ('' : none)")
    p.add_argument("--output", default=None, help="path prefix (default: benchmarks/results/ratios-CPU-KIND)")
    args = p.parse_args()
    args.output = args.output or os.path.join(RESULTS_DIR, "ratios-" + cpu_info()[2])
    header = machine_header()
    loads = [load_note()]
    print(header, loads[0], flush=True)
    rows, first = run(args)
    loads.append(load_note())
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    write(rows, first, args, header, loads)
    print(f"wrote {args.output}.md, .csv")
    if not rows or len(rows) < len(args.models) * len(args.batch):
        sys.exit(1)


if __name__ == "__main__":
    main()
