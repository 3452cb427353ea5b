#!/usr/bin/env python
"""The first result: a random init, and a pretrained file with a new head, against timm's.

    python benchmarks/init_speed.py [--models resnet50 resnetv2_50 resnest101e res2net101_26w_4s]
                                    [--repeats 3] [--jit-init] [--output benchmarks/results/init-CPU-KIND]

Every measurement runs in a fresh process with every cache off (``RESNETS_JAX_CACHE_DIR=''``: no
traced shapes, no compiled programs), as a new user's first call is; the figure is the median of
``--repeats`` processes (minimum in brackets), imports not counted (reported apart):

* ours: ``rj.create_model(name)`` (random init, ``block_until_ready``);
* timm: ``timm.create_model(name)``;
* ``--jit-init``: ``jax.jit(model.init)`` on a built model, the way random init went before
  (``convert.random_init``'s docstring), for comparison; minutes per model on 2 cores;
* new head: ``create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=F),
  num_classes=10)`` from a timm checkpoint F (timm's random init of the architecture, written once
  to a temporary folder), against the same with ``num_classes=1000`` (every key loads), ours and
  timm's.

Writes ``OUTPUT.md`` and ``OUTPUT.csv``.
"""
import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import RESULTS_DIR, cpu_info, load_note, machine_header  # noqa: E402

DEFAULT_MODELS = ["resnet50", "resnetv2_50", "resnest101e", "res2net101_26w_4s"]
CHILD_TIMEOUT_S = 1800  # one process; --jit-init of resnest101e takes minutes on 2 loaded cores
NEW_HEAD_CLASSES = 10

CHILD = r"""
import json, sys, time
impl, name, path, classes = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
t = time.perf_counter()
if impl == "timm":
    import timm, torch
else:
    import jax, jax.numpy as jnp, resnets_jax as rj
imported = time.perf_counter() - t
kwargs = dict(pretrained=True, pretrained_cfg_overlay=dict(file=path), num_classes=classes) if path else {}
if impl == "jit":
    model = rj.build_model(name)
    t = time.perf_counter()
    x = jnp.zeros((1, 64, 64, model.in_chans))
    jax.block_until_ready(jax.jit(model.init)({"params": jax.random.PRNGKey(0)}, x))
elif impl == "timm":
    t = time.perf_counter()
    timm.create_model(name, **kwargs)
else:
    t = time.perf_counter()
    jax.block_until_ready(rj.create_model(name, **kwargs)[1])
print(json.dumps({"import_s": imported, "s": time.perf_counter() - t}))
"""


def run_child(impl, name, path="", classes=0):
    env = dict(os.environ, RESNETS_JAX_CACHE_DIR="")  # every cache off: a first call
    res = subprocess.run([sys.executable, "-c", CHILD, impl, name, path, str(classes)], env=env,
                         capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    if res.returncode:
        raise RuntimeError(f"{impl} {name}: exit {res.returncode}\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def measure(impl, name, repeats, path="", classes=0):
    runs = [run_child(impl, name, path, classes) for _ in range(repeats)]
    times = [r["s"] for r in runs]
    return statistics.median(times), min(times), statistics.median(r["import_s"] for r in runs)


def write_checkpoint(name, folder):
    """timm's random init of ``name`` as a safetensors file: the 'pretrained' weights."""
    import timm
    from safetensors.torch import save_file
    path = os.path.join(folder, f"{name}.safetensors")
    save_file({k: v.contiguous() for k, v in timm.create_model(name).state_dict().items()}, path)
    return path


COLUMNS = ("model", "ours_s", "ours_min_s", "timm_s", "timm_min_s", "jit_init_s",
           "head_ours_s", "all_keys_ours_s", "head_timm_s", "ours_import_s", "timm_import_s")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per figure (median)")
    p.add_argument("--jit-init", action="store_true", help="also jax.jit(model.init), the way before (slow)")
    p.add_argument("--no-head", action="store_true", help="skip the pretrained-file rows")
    p.add_argument("--output", default=os.path.join(RESULTS_DIR, f"init-{cpu_info()[2]}"))
    args = p.parse_args(argv)
    loads, rows = [load_note()], []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            row = dict(model=name)
            row["ours_s"], row["ours_min_s"], row["ours_import_s"] = measure("ours", name, args.repeats)
            row["timm_s"], row["timm_min_s"], row["timm_import_s"] = measure("timm", name, args.repeats)
            if args.jit_init:
                row["jit_init_s"] = measure("jit", name, 1)[0]
            if not args.no_head:
                path = write_checkpoint(name, folder)
                row["head_ours_s"] = measure("ours", name, args.repeats, path, NEW_HEAD_CLASSES)[0]
                row["all_keys_ours_s"] = measure("ours", name, args.repeats, path, 1000)[0]
                row["head_timm_s"] = measure("timm", name, args.repeats, path, NEW_HEAD_CLASSES)[0]
            print(json.dumps(row), flush=True)
            rows.append(row)
    loads.append(load_note())
    with open(args.output + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        w.writerows(rows)
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    lines = [f"# First result: random init and a new head, fresh process, caches off: {machine_header()}", "",
             f"`python benchmarks/init_speed.py {' '.join(argv if argv is not None else sys.argv[1:])}`", "",
             f"Machine load: {loads[0]} at the start, {loads[1]} at the end. Seconds, median of {args.repeats} "
             "fresh processes (minimum in brackets), imports not counted (median import: ours "
             "`import resnets_jax`, timm `import timm, torch`). new head: `create_model(name, pretrained=True, "
             f"pretrained_cfg_overlay=dict(file=F), num_classes={NEW_HEAD_CLASSES})`; all keys: the same with "
             "num_classes=1000; F: timm's random init of the architecture as safetensors.", "",
             "| model | ours random init | timm random init | jax.jit(model.init) | ours new head | ours all keys "
             "| timm new head | import ours / timm |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['model']} | {fmt(r['ours_s'])} ({fmt(r['ours_min_s'])}) | {fmt(r['timm_s'])} "
                     f"({fmt(r['timm_min_s'])}) | {fmt(r.get('jit_init_s'))} | {fmt(r.get('head_ours_s'))} | "
                     f"{fmt(r.get('all_keys_ours_s'))} | {fmt(r.get('head_timm_s'))} | "
                     f"{fmt(r['ours_import_s'])} / {fmt(r['timm_import_s'])} |")
    with open(args.output + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {args.output}.md, {args.output}.csv")


if __name__ == "__main__":
    main()
