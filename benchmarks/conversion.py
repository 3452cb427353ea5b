#!/usr/bin/env python
"""Conversion speed and memory against the cost of reading the checkpoint file.

    python benchmarks/conversion.py resnest101e               # the issue's model
    python benchmarks/conversion.py resnetv2_101 --repeats 7  # any registered architecture
    python benchmarks/conversion.py resnetv2_101 --checkpoint model.safetensors

Budgets (issue 6): converting a checkpoint takes at most 2x the time of reading the file, and the
conversion's peak memory stays under 2.5x the file's size.

Without ``--checkpoint``, timm writes the architecture's (random-init) state dict to
``/tmp/resnets_jax_bench/<name>.safetensors`` (``.bin`` too with ``--torch``). Every measurement
runs in a fresh subprocess, reads and conversions alternating, with the file in the page cache
(one untimed read first):

* read: ``safetensors.numpy.load_file(path)``, the file's tensors into memory (numpy);
* convert: ``resnets_jax.load_state_dict(path)`` + ``convert_timm_state_dict(model, ...)`` to
  JAX arrays (``block_until_ready``), on a model built beforehand (building is not converting),
  in a fresh process. The converter checks its result against the model's variable shapes
  from ``jax.eval_shape(model.init)``, a trace that costs more than the conversion itself and
  is cached on disk per model configuration (``RESNETS_JAX_CACHE_DIR``): "convert" is every
  conversion after an architecture's first on the machine, "first time" the one that traces
  (an empty cache folder; the trace alone is reported as "model trace").
* memory: the child resets its peak-RSS counter (``/proc/self/clear_refs``) after its imports and
  setup, so ``VmHWM`` afterwards is the peak resident memory (anonymous + file-backed) during the
  measured step alone; "peak - before" is what the step added on top of the process as it was.
  tracemalloc would miss numpy/XLA buffers; RSS sees them.

Times are medians over ``--repeats`` runs (minimum in brackets).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

TIME_BUDGET = 2.0    # conversion time / read time
MEMORY_BUDGET = 2.5  # conversion peak memory / file size

CHILD = r"""
import json, os, sys, time
mode, name, path = sys.argv[1:4]

def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key + ":"))

if mode == "read":
    from safetensors.numpy import load_file
    def step():
        return load_file(path)
elif mode == "read_torch":
    import torch
    def step():
        return torch.load(path, map_location="cpu", weights_only=True)
else:
    if path.endswith(".bin"):
        import torch  # importing torch is not converting: keep it out of the measured step
    import jax, jax.numpy as jnp
    import resnets_jax as rj
    from resnets_jax import weights
    jnp.zeros(1).block_until_ready()
    model = rj.build_model(name)
    if mode in ("convert", "convert_first"):
        def step():
            v = weights.convert_timm_state_dict(model, weights.load_state_dict(path))
            return jax.block_until_ready(v)
    else:  # trace
        def step():
            return weights.expected_variables(model)
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset VmHWM (the peak RSS) to the current RSS
t = time.perf_counter()
out = step()
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "before": before, "peak": status("VmHWM")}))
"""


def child(mode, name, path, cache):
    """One measurement in a fresh process; ``cache``: the traced-shapes cache folder it sees."""
    env = dict(os.environ, RESNETS_JAX_CACHE_DIR=cache)
    res = subprocess.run([sys.executable, "-c", CHILD, mode, name, path], capture_output=True, text=True, env=env)
    if res.returncode:
        raise SystemExit(f"{mode} failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def make_checkpoint(name, directory, torch_too):
    import timm
    import torch
    from safetensors.torch import save_file
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{name}.safetensors")
    if not os.path.exists(path) or torch_too and not os.path.exists(path[:-12] + ".bin"):
        model = timm.create_model(name)
        save_file(model.state_dict(), path)
        if torch_too:
            torch.save(model.state_dict(), path[:-12] + ".bin")
    return path


def summarize(runs):
    secs = [r["seconds"] for r in runs]
    return {"median": statistics.median(secs), "min": min(secs),
            "peak": max(r["peak"] for r in runs), "added": max(r["peak"] - r["before"] for r in runs),
            "before": statistics.median(r["before"] for r in runs)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("name", help="a registered architecture (e.g. resnest101e, resnetv2_101)")
    p.add_argument("--checkpoint", help="a timm .safetensors file (default: timm writes one into --dir)")
    p.add_argument("--dir", default="/tmp/resnets_jax_bench")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--torch", action="store_true", help="also measure the .bin (pytorch pickle) path")
    args = p.parse_args(argv)

    path = args.checkpoint or make_checkpoint(args.name, args.dir, args.torch)
    size = os.path.getsize(path)
    with open(path, "rb") as f:  # into the page cache: both sides are measured warm
        while f.read(1 << 24):
            pass
    kinds = [("read", path), ("convert", path), ("convert_first", path), ("trace", path)]
    if args.torch:
        kinds += [("read_torch", path[:-12] + ".bin"), ("convert_torch", path[:-12] + ".bin")]
    runs = {k: [] for k, _ in kinds}
    with tempfile.TemporaryDirectory() as warm, tempfile.TemporaryDirectory() as scratch:
        child("trace", args.name, path, warm)  # fills the warm cache
        for i in range(args.repeats):
            for kind, file in kinds:
                cache = os.path.join(scratch, f"{kind}{i}") if kind in ("convert_first", "trace") else warm
                runs[kind].append(child(kind.replace("convert_torch", "convert"), args.name, file, cache))
    s = {k: summarize(v) for k, v in runs.items()}

    mib = 2 ** 20
    print(f"{args.name}: {path} ({size / mib:.1f} MiB), {args.repeats} runs each, file in the page cache")
    print(f"{'step':<26}{'seconds (min)':>16}{'peak RSS':>12}{'peak - before':>15}{'/ file':>8}")
    labels = {"read": "read (safetensors.numpy)", "convert": "convert (to JAX arrays)",
              "convert_first": "convert, first time", "trace": "  of which: model trace",
              "read_torch": "read .bin (torch.load)",
              "convert_torch": "convert .bin"}
    for kind, _ in kinds:
        r = s[kind]
        print(f"{labels[kind]:<26}{r['median']:>8.3f} ({r['min']:.3f}){r['peak'] / mib:>9.0f} MiB"
              f"{r['added'] / mib:>11.0f} MiB{r['added'] / size:>8.2f}")
    t_ratio = s["convert"]["median"] / s["read"]["median"]
    f_ratio = s["convert_first"]["median"] / s["read"]["median"]
    m_ratio = max(s["convert"]["added"], s["convert_first"]["added"]) / size
    print(f"\nconversion time / read time: {t_ratio:.2f} (budget {TIME_BUDGET}) "
          f"-> {'OK' if t_ratio <= TIME_BUDGET else 'OVER'}; the architecture's first conversion on "
          f"this machine, which traces the model: {f_ratio:.2f}")
    print(f"conversion peak memory / file size: {m_ratio:.2f} (budget {MEMORY_BUDGET}) "
          f"-> {'OK' if m_ratio <= MEMORY_BUDGET else 'OVER'}"
          f"   [whole process, imports included: {s['convert']['peak'] / size:.2f}]")
    return 0 if t_ratio <= TIME_BUDGET and m_ratio <= MEMORY_BUDGET else 1


if __name__ == "__main__":
    sys.exit(main())
