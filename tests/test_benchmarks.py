"""Every benchmark script runs: each one as a subprocess at tiny settings (a small model, batch 1
or 2, one repeat, a small image), asserting it exits 0 and writes what it says it writes.
Figures are not checked: these runs are far too small to mean anything. Then the speed choices
those scripts measure (``resnets_jax.xla``): the grouped-conv rule and the process-wide opt-in."""
import csv
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")
TINY = "resnest14d"  # the smallest model with split attention and grouped convs
TIMEOUT_S = 600      # each script; generous for a loaded 2-core CI machine


def run(args, **kwargs):
    env = dict(os.environ, PYTHONPATH=ROOT, TORCHINDUCTOR_COMPILE_THREADS="1")
    res = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, **kwargs)
    assert res.returncode == 0, f"{args[1:3]} exit {res.returncode}:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return res.stdout


def script(name):
    return [sys.executable, os.path.join(BENCH, name)]


def test_bench_writes_rows_with_the_cpu(tmp_path):
    pytest.importorskip("timm")
    sys.path.insert(0, BENCH)
    from bench import COLUMNS, cpu_info
    out = tmp_path / "b"
    run(script("bench.py") + ["--models", TINY, "--batch", "1", "--dtype", "fp32", "--repeats", "1",
                              "--torch-compile", "--size", "32", "--output", str(out)])
    with open(f"{out}.csv") as f:
        rows = list(csv.DictReader(f))
    cpu, isa, kind = cpu_info()
    assert tuple(rows[0]) == COLUMNS and len(rows) == 1
    assert (rows[0]["cpu"], rows[0]["isa"], rows[0]["model"]) == (cpu, isa, TINY)
    assert float(rows[0]["jax_img_s"]) > 0 and float(rows[0]["timm_img_s"]) > 0
    assert kind.endswith(isa) and " " not in kind
    assert TINY in (tmp_path / "b.md").read_text() and (tmp_path / "b.png").stat().st_size > 0


def test_ratios_one_run(tmp_path):
    pytest.importorskip("timm")
    out = tmp_path / "r"
    # --no-compile: torch.compile of even a tiny model takes minutes on 2 cores; bench.py's
    # torch.compile worker and gpu_check's are the same calls
    run(script("ratios.py") + ["--models", TINY, "--batch", "1", "--repeats", "1", "--size", "32",
                               "--no-compile", "--first-call", TINY, "--output", str(out)])
    with open(f"{out}.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["rj_vs_timm"]) > 0 and float(row["jax_vs_timm"]) > 0 and row["rj_vs_compiled"] == ""
    assert float(row["max_rel_diff"]) < 1e-4  # fp32 both sides: ours must compute timm's logits
    assert "First call of resnest14d" in (tmp_path / "r.md").read_text()


def test_before_after(tmp_path):
    pytest.importorskip("timm")
    out = run(script("before_after.py") + ["--models", TINY, "--batch", "1", "--repeats", "1", "--size", "32",
                                           "--cache-model", TINY])
    assert "rj.jit / jax.jit speed" in out and "jax.jit, plain convs" in out
    firsts = [line for line in out.splitlines() if "first call" in line]
    assert len(firsts) == 2 and not any("nan" in line for line in firsts), out


def test_export_latency(tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "e"
    run(script("export_latency.py") + ["--models", "resnet10t", "--batch", "1", "--repeats", "1", "--size", "32",
                                       "--output", str(out)])
    with open(f"{out}.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert all(float(row[f"{r}_ms"]) > 0 for r in ("rj.jit", "stablehlo", "stablehlo-portable", "onnx"))
    assert float(row["max_rel_diff"]) < 1e-4  # every runtime computes the same logits
    assert "| resnet10t | 32 | 1 |" in (tmp_path / "e.md").read_text()


def test_conversion(tmp_path):
    pytest.importorskip("timm")
    pytest.importorskip("safetensors")
    res = subprocess.run(script("conversion.py") + ["resnetv2_18", "--repeats", "1", "--dir", str(tmp_path)],
                         cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
                         timeout=TIMEOUT_S)
    # exit 1 means "over a budget", which a model this small may be (fixed costs against a small
    # file); anything else is a failure
    assert res.returncode in (0, 1), res.stderr[-3000:]
    assert "conversion time / read time" in res.stdout and "conversion peak memory" in res.stdout


def test_init_speed(tmp_path):
    pytest.importorskip("timm")
    out = tmp_path / "i"
    run(script("init_speed.py") + ["--models", "resnet18", "--repeats", "1", "--no-head", "--output", str(out)])
    with open(f"{out}.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["model"] == "resnet18" and float(row["ours_s"]) > 0 and float(row["timm_s"]) > 0
    assert "| resnet18 |" in (tmp_path / "i.md").read_text()


def test_grouped_conv():
    out = run(script("grouped_conv.py") + ["--batch", "1", "--repeats", "1", "--shapes", "res2next50 layer1",
                                           "--model", TINY, "--size", "32"])
    rows = [line.split() for line in out.splitlines() if line.startswith(("res2next50", TINY))]
    assert len(rows) == 4  # one shape and one model, each under jax.jit and rj.jit
    shape_rows, model_rows = rows[:2], rows[2:]
    assert all(float(r[-1]) < 1e-4 for r in shape_rows)  # max |grouped - split|: the same sums
    assert all(float(r[-2]) < 1e-4 for r in model_rows)
    assert all(r[-1] == "differ" for r in model_rows)  # each mode traced afresh under either jit


def test_gpu_check_cpu_smoke(tmp_path):
    """The GPU check's code paths on CPU (a tiny model, 32 px): per model ours and timm's fp32 each
    against timm's float64 (logits, features; a training step's logits, running statistics,
    gradients) with the bound they are held to, and one throughput row per matched precision."""
    pytest.importorskip("timm")
    sys.path.insert(0, BENCH)
    from gpu_check import SMOKE_MODELS
    from gpu_parity import AS_TIMM_FACTOR, FLOOR
    from gpu_speed import PRECISIONS
    out = tmp_path / "g"
    env = dict(os.environ, PYTHON=sys.executable)
    res = subprocess.run(["bash", os.path.join(BENCH, "gpu_check.sh"), "--cpu-smoke", "--output", str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    with open(f"{out}.json") as f:
        results = json.load(f)
    judged = [(r, k) for r in results["parity"] for k in ("logits", "features")]
    judged += [(r, k) for r in results["train"] for k in ("logits", "running_stats", "gradients")]
    assert [r["model"] for r in results["parity"]] == [r["model"] for r in results["train"]] == list(SMOKE_MODELS)
    for r, k in judged:
        j = r[k]
        assert 0 < j["timm"] < 1e-3 and 0 < j["ours"] <= j["bound"], (r["model"], k, j)  # measured, not zeros
        assert j["bound"] == max(AS_TIMM_FACTOR * j["timm"], FLOOR) and j["ok"] and r["ok"]
    assert 0.1 < results["parity"][0]["logit_scale"] < 100  # the perturbation keeps activations of order one
    speed = results["speed"]
    assert sorted(r["precision"] for r in speed) == sorted(PRECISIONS)
    for r in speed:
        assert r["ours_img_s"] > 0 and r["timm_img_s"] > 0 and r["ours_first_s"] >= r["ours_compile_s"] > 0
        assert r["ours_peak_mib"] > 0 and r["gflops_per_image"] > 0
        assert r["max_rel_diff"] < (5e-2 if r["precision"] == "bf16" else 1e-4), r  # the same function
    text = (tmp_path / "g.md").read_text()
    assert all(h in text for h in ("## Parity against timm's float64", "## One training step", "## Throughput"))


# ------------------------------------------------------------ the speed choices the scripts measure

def test_split_grouped_conv_rule():
    from resnets_jax.xla import SPLIT_MIN_PIXELS, split_grouped_conv
    big = (SPLIT_MIN_PIXELS // 16, 4, 4, 64)
    small = (1, 4, 4, 64)
    assert split_grouped_conv(big, 2, 3, backend="cpu")
    assert not split_grouped_conv(small, 2, 3, backend="cpu")   # small outputs: one grouped conv
    assert not split_grouped_conv(big, 1, 3, backend="cpu")     # nothing to split
    assert not split_grouped_conv(big, 2, 3, backend="gpu")     # accelerators: one grouped conv


def test_conv_asks_the_rule_at_trace_time(monkeypatch):
    import jax
    import jax.numpy as jnp
    import resnets_jax as rj
    from resnets_jax import xla
    conv = rj.layers.Conv2d(16, 3, groups=2)  # 8 channels per group: convolutions, not taps
    x = jnp.ones((1, 4, 4, 16))
    variables = conv.init(jax.random.PRNGKey(0), x)
    for split, convs in ((True, 2), (False, 1)):
        monkeypatch.setattr(xla, "split_grouped_conv", lambda *a, _s=split, **k: _s)
        jaxpr = str(jax.make_jaxpr(conv.apply)(variables, x))
        assert jaxpr.count("conv_general_dilated") == convs


def _ynnpack_convolutions(name, jit):
    """(every convolution, those inside YNNPACK fusions) of ``name`` at 224, batch 1, compiled by
    ``jit`` on XLA:CPU, as HLO lines."""
    import re
    import jax
    import jax.numpy as jnp
    import resnets_jax as rj
    model = rj.build_model(name)
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    hlo = jit(model.apply).lower(variables, x).compile().as_text()
    bodies = dict(re.findall(r"(?ms)^%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo))
    convs = lambda text: re.findall(r"[^\n]* convolution\([^\n]*", text)  # noqa: E731
    called = re.findall(r"%?ynn[\w.\-]* = [^\n]* fusion\([^\n]*calls=%?([\w.\-]+)", hlo)
    assert convs(hlo) and bodies
    assert called, "no YNNPACK fusion found: has XLA:CPU renamed them, or stopped handing work over?"
    return convs(hlo), [c for fusion in called for c in convs(bodies[fusion])]


def _needs_xla_cpu():
    import jax
    if jax.default_backend() != "cpu":
        pytest.skip(f"reads the fusions XLA:CPU compiles; JAX's default backend here is {jax.default_backend()}, "
                    "whose compiler hands nothing to YNNPACK")


@pytest.mark.parametrize("name", ["resnetv2_18d", "resnet26d"])
def test_no_convolution_rides_in_a_reduce_fusion(name):
    """Under rj.jit XLA:CPU runs convolutions itself; jaxlib 0.10 hands a large reduce or
    reduce-window to YNNPACK and grows that fusion through the convolutions around it, which
    YNNPACK runs slower. The pre-activation norms' select_relu (the head's pool) and the
    slice-sum avg-pool shortcut ('d' variants, pre- and post-activation) keep every convolution
    out: with max-ReLUs and reduce-window pools resnetv2_18d's fusions held 7 and 9."""
    import resnets_jax as rj
    _needs_xla_cpu()
    _, in_ynnpack = _ynnpack_convolutions(name, rj.jit)
    assert not in_ynnpack, in_ynnpack


@pytest.mark.parametrize("name", ["resnetv2_18d", "resnet26d"])
def test_plain_jit_runs_only_strided_convolutions_on_ynnpack(name):
    """Plain jax.jit compiles under XLA's defaults, which run convolutions on YNNPACK (slower
    here); Conv2d traces 1x1 convs as 1-d convs (XLA runs them as its own dots) and stride-1
    convs one column wider, which XLA keeps (xla.convs_on_ynnpack). Only strided kxk convs (stem,
    downsampling 3x3s) are left there: before, all 31 convolutions of resnet26d ran there (now 4 of 11)."""
    import jax
    _needs_xla_cpu()
    every, in_ynnpack = _ynnpack_convolutions(name, jax.jit)
    assert all("stride=" in c for c in in_ynnpack), [c for c in in_ynnpack if "stride=" not in c]
    assert len(in_ynnpack) <= len([c for c in every if "stride=" in c]) < len(every) / 2


def test_conv_forms_follow_the_compiler_options(monkeypatch):
    """xla.convs_on_ynnpack, asked while jit traces: on XLA:CPU under XLA's defaults (plain
    jax.jit, an XLA_FLAGS value naming convolutions) yes; under rj.jit, jit_step, options or
    XLA_FLAGS keeping convolutions off YNNPACK, a jaxlib without YNNPACK fusions, or when traced
    for another platform too, no."""
    import jax
    import jax.numpy as jnp
    import resnets_jax as rj
    from resnets_jax import xla
    seen = []

    def traced(jit):
        def probe(x):  # a new function each time: jax.jit reuses a trace it holds
            seen.append(xla.convs_on_ynnpack())
            return x + 1
        seen.clear()
        jit(probe).lower(jnp.ones(3))
        return seen[-1]

    # XLA:CPU, and a jaxlib with YNNPACK fusions (one without them would have left the option out)
    on_cpu = jax.default_backend() == "cpu" and xla.YNN_FUSION_OPTION in rj.compiler_options()
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert traced(jax.jit) is on_cpu
    assert traced(rj.jit) is False
    assert traced(lambda f: xla.jit_with({}, f)) is on_cpu
    with xla.lowering_platforms(("cpu", "cuda")):
        assert traced(jax.jit) is False
    ours = xla.CPU_COMPILER_OPTIONS[xla.YNN_FUSION_OPTION]
    monkeypatch.setenv("XLA_FLAGS", f"--xla_cpu_use_thunk_runtime=true --{xla.YNN_FUSION_OPTION}={ours}")
    assert traced(jax.jit) is False
    monkeypatch.setenv("XLA_FLAGS", f"--{xla.YNN_FUSION_OPTION}={ours},LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION")
    assert traced(jax.jit) is (jax.default_backend() == "cpu")
    monkeypatch.delenv("XLA_FLAGS")
    monkeypatch.setattr(xla, "compiler_options", lambda: {})  # a jaxlib that left the option out
    assert traced(jax.jit) is False


def test_a_jit_nested_in_rj_jit_is_traced_for_each():
    """JAX keys its traces by the choice (xla._trace_choice): the same ``jax.jit(conv.apply)``
    traced inside rj.jit keeps the plain convolution and at top level takes the 1-d conv, in either
    order (a trace reused across them ran plain jax.jit at its old speed)."""
    import jax
    import jax.numpy as jnp
    import resnets_jax as rj
    from resnets_jax import xla
    forms = jax.default_backend() == "cpu" and xla.YNN_FUSION_OPTION in rj.compiler_options()
    conv = rj.layers.Conv2d(32, 1)
    x = jnp.ones((1, 8, 8, 32))
    variables = conv.init(jax.random.PRNGKey(0), x)
    for top_first in (False, True):
        forward = jax.jit(conv.apply)
        nested = lambda: rj.jit(lambda v, x: forward(v, x) + 1).lower(variables, x).as_text()  # noqa: E731
        top = lambda: forward.lower(variables, x).as_text()  # noqa: E731
        texts = (top(), nested()) if top_first else tuple(reversed((nested(), top())))
        one_d, two_d = "[b, 0, f]x[0, i, o]->[b, 0, f]", "[b, 0, 1, f]x[0, 1, i, o]->[b, 0, 1, f]"
        assert [(one_d in t, two_d in t) for t in texts] == [(forms, not forms), (False, True)]
    traces = []
    f = lambda x: traces.append(1) or x + 1  # noqa: E731
    rj.jit(f)(1.0)
    rj.jit(f)(1.0)
    assert len(traces) == 1  # rj.jit of the same function again finds its trace
    # the fallback where JAX lacks the keyed state: the same interface, a contextvar
    choice = xla._ContextChoice("test")
    with choice("cpu,cuda"):
        assert choice.value == "cpu,cuda"
    assert choice.value is None


def test_use_compiler_options_everywhere_reaches_plain_jit():
    import jax
    if jax.default_backend() != "cpu":
        pytest.skip(f"rj.compiler_options() holds XLA:CPU options only; on {jax.default_backend()} there are "
                    "none to make process-wide, so there is nothing to check")
    code = (
        "import jax, jax.numpy as jnp\n"
        "from resnets_jax import xla\n"
        # an option no jaxlib knows beside ours: left out with a note, not XLA's abort on an unknown flag
        f"xla.CPU_COMPILER_OPTIONS = {{**xla.CPU_COMPILER_OPTIONS, {NO_SUCH_OPTION!r}: '1'}}\n"
        "import warnings\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    flags = xla.use_compiler_options_everywhere()\n"
        f"print(sum({NO_SUCH_OPTION!r} in str(w.message) for w in caught), {NO_SUCH_OPTION!r} in flags)\n"
        "f = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', "
        "dimension_numbers=('NHWC', 'HWIO', 'NHWC'))\n"
        "text = jax.jit(f).lower(jnp.ones((1, 32, 32, 64)), jnp.ones((3, 3, 64, 64))).compile().as_text()\n"
        "print('ynn' in text.lower())\n"
        "try:\n"
        "    xla.use_compiler_options_everywhere()\n"
        "except RuntimeError:\n"
        "    print('late call refused')\n")
    # XLA:CPU's default sends the conv to YNNPACK (a "ynn" fusion); under our options it does not
    assert run([sys.executable, "-c", code]).splitlines()[-3:] == ["1 False", "False", "late call refused"]


NO_SUCH_OPTION = "xla_resnets_jax_no_such_option"  # a name no jaxlib has (a later jaxlib's renamed option)
BAD_VALUE = {"xla_cpu_enable_fast_math": "maybe"}  # a known option, a value it does not take


def _conv_program_text(jit):
    import jax
    import jax.numpy as jnp
    f = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))  # noqa: E731
    # large enough for XLA:CPU's default to send it to YNNPACK (an 8x8x4 conv stays XLA's own either way)
    return jit(f).lower(jnp.ones((1, 32, 32, 64)), jnp.ones((3, 3, 64, 64))).compile().as_text().lower()


def test_unknown_xla_options_are_left_out_with_one_note(monkeypatch):
    """An option this jaxlib does not know (by name, or by value) is left out of rj.compiler_options()
    with one RuntimeWarning naming it and the jaxlib version, once per process; the known ones still
    apply and rj.jit compiles."""
    import warnings
    import jax
    import jaxlib
    import resnets_jax as rj
    from resnets_jax import xla
    backend = jax.default_backend()
    known = dict(xla.BACKEND_COMPILER_OPTIONS.get(backend, {}))
    monkeypatch.setitem(xla.BACKEND_COMPILER_OPTIONS, backend, {**known, NO_SUCH_OPTION: "1", **BAD_VALUE})
    xla._known.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = rj.compiler_options(), rj.compiler_options()
        text = _conv_program_text(rj.jit)
    notes = [str(w.message) for w in caught if w.category is RuntimeWarning and "left out" in str(w.message)]
    assert first == second == known
    assert len(notes) == 2, notes  # one per option, said once although asked twice and compiled
    for name in (NO_SUCH_OPTION, *BAD_VALUE):
        (note,) = [n for n in notes if f"option {name}=" in n]
        assert f"jaxlib {jaxlib.__version__}" in note, note
    if backend == "cpu":  # the known option applied: the conv stays off YNNPACK (XLA:CPU's default sends it there)
        assert "ynn" not in text and "ynn" in _conv_program_text(jax.jit)
