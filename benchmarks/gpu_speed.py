"""The GPU check's throughput rows (``benchmarks/gpu_check.py``): timm eager, timm under
``torch.compile`` and ours (``rj.jit(model.apply)``; on GPU that is plain ``jax.jit``: there are no
GPU compiler options) on the same weights and input, at matched precision:

- ``tf32``: fp32 with TF32 allowed on both sides: JAX's default precision (TF32 convolutions and
  matmuls on GPU), torch with ``allow_tf32 = True`` (cuBLAS and cuDNN);
- ``fp32``: strict fp32 on both sides: JAX at ``jax_default_matmul_precision='highest'``, torch
  with ``allow_tf32 = False``;
- ``bf16``: ours built with ``dtype=bfloat16`` (fp32 parameters), timm under
  ``torch.autocast(bfloat16)``.

Per row: time per call (the minimum of ``repeats`` calls after one warm-up; images/s from it), the
first call's time (for torch.compile and ours: compilation + one run), peak device memory
(torch: ``max_memory_allocated`` from a reset before the first call, weights included; ours:
XLA's memory analysis of the executable, arguments + outputs + temporaries), and the share of
the device's dense bf16 peak reached (FLOPs per image from XLA's cost analysis of our program).
"""
import contextlib
import time

import numpy as np

from gpu_parity import torch_tf32

# name: (torch TF32 allowed, JAX default matmul precision (None: JAX's default), compute dtype)
PRECISIONS = {"tf32": (True, None, "fp32"), "fp32": (False, "highest", "fp32"), "bf16": (True, None, "bf16")}
# Dense (no 2:4 sparsity) bf16 tensor-core peak, FLOP/s. NVIDIA H200 SXM: 1,979 TFLOPS "with
# sparsity" in NVIDIA's H200 datasheet (nvidia.com/en-us/data-center/h200), half that dense. The
# H200 NVL (PCIe) is lower (1,671 sparse): its device_kind is matched by name, never guessed.
PEAK_BF16_FLOPS = {"NVIDIA H200": 989.4e12}
MIB = 2 ** 20


class Prepared:
    """One model, made once for all its rows: timm's on the device (channels_last) and under
    ``torch.compile`` (``dynamic=False``: each batch size and precision compiles its own graph,
    as ours does), ours in fp32 and bf16 with timm's weights on the device."""

    def __init__(self, name, size, device, compile_):
        import jax
        import jax.numpy as jnp
        import timm
        import torch
        import resnets_jax as rj
        torch.manual_seed(0)
        self.name, self.size, self.device = name, size, device
        tmodel = timm.create_model(name).eval()
        sd = {k: v.float().numpy() for k, v in tmodel.state_dict().items()}
        self.timm = tmodel.to(device).to(memory_format=torch.channels_last)
        self.compiled = torch.compile(self.timm, dynamic=False) if compile_ else None
        self.ours = {"fp32": rj.build_model(name), "bf16": rj.build_model(name, dtype=jnp.bfloat16)}
        self.variables = jax.device_put(rj.convert_timm_state_dict(self.ours["fp32"], sd))


def _sync(torch, device):
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def _min_time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _torch_side(torch, module, xt, amp, device, repeats):
    """(seconds per call, first call's seconds, peak MiB or None, output) of a timm module."""
    sync = _sync(torch, device)

    def call():
        with torch.inference_mode(), amp():
            out = module(xt)
        sync()
        return out
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    out = call()
    first = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() / MIB if device == "cuda" else None
    return _min_time(call, repeats), first, peak, out.float().cpu().numpy()


def _cost(compiled, key):
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis  # a list in older jaxlibs
    return float(analysis.get(key, 0.0)) if analysis else None


def _ours(p, precision, x, repeats):
    """(seconds per call, first call's seconds, compile seconds, peak MiB, FLOPs per call, output)."""
    import jax
    import resnets_jax as rj
    _, matmul_precision, dtype = PRECISIONS[precision]
    xj = jax.device_put(x)
    ctx = jax.default_matmul_precision(matmul_precision) if matmul_precision else contextlib.nullcontext()
    t = time.perf_counter()
    with ctx:  # the precision is fixed when tracing
        exe = rj.jit(p.ours[dtype].apply).lower(p.variables, xj).compile()
    compile_s = time.perf_counter() - t
    out = exe(p.variables, xj).block_until_ready()
    first = time.perf_counter() - t
    mem = exe.memory_analysis()
    peak = None if mem is None else (mem.argument_size_in_bytes + mem.output_size_in_bytes
                                     + mem.temp_size_in_bytes - mem.alias_size_in_bytes) / MIB
    per_call = _min_time(lambda: exe(p.variables, xj).block_until_ready(), repeats)
    return per_call, first, compile_s, peak, _cost(exe, "flops"), np.asarray(out, np.float32)


def speed_row(p: Prepared, precision: str, batch: int, repeats: int, peak_flops=None) -> dict:
    """One row: timm eager, torch.compile (when prepared) and ours at ``precision`` and ``batch``."""
    import torch
    allow_tf32, _, dtype = PRECISIONS[precision]
    x = np.random.default_rng(0).standard_normal((batch, p.size, p.size, 3)).astype(np.float32)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(p.device).contiguous(memory_format=torch.channels_last)
    amp = ((lambda: torch.autocast(p.device, dtype=torch.bfloat16)) if dtype == "bf16" else contextlib.nullcontext)
    row = {"model": p.name, "input": p.size, "precision": precision, "batch": batch}
    with torch_tf32(torch, allow_tf32):
        sides = {"timm": p.timm, "compiled": p.compiled}
        for side, module in sides.items():
            if module is None:
                continue
            s, row[f"{side}_first_s"], row[f"{side}_peak_mib"], ref = _torch_side(torch, module, xt, amp, p.device,
                                                                                  repeats)
            row[f"{side}_ms"], row[f"{side}_img_s"] = 1e3 * s, batch / s
            if side == "timm":
                timm_out = ref
    s, row["ours_first_s"], row["ours_compile_s"], row["ours_peak_mib"], flops, out = _ours(p, precision, x, repeats)
    row["ours_ms"], row["ours_img_s"] = 1e3 * s, batch / s
    row["ours_vs_eager"] = row["ours_img_s"] / row["timm_img_s"]
    if "compiled_img_s" in row:
        row["ours_vs_compiled"] = row["ours_img_s"] / row["compiled_img_s"]
    row["gflops_per_image"] = flops / batch / 1e9 if flops else None
    for side in ("ours", "compiled", "timm"):
        if peak_flops and flops and f"{side}_img_s" in row:
            row[f"{side}_bf16_peak_share"] = row[f"{side}_img_s"] * flops / batch / peak_flops
    # ours and timm on the same weights and input: the same function at this precision
    row["max_rel_diff"] = float(np.abs(out - timm_out).max() / np.abs(timm_out).max())
    return row
