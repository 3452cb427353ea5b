"""Latency of the exported artifacts in their own runtimes, beside ``rj.jit``, per CPU kind.

    python benchmarks/export_latency.py [--models resnetv2_50 ...] [--batch 1 8] [--repeats 5]
                                        [--size N] [--threads N] [--output benchmarks/results/NAME]

Per model (random weights: latency does not depend on them) at its native input size, in one
process, each runtime compiled once per batch size, then timed interleaved (one call of each in
turn, median of ``--repeats``):

- ``rj.jit``: ``rj.jit(model.apply)`` (our recommended CPU options);
- ``stablehlo``: the ``jax.export`` artifact for this CPU (``resnets-jax export``'s default),
  serialized, deserialized and compiled with the options recorded beside it;
- ``stablehlo-portable``: the artifact exported for ``cpu,cuda`` (no CPU-only lowering baked in);
- ``onnx``: timm's exporter on timm's module holding our weights (``--format onnx``; the same graph
  as timm's own ONNX export of that model), in onnxruntime's CPU provider.

Writes ``NAME.csv`` and ``NAME.md``; NAME defaults to ``export-<cpu kind>`` (bench.py's ``cpu_info``).
"""
import argparse
import csv
import datetime
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import RESULTS_DIR, SEED_MODELS, cpu_info  # noqa: E402

RUNTIMES = ("rj.jit", "stablehlo", "stablehlo-portable", "onnx")
COLUMNS = ("cpu", "isa", "model", "input", "batch") + tuple(f"{r}_ms" for r in RUNTIMES) + ("max_rel_diff",)


def _ms(fun):
    t = time.perf_counter()
    fun()
    return 1e3 * (time.perf_counter() - t)


def measure(name, size, batches, repeats, threads, log):
    import jax

    import resnets_jax as rj
    from resnets_jax.export import call_compiler_options, export_onnx, export_stablehlo
    model, variables = rj.create_model(name)
    size = size or rj.data.resolve_data_config(model)["input_size"][1]
    runners = {"rj.jit": (lambda f: (lambda x: f(variables, x)))(rj.jit(model.apply))}
    for key, platforms in (("stablehlo", ("cpu",)), ("stablehlo-portable", ("cpu", "cuda"))):
        exported, weights = export_stablehlo(model, variables, input_size=(size, size), platforms=platforms)
        call = jax.jit(jax.export.deserialize(exported.serialize()).call,
                       compiler_options=call_compiler_options(platforms).get("cpu"))
        runners[key] = (lambda c, w: (lambda x: c(w, x)))(call, weights)
    tmp = tempfile.mkdtemp()
    onnx_path = os.path.join(tmp, f"{name}.onnx")
    export_onnx(model, variables, onnx_path, input_size=(size, size))
    import onnxruntime as ort  # one session, kept (resnets_jax.export.run_onnx opens one per call)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    runners["onnx"] = lambda x: session.run(None, {"input0": np.ascontiguousarray(x.transpose(0, 3, 1, 2))})[0]
    rows = []
    for batch in batches:
        x = np.random.default_rng(0).standard_normal((batch, size, size, 3), np.float32)
        outs = {k: np.asarray(jax.block_until_ready(f(x)), np.float64) for k, f in runners.items()}  # compile
        ref = outs["rj.jit"]
        diff = max(float(np.abs(o - ref).max() / np.abs(ref).max()) for o in outs.values())
        ms = {k: [] for k in runners}
        for _ in range(repeats):  # interleaved: the machine's load falls on every runtime alike
            for k, f in runners.items():
                ms[k].append(_ms(lambda: jax.block_until_ready(f(x))))
        row = dict(model=name, input=size, batch=batch, max_rel_diff=f"{diff:.1e}",
                   **{f"{k}_ms": f"{np.median(v):.1f}" for k, v in ms.items()})
        log(f"{name} {size}px batch {batch}: " + ", ".join(f"{k} {row[k + '_ms']} ms" for k in runners))
        rows.append(row)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(SEED_MODELS))
    p.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--size", type=int, help="default: each model's data config")
    p.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: its own choice)")
    p.add_argument("--output", help="default: benchmarks/results/export-<cpu kind>")
    args = p.parse_args(argv)
    cpu, isa, kind = cpu_info()
    out = args.output or os.path.join(RESULTS_DIR, f"export-{kind}")
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    rows = []
    for name in args.models:
        rows += [dict(cpu=cpu, isa=isa, **r) for r in measure(name, args.size, args.batch, args.repeats,
                                                               args.threads, lambda m: print(m, flush=True))]
    with open(out + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        w.writerows(rows)
    import jax
    import onnxruntime
    import torch
    with open(out + ".md", "w") as f:
        f.write(f"# Exported artifacts: latency on {cpu}, {os.cpu_count()} cores; jax {jax.__version__}, "
                f"onnxruntime {onnxruntime.__version__}, torch {torch.__version__}; "
                f"{datetime.date.today()}\n\nLoad average {load} (1 / 5 / 15 min) at the start.\n\n"
                f"`python benchmarks/export_latency.py {' '.join(sys.argv[1:] if argv is None else argv)}`\n\n"
                "ms per call (lower is better), median of the repeats, runtimes interleaved. diff: the largest "
                "max |logit difference| / max |logit| of a runtime against rj.jit.\n\n"
                "| model | input | batch | " + " | ".join(f"{r} ms" for r in RUNTIMES) + " | diff |\n"
                "| --- | --- | --- | " + " | ".join("---" for _ in RUNTIMES) + " | --- |\n")
        for r in rows:
            f.write(f"| {r['model']} | {r['input']} | {r['batch']} | "
                    + " | ".join(r[f"{k}_ms"] for k in RUNTIMES) + f" | {r['max_rel_diff']} |\n")
    print(f"wrote {out}.csv and {out}.md")


if __name__ == "__main__":
    main()
