"""Inference throughput of our models against timm's, side by side on one machine.

    python benchmarks/bench.py [--models resnetv2_50 ...] [--batch 1 8] [--dtype fp32 bf16]
                               [--repeats 3] [--torch-compile 1 8] [--torch-compile-dtype fp32]
                               [--torch-compile-timeout 300] [--size 224]
                               [--output benchmarks/results/NAME]

Per seed model at its native input size (the pretrained cfg's), batch size and dtype, each in
fresh subprocesses:

- ``speed``: our model (``rj.jit(model.apply)``: jitted, with ``rj.compiler_options()``) and
  timm's (eager, ``torch.inference_mode``) on the same input and weights, timed interleaved
  (ours, timm, ours, timm, ...), median of ``--repeats``; reports images/s, the ratio and the max
  |logit difference| / max |logit|. bf16: ``create_model(dtype=jnp.bfloat16)`` against
  ``torch.autocast('cpu', dtype=torch.bfloat16)``.
- ``first``: the first call (compile + run) and the peak RSS (``getrusage`` high-water mark) of a
  fresh process that imports one framework, builds one model and runs it; for JAX the peak
  includes XLA's compilation, and XLA's memory analysis gives the executable's temp buffers.
- ``torch.compile`` (batch sizes in ``--torch-compile``, dtypes in ``--torch-compile-dtype``): timm's model under ``torch.compile``,
  time-boxed; its speed is timed interleaved with timm eager in that process, and our ratio to
  it is (ours / eager) / (compiled / eager). A failure or timeout is reported as such.

Every row records the CPU (``/proc/cpuinfo`` model name) and its widest vector instruction set
(``avx512f`` / ``avx2`` flags). Writes ``NAME.csv``, ``NAME.md`` (a header naming the machine,
then the table) and ``NAME.png``; NAME defaults to the CPU kind (``cpu_kind()``, e.g.
``benchmarks/results/amd-epyc-avx512``), so that each kind of CPU keeps its own results.
"""
import argparse
import csv
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

SEED_MODELS = ("resnetv2_50", "res2net101_26w_4s", "resnest101e")
# timm's most used weights (resnet50.a1_in1k, then resnet18), measured beside the seed models
DEFAULT_MODELS = SEED_MODELS + ("resnet50", "resnet18")
DTYPES = ("fp32", "bf16")
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# Each measurement runs in its own process; one that has not finished by then is reported as a
# timeout rather than holding the whole run (resnest101e at batch 32 takes ~1 min on 2 cores).
WORKER_TIMEOUT_S = 1200
COLUMNS = ("cpu", "isa", "model", "input", "dtype", "batch", "jax_img_s", "timm_img_s", "jax_vs_timm",
           "compiled_img_s", "jax_vs_compiled", "jax_first_call_s", "timm_first_call_s",
           "compiled_first_call_s", "jax_peak_rss_mib", "timm_peak_rss_mib", "xla_temp_mib",
           "max_rel_diff")
MIB = 2 ** 20


# ---------------------------------------------------------------------------------- workers
# Each runs in a fresh process and prints one JSON line.

def _input(batch, size):
    return np.random.default_rng(0).standard_normal((batch, size, size, 3)).astype(np.float32)


def _peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _torch_setup(threads):
    import torch
    torch.set_num_threads(threads)
    return torch


def _timm_call(torch, model, dtype):
    """``x -> logits`` under inference mode (and bf16 autocast), NHWC numpy in, numpy out."""
    import contextlib

    def call(x_nhwc):
        xt = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))
        amp = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()
        with torch.inference_mode(), amp:
            return model(xt).float().numpy()
    return call


def _jax_model(name, dtype, timm_model=None):
    import jax.numpy as jnp
    import resnets_jax as rj
    model, variables = rj.create_model(name, dtype=jnp.bfloat16 if dtype == "bf16" else jnp.float32)
    if timm_model is not None:  # the same weights as timm's
        variables = rj.convert_timm_state_dict(
            model, {k: v.float().numpy() for k, v in timm_model.state_dict().items()})
    return model, variables


def _jax_compile(model, variables, x):
    import resnets_jax as rj
    return rj.jit(model.apply).lower(variables, x).compile()


def _timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def _interleaved(fns, repeats):
    """Median seconds per call of each ``fn()``, calling them in turn ``repeats`` times."""
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(_timed(fn)[1])
    return {k: float(np.median(v)) for k, v in times.items()}


def work_first(cfg):
    x = _input(cfg["batch"], cfg["size"])
    out = {}
    if cfg["impl"] == "jax":
        import jax
        from resnets_jax.xla import enable_compilation_cache
        enable_compilation_cache(cfg["cache_dir"])  # the speed worker then loads it from there
        model, variables = _jax_model(cfg["name"], cfg["dtype"])
        xj = jax.device_put(x)
        t = time.perf_counter()
        compiled = _jax_compile(model, variables, xj)
        compiled(variables, xj).block_until_ready()
        out["first_call_s"] = time.perf_counter() - t
        mem = compiled.memory_analysis()
        out["xla_temp_mib"] = mem.temp_size_in_bytes / MIB if mem is not None else None
    else:
        import timm
        torch = _torch_setup(cfg["threads"])
        model = timm.create_model(cfg["name"]).eval()
        call = _timm_call(torch, model, cfg["dtype"])
        if cfg["impl"] == "timm-compile":
            compiled = _timm_call(torch, torch.compile(model), cfg["dtype"])
            _, out["first_call_s"] = _timed(compiled, x)
            call(x)
            t = _interleaved({"compiled": lambda: compiled(x), "eager": lambda: call(x)}, cfg["repeats"])
            out["compiled_vs_eager"] = t["eager"] / t["compiled"]
            out["img_s"] = cfg["batch"] / t["compiled"]
        else:
            _, out["first_call_s"] = _timed(call, x)
    out["peak_rss_mib"] = _peak_rss_mib()
    return out


def work_speed(cfg):
    import jax
    import timm
    torch = _torch_setup(cfg["threads"])
    from resnets_jax.xla import enable_compilation_cache
    enable_compilation_cache(cfg["cache_dir"])
    torch.manual_seed(0)
    tmodel = timm.create_model(cfg["name"]).eval()
    model, variables = _jax_model(cfg["name"], cfg["dtype"], tmodel)
    x = _input(cfg["batch"], cfg["size"])
    xj = jax.device_put(x)
    compiled = _jax_compile(model, variables, xj)
    call = _timm_call(torch, tmodel, cfg["dtype"])
    ours = np.asarray(compiled(variables, xj), np.float32)
    ref = call(x)
    t = _interleaved({"jax": lambda: compiled(variables, xj).block_until_ready(), "timm": lambda: call(x)},
                     cfg["repeats"])
    return {"jax_img_s": cfg["batch"] / t["jax"], "timm_img_s": cfg["batch"] / t["timm"],
            "jax_vs_timm": t["timm"] / t["jax"],
            "max_rel_diff": float(np.abs(ours - ref).max() / np.abs(ref).max())}


WORKERS = {"first": work_first, "speed": work_speed}


def run_worker(kind, cfg, timeout):
    """One worker in a fresh process: its JSON result, or ``{'error': ...}``."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, json.dumps(cfg)]
    try:
        # one inductor compile thread: a timeout then leaves no compile workers behind
        env = dict(os.environ, TORCHINDUCTOR_COMPILE_THREADS="1")
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    lines = res.stdout.strip().splitlines()
    if res.returncode or not lines:
        tail = (res.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {res.returncode}: {tail[:200]}"}
    return json.loads(lines[-1])


# ------------------------------------------------------------------------------------- driver

def native_size(name):
    import resnets_jax as rj
    return rj.get_pretrained_cfg(name)["input_size"][-1]


def cpu_info():
    """``(model name, isa, kind)`` of this machine's CPU from ``/proc/cpuinfo``: isa is the widest
    of ``avx512`` / ``avx2`` / ``other`` in its flags (``platform.machine()`` off x86); kind, a file
    name for its results, joins the model name's first two words and the isa
    (``'amd-epyc-avx512'``, ``'intel-xeon-avx2'``)."""
    name, flags = None, None
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name is None:
                    name = value.strip()
                elif key.strip() == "flags" and flags is None:
                    flags = set(value.split())
    name, flags = name or platform.processor() or platform.machine(), flags or set()
    isa = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else platform.machine()
    words = [w for w in "".join(c if c.isalnum() else " " for c in name.lower()).split()
             if w not in ("r", "tm", "processor", "cpu")]
    return name, isa, "-".join(words[:2] + [isa])


def measure(name, dtype, batch, args, cache_dir, log):
    size = args.size or native_size(name)
    cfg = dict(name=name, size=size, dtype=dtype, batch=batch, threads=args.threads,
               repeats=args.repeats, cache_dir=cache_dir)
    cpu, isa, _ = cpu_info()
    row = dict(cpu=cpu, isa=isa, model=name, input=size, dtype=dtype, batch=batch)
    first_jax = run_worker("first", dict(cfg, impl="jax"), WORKER_TIMEOUT_S)
    first_timm = run_worker("first", dict(cfg, impl="timm"), WORKER_TIMEOUT_S)
    speed = run_worker("speed", cfg, WORKER_TIMEOUT_S)
    row.update(jax_first_call_s=first_jax.get("first_call_s"), jax_peak_rss_mib=first_jax.get("peak_rss_mib"),
               xla_temp_mib=first_jax.get("xla_temp_mib"), timm_first_call_s=first_timm.get("first_call_s"),
               timm_peak_rss_mib=first_timm.get("peak_rss_mib"))
    row.update({k: speed.get(k) for k in ("jax_img_s", "timm_img_s", "jax_vs_timm", "max_rel_diff")})
    errors = {k: r["error"] for k, r in (("jax first call", first_jax), ("timm first call", first_timm),
                                         ("speed", speed)) if "error" in r}
    if batch in args.torch_compile and dtype in args.torch_compile_dtype:
        comp = run_worker("first", dict(cfg, impl="timm-compile"), args.torch_compile_timeout)
        if "error" in comp:
            row["jax_vs_compiled"] = f"torch.compile failed: {comp['error']}"
        else:
            row.update(compiled_img_s=comp["img_s"], compiled_first_call_s=comp["first_call_s"])
            if row.get("jax_vs_timm") is not None:
                row["jax_vs_compiled"] = row["jax_vs_timm"] / comp["compiled_vs_eager"]
    for what, err in errors.items():
        log(f"  {name} {dtype} batch {batch}: {what} failed: {err}")
    return row


def machine_header():
    import jax
    import timm
    import torch
    cpu, isa, _ = cpu_info()
    return (f"{cpu} ({isa}), {os.cpu_count()} cores ({platform.machine()}, {platform.system()}); "
            f"jax {jax.__version__}, torch {torch.__version__}, timm {timm.__version__}; "
            f"{datetime.date.today().isoformat()}")


def load_note():
    """Other processes compete for the cores: the 1-min load average, said beside the figures."""
    return "load average %.1f / %.1f / %.1f (1 / 5 / 15 min)" % os.getloadavg()


def _fmt(v, digits=1):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return f"{v:.{digits}f}"


def write_markdown(rows, path, header, args, loads):
    lines = [
        f"# resnets_jax vs timm: inference on {header}", "",
        f"Machine load: {loads[0]} at the start, {loads[1]} at the end.", "",
        f"`{' '.join(['python', 'benchmarks/bench.py'] + sys.argv[1:])}`", "",
        f"images/s: median of {args.repeats} calls, ours and timm's interleaved in one process, same input "
        "and weights. Ours: `rj.jit(model.apply)` (jitted, `rj.compiler_options()`); timm: eager, "
        "`torch.inference_mode()` (bf16: `torch.autocast('cpu', dtype=torch.bfloat16)`), "
        f"{args.threads} torch threads. x timm / x compiled: our speed over theirs (> 1: ours faster). "
        "First call: compile + run in a fresh process. Peak RSS: `getrusage` high-water mark of a fresh "
        "process running only that model (JAX's includes XLA compilation); XLA temp: the compiled "
        "executable's temp buffers (`memory_analysis()`). Diff: max |logit difference| / max |logit|.", "",
        "| model | input | dtype | batch | ours img/s | timm img/s | x timm | compiled img/s | x compiled "
        "| ours 1st call s | timm 1st call s | compiled 1st call s | ours peak RSS MiB | timm peak RSS MiB "
        "| XLA temp MiB | diff |",
        "|" + " --- |" * 16,
    ]
    for r in rows:
        cells = [r["model"], r["input"], r["dtype"], r["batch"], _fmt(r.get("jax_img_s")),
                 _fmt(r.get("timm_img_s")), _fmt(r.get("jax_vs_timm"), 2), _fmt(r.get("compiled_img_s")),
                 _fmt(r.get("jax_vs_compiled"), 2), _fmt(r.get("jax_first_call_s")),
                 _fmt(r.get("timm_first_call_s")), _fmt(r.get("compiled_first_call_s")),
                 _fmt(r.get("jax_peak_rss_mib"), 0), _fmt(r.get("timm_peak_rss_mib"), 0),
                 _fmt(r.get("xla_temp_mib"), 0),
                 "-" if r.get("max_rel_diff") is None else f"{r['max_rel_diff']:.1e}"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_csv(rows, path):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k) for k in COLUMNS})


def plot(rows, path, header):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, name in zip(axes[0], models):
        sub = [r for r in rows if r["model"] == name]
        labels = [f"{r['dtype']}\nb{r['batch']}" for r in sub]
        pos = np.arange(len(sub))
        for i, (key, label) in enumerate((("jax_img_s", "resnets_jax (jit)"), ("timm_img_s", "timm eager"),
                                          ("compiled_img_s", "timm torch.compile"))):
            vals = [r.get(key) or 0.0 for r in sub]
            if any(vals):
                ax.bar(pos + (i - 1) * 0.27, vals, 0.27, label=label)
        ax.set_xticks(pos, labels)
        ax.set_title(f"{name} @ {sub[0]['input']}")
        ax.set_ylabel("images / s")
    axes[0][0].legend()
    fig.suptitle(header, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        print(json.dumps(WORKERS[sys.argv[2]](json.loads(sys.argv[3]))))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    p.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    p.add_argument("--dtype", nargs="+", choices=DTYPES, default=list(DTYPES))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    p.add_argument("--torch-compile", nargs="*", type=int, default=[1, 8], metavar="BATCH",
                   help="batch sizes at which to try timm under torch.compile (default: 1 8; none: skip)")
    p.add_argument("--torch-compile-dtype", nargs="+", choices=DTYPES, default=["fp32"],
                   help="dtypes at which to try torch.compile (default: fp32)")
    p.add_argument("--torch-compile-timeout", type=float, default=300, help="seconds per torch.compile try")
    p.add_argument("--size", type=int, default=None, help="input size (default: each model's native one)")
    p.add_argument("--output", default=None,
                   help="path prefix of the .csv/.md/.png written (default: benchmarks/results/CPU-KIND)")
    args = p.parse_args()
    args.output = args.output or os.path.join(RESULTS_DIR, cpu_info()[2])
    header = machine_header()
    loads = [load_note()]
    print(header, loads[0], flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="resnets_jax_bench_xla_") as cache_dir:
        for name in args.models:
            for dtype in args.dtype:
                for batch in args.batch:
                    t = time.perf_counter()
                    rows.append(measure(name, dtype, batch, args, cache_dir, log=print))
                    r = rows[-1]
                    print(f"{name} {dtype} batch {batch}: ours {_fmt(r.get('jax_img_s'))} img/s, "
                          f"timm {_fmt(r.get('timm_img_s'))} img/s, x{_fmt(r.get('jax_vs_timm'), 2)} "
                          f"vs timm, x{_fmt(r.get('jax_vs_compiled'), 2)} vs torch.compile; first call "
                          f"{_fmt(r.get('jax_first_call_s'))} s ({time.perf_counter() - t:.0f} s)", flush=True)
    loads.append(load_note())
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    write_csv(rows, args.output + ".csv")
    write_markdown(rows, args.output + ".md", header, args, loads)
    plot(rows, args.output + ".png", header)
    print(f"wrote {args.output}.csv, .md, .png")


if __name__ == "__main__":
    main()
