"""GPU check: parity on the device by the suite's rule, then throughput against timm at matched
precision. Run through ``benchmarks/gpu_check.sh`` (which bounds it to 8 minutes on one H200);
``--cpu-smoke`` runs the same code paths on CPU at tiny sizes (the test suite does).

    benchmarks/gpu_check.sh [--budget-s 440] [--repeats 10] [--no-compile] [--output PREFIX]
    python benchmarks/gpu_check.py --cpu-smoke --output /tmp/gpu_smoke

1. Parity (``gpu_parity.py``), per model: the seed models and one model of every block kind
   (``BLOCK_KINDS``). Weights perturbed as the CPU parity tests do; a float64 reference by timm
   on the CPU; timm's fp32 (TF32 off) and ours (``highest``) on the device against it; ours within
   ``max(2 x timm's distance, floor)``. Eval-mode logits and features, then one training step
   (train-mode logits, running statistics, gradients) at a reduced depth.
2. Throughput (``gpu_speed.py``) of the seed models: timm eager, ``torch.compile`` and ours, fp32
   with TF32 allowed on both sides, strict fp32 on both sides, and bf16; batch ``--batch`` and
   batch 1 (latency); first call's time, peak device memory, share of the bf16 peak.

Steps run in that order, most telling first, within ``--budget-s``: a step starts only while the
budget left holds the longest step of its kind so far; the rest are recorded as skipped. The
record is rewritten after every step. Writes ``PREFIX.json`` and ``PREFIX.md`` (default
``benchmarks/results/gpu-<device>``). Exits 1 when a parity row fails or a step did not run.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import RESULTS_DIR, SEED_MODELS, native_size  # noqa: E402
from gpu_parity import AS_TIMM_FACTOR, FLOOR, MAX_PARITY_SIZE, TRAIN_LAYERS, forward_parity, train_parity  # noqa: E402
from gpu_speed import PEAK_BF16_FLOPS, PRECISIONS, Prepared, speed_row  # noqa: E402

# One model of every block kind timm's families have, the seed models first (their kinds).
BLOCK_KINDS = {"resnetv2_50": "pre-activation v2 bottleneck", "res2net101_26w_4s": "Res2Net",
               "resnest101e": "ResNeSt split attention", "resnet18": "basic", "resnet50": "bottleneck",
               "skresnet18": "selective kernel", "resnetv2_50x1_bit": "BiT (StdConv, GroupNorm)"}
FULL_DEPTH_TRAIN = ("resnetv2_50x1_bit",)  # timm's BiT entry points fix their depth (no `layers` override)
SMOKE_MODELS = ("test_resnet",)  # the smallest: the smoke run checks the code paths; the suite the models
SPEED_ORDER = ("bf16", "tf32", "fp32")  # rows in this order, batch --batch first, batch 1 after


class Budget:
    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self):
        return self.end - time.monotonic()


def _judged(row, key):
    j = row.get(key)
    return "-" if not j else (f"{j['ours']:.1e} / {j['timm']:.1e} / {j['bound']:.1e}"
                              + ("" if j["ok"] else " **FAIL**"))


def _f(v, fmt="{:.1f}"):
    return "-" if v is None else fmt.format(v)


def write(results, prefix):
    from resnets_jax.io.files import write_text_atomic  # a killed run leaves the last whole record
    h = results["header"]
    write_text_atomic(prefix + ".json", json.dumps(results, indent=1))
    lines = [f"# GPU check: {h['device']}", "", f"{h['versions']}; `{h['command']}`; "
             f"{h['wall_s']:.0f} s of a {h['budget_s']:.0f} s budget", "",
             "## Parity against timm's float64 on the CPU", "",
             f"Each cell: ours / timm's fp32 / bound, max|Δ| / max|ref|; bound = max({AS_TIMM_FACTOR:g} x timm's, "
             f"{FLOOR:.1e}) (`benchmarks/gpu_parity.py`). Ours at `highest` precision, timm with TF32 off; "
             "weights perturbed as `tests/timm_ref.perturb_`.", "",
             "| model | block kind | input | max \\|logit\\| | logits | features |", "| --- | --- | --- | --- | --- | --- |"]
    for r in results["parity"]:
        lines.append(f"| {r['model']} | {BLOCK_KINDS.get(r['model'], '-')} | {r.get('input', '-')} | "
                     f"{_f(r.get('logit_scale'))} | {_judged(r, 'logits')} | "
                     f"{_judged(r, 'features') if 'error' not in r else r['error']} |")
    lines += ["", f"## One training step (depth {tuple(TRAIN_LAYERS)}; BiT at full depth)", "",
              "Train-mode logits (max|Δ|/max|ref|), running statistics (worst tensor), gradients "
              "(||Δ||/||g|| over every parameter; ReLU decisions not held, docs/exactness.md).", "",
              "| model | logits | running stats | gradients |", "| --- | --- | --- | --- |"]
    for r in results["train"]:
        lines.append(f"| {r['model']} | {_judged(r, 'logits')} | {_judged(r, 'running_stats')} | "
                     f"{_judged(r, 'gradients') if 'error' not in r else r['error']} |")
    lines += ["", "## Throughput at matched precision", "",
              "tf32: TF32 allowed on both sides (JAX's default, torch `allow_tf32=True`); fp32: strict on both "
              "(`highest`, `allow_tf32=False`); bf16: ours `dtype=bfloat16`, timm `torch.autocast`. ms per call "
              "(min of the repeats); first call = compile + run; peak: device MiB; share: of the dense bf16 peak "
              f"({h['peak_bf16_tflops'] or '-'} TFLOPS; `gpu_speed.PEAK_BF16_FLOPS` gives its source).", "",
              "| model | prec | batch | timm eager ms | torch.compile ms | ours ms | ours / compiled | "
              "first call s (compiled / ours) | peak MiB (compiled / ours) | share (compiled / ours) | GFLOP/img |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results["speed"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['precision']} | {r['batch']} | {r['error']} | | | | | | | |")
            continue
        g = r.get
        lines.append(
            f"| {r['model']} | {r['precision']} | {r['batch']} | {_f(g('timm_ms'), '{:.2f}')} | "
            f"{_f(g('compiled_ms'), '{:.2f}')} | {_f(g('ours_ms'), '{:.2f}')} | {_f(g('ours_vs_compiled'), '{:.2f}')} | "
            f"{_f(g('compiled_first_s'))} / {_f(g('ours_first_s'))} | {_f(g('compiled_peak_mib'), '{:.0f}')} / "
            f"{_f(g('ours_peak_mib'), '{:.0f}')} | {_f(g('compiled_bf16_peak_share'), '{:.1%}')} / "
            f"{_f(g('ours_bf16_peak_share'), '{:.1%}')} | {_f(g('gflops_per_image'), '{:.2f}')} |")
    write_text_atomic(prefix + ".md", "\n".join(lines) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-smoke", action="store_true", help="on CPU: the same code paths at tiny sizes")
    p.add_argument("--models", nargs="+", default=None, help="parity models (default: BLOCK_KINDS)")
    p.add_argument("--speed-models", nargs="+", default=None, help="throughput models (default: the seed models)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--budget-s", type=float, default=440, help="time for all steps; the rest is skipped")
    p.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    p.add_argument("--output", default=None)
    args = p.parse_args(argv)
    if args.cpu_smoke:
        os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    import torch
    device = "cpu" if args.cpu_smoke else "cuda"
    if args.cpu_smoke:
        torch.set_num_threads(1)  # tiny ops: torch's thread pool only contends with XLA's on a small machine
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: torch sees no CUDA device (use --cpu-smoke on CPU)")
    if device == "cuda" and jax.default_backend() != "gpu":
        sys.exit(f"gpu_check: JAX's backend is {jax.default_backend()!r}, not 'gpu' (install jax[cuda13] or jax[cuda12])")
    models = args.models or (SMOKE_MODELS if args.cpu_smoke else tuple(BLOCK_KINDS))
    speed_models = args.speed_models or (models[:1] if args.cpu_smoke else SEED_MODELS)
    size = (lambda m: 32) if args.cpu_smoke else (lambda m: min(native_size(m), MAX_PARITY_SIZE))
    batches = (2,) if args.cpu_smoke else (args.batch, 1)  # smoke: batch 1 runs the same code
    repeats = 1 if args.cpu_smoke else args.repeats
    train_kwargs = dict(size=32, batch=4) if args.cpu_smoke else {}
    dev_name = str(jax.devices()[0].device_kind)
    peak = PEAK_BF16_FLOPS.get(dev_name)
    results = {"header": {
        "device": dev_name + (" (--cpu-smoke)" if args.cpu_smoke else ""),
        "versions": f"jax {jax.__version__}, torch {torch.__version__}"
                    + (f" (CUDA {torch.version.cuda})" if device == "cuda" else ""),
        "command": " ".join(["benchmarks/gpu_check.py"] + (sys.argv[1:] if argv is None else list(argv))),
        "budget_s": args.budget_s, "peak_bf16_tflops": peak / 1e12 if peak else None},
        "parity": [], "train": [], "speed": []}
    prefix = args.output or os.path.join(RESULTS_DIR, "gpu-" + "-".join(dev_name.lower().split()))
    budget, start = Budget(args.budget_s), time.monotonic()
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    print(results["header"], flush=True)
    longest = {}  # kind: the longest step of that kind so far

    def step(kind, fn, **info):
        t = time.monotonic()
        # a step is started only when the budget holds the longest of its kind so far: gpu_check.sh's
        # hard limit (480 s) then never cuts one short (the record is also rewritten after each step)
        if budget.left() <= longest.get(kind, 0.0):
            r = {**info, "error": "skipped: time budget spent"}
        else:
            try:
                r = fn()
            except Exception as e:  # one failing step must not lose the others' figures
                r = {**info, "error": f"{type(e).__name__}: {str(e)[:200]}"}
            r["step_s"] = time.monotonic() - t  # what each step costs, for sizing the budget
            longest[kind] = max(longest.get(kind, 0.0), r["step_s"])
        results[kind].append(r)
        print(kind, json.dumps(r), flush=True)
        results["header"]["wall_s"] = time.monotonic() - start
        write(results, prefix)

    for m in models:
        step("parity", lambda: forward_parity(m, size(m), device), model=m)
    for m in models:
        layers = None if m in FULL_DEPTH_TRAIN or args.cpu_smoke else TRAIN_LAYERS  # smoke: test_resnet's own 1-1-1-1
        step("train", lambda: train_parity(m, device, layers=layers, **train_kwargs), model=m)
    prepared = {}
    for batch in batches:
        for m in speed_models:
            for precision in SPEED_ORDER:
                def row():
                    if m not in prepared:
                        prepared[m] = Prepared(m, size(m), device, compile_=not (args.cpu_smoke or args.no_compile))
                    return speed_row(prepared[m], precision, batch, repeats if batch > 1 else 5 * repeats, peak)
                step("speed", row, model=m, precision=precision, batch=batch)
    print(f"wrote {prefix}.md, .json", flush=True)
    failed = [r for k in ("parity", "train") for r in results[k] if not r.get("ok")]
    sys.exit(1 if failed or any("error" in r for r in results["speed"]) else 0)


if __name__ == "__main__":
    assert set(SPEED_ORDER) == set(PRECISIONS)
    main()
