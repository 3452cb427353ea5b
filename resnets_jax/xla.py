"""Backend-specific speed choices, in one place: how grouped convolutions are lowered and in
which forms convolutions are traced for the options a program compiles with (decided while jit
traces, so plain ``jax.jit`` gets them too), XLA compiler options per backend, and JAX's
persistent compilation cache. ``layers/`` holds numerics only and asks here.

    import resnets_jax as rj                       # turns the compilation cache on (default_compilation_cache)
    rj.enable_compilation_cache(path)              # or in a folder of your choosing
    forward = rj.jit(model.apply)                  # jax.jit with rj.compiler_options(), traced for them
    forward = jax.jit(model.apply, compiler_options=rj.compiler_options())   # the same options, traced as plain jax.jit is
    forward = rj.xla.jit_with(options, model.apply)   # jax.jit with any options, traced for them
    rj.xla.use_compiler_options_everywhere()      # opt-in, process-wide: plain jax.jit too
"""
import contextlib
import contextvars
import functools
import json
import os
import re
import subprocess
import sys
import warnings
from typing import Iterator, Optional, Sequence

import jax
import jax.numpy as jnp

from .cache import cache_dir

# XLA:CPU (jaxlib 0.10) hands convolutions, dots, reductions and elementwise fusions to YNNPACK
# by default (`xla_cpu_experimental_ynn_fusion_type`). On these networks XLA's own (Eigen)
# convolutions are faster end to end (1.2-1.5x at batch 8 fp32, benchmarks/before_after.py,
# 2-core AVX-512 Xeon; 2.4x on ResNeSt's grouped 3x3), so only dots and reductions stay on
# YNNPACK. Reductions stay for speed: GroupNorm and weight standardization run faster there
# (resnetv2_50x1_bit @224 fp32 batch 1 / 8: 96 / 380 ms, against 112 / 486 ms with XLA's own;
# Intel Xeon AVX-512, 2 cores), and at least as exact (resnetv2_101x1_bit @256, perturbed
# weights: logits against float64 6.2e-6 with YNNPACK's, 7.3e-6 with XLA's own, timm's fp32
# 6.5e-6; an earlier jaxlib measured 6.7e-5 against 1.1e-4). A YNNPACK reduce fusion grows
# through the convolutions around it unless a select stops it: the models keep them apart where
# they can (layers.select_relu, layers.avg_pool2d; benchmarks/README.md says where they cannot).
# Training steps use the same options (DataParallel.jit_step): an fp32 step is only as exact as
# its ReLU decisions, whichever the options, a near-zero input going either way with the order
# of the sums (docs/exactness.md).
# The option is experimental in jaxlib: one a jaxlib does not know (or a value it does not take)
# is left out with a warning (known_compiler_options), never an error.
YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"
CPU_COMPILER_OPTIONS = {YNN_FUSION_OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
BACKEND_COMPILER_OPTIONS = {"cpu": CPU_COMPILER_OPTIONS}

# Grouped convolutions on XLA:CPU: one conv per group, concatenated, against one
# feature_group_count conv (benchmarks/grouped_conv.py --model resnest101e --size 256, fp32,
# 2-core AMD EPYC AVX-512). Under rj.jit (XLA's own convs) splitting wins on large inputs and
# loses on small ones: resnest101e batch 1 259 ms with this threshold, 278 ms never splitting,
# 464 ms always; batch 8 the threshold keeps layer4 (8x8) grouped, as its conv alone prefers
# (6.8 ms against 9.7 ms). Plain jax.jit runs these stride-1 convs on XLA's own kernels too (the
# forms below); while it ran them on YNNPACK, splitting won there at every size.
# Accelerators keep the single grouped op.
SPLIT_GROUPED_CONV_BACKENDS = ("cpu",)
SPLIT_MIN_PIXELS = 2048  # batch * H * W of the conv input from which XLA:CPU splits

# A grouped conv with few input channels per group (ResNeXt's 32x4d first stage: 4) as the sum of
# its taps, each a shifted input channel times a row of the kernel: one loop fusion on XLA:CPU,
# where each per-group conv has too few channels to be fast (conv 3x3, 32 groups of 4 -> 4
# channels on 56x56, fp32, ms, batch 1 / 8: 1.3 / 9.6 as taps, 6.0 / 34 one conv per group,
# 10.6 / 114 one grouped conv; under XLA's defaults 1.1 / 9.0, 5.8 / 36, 8.9 / 132; AMD EPYC
# Zen 4, avx512f, 2 cores). With 8 per group it wins on some maps and loses on others (1.3x
# either way), with 16 it is 3-13x slower: up to TAPS_MAX_IN_PER_GROUP only.
TAPS_MAX_IN_PER_GROUP = 4

# Plain jax.jit on XLA:CPU compiles under XLA's defaults, which (jaxlib 0.10) run every fp32
# convolution on YNNPACK, and a traced program cannot choose its compiler options. XLA hands
# YNNPACK only the convolutions it supports (xla/backends/cpu/ynn_support.cc), and two forms of the
# same sums fall outside: a 1-d conv (YNNPACK takes only 2-d ones: a 1x1 conv over the flattened
# map, which XLA then runs as its own dot, the sums rj.jit computes), and a conv whose output is
# wider than its input (a stride-1 conv padded one more column on the right, that output column
# sliced off: 1/W more work). So where the program will compile with convolutions on YNNPACK,
# Conv2d traces those forms (layers/conv.py); under rj.jit / jit_step (compiling_with our options)
# it keeps plain convolutions. Plain jax.jit was 1.2-2.1x slower than rj.jit on six models at
# batch 1 and 8, and is now 0-13% slower (AMD EPYC, avx512f, 2 cores; benchmarks/README.md, issue
# 23). Strided kxk convs (stems, a few downsampling 3x3s) have no such form and stay on YNNPACK.
# 1x1 convs were first dots, which YNNPACK runs: plain jax.jit up to 7% slower than with 1-d convs
# (res2net101_26w_4s batch 8 511 against 476 ms, resnest101e batch 8 898 against 875; batch 1
# within 2% either way), its training step 15% slower (resnet50 batch 8: 2088 against 1812 ms;
# Intel Xeon, avx512f, 2 cores, fp32).


class _ContextChoice:
    """A contextvar with the interface of JAX's config states (``.value``; ``with choice(v):``)."""

    def __init__(self, name: str):
        self._var = contextvars.ContextVar(name, default=None)

    @property
    def value(self) -> Optional[str]:
        return self._var.get()

    @contextlib.contextmanager
    def __call__(self, value: Optional[str]) -> Iterator[None]:
        token = self._var.set(value)
        try:
            yield
        finally:
            self._var.reset(token)


def _trace_choice(name: str, help: str):
    """A choice made while jit traces (a string, or None), held in JAX's trace context (a config
    state), which ``jax.jit`` keys its traces by: a function traced under one choice is traced
    again under another (a ``jax.jit(model.apply)`` called inside ``rj.jit``, then at top level).
    That is a private JAX API (``jax._src.config``); on a JAX without it, a contextvar, and a
    trace made under one choice is then reused under another (only speed differs: both compute
    the same sums)."""
    try:
        from jax._src import config as jax_config
        return jax_config.optional_string_state(name, None, help, include_in_trace_context=True)
    except Exception:  # pragma: no cover - a JAX without it, or with another signature
        return _ContextChoice(name)


_YNN_FUSION_TYPES = _trace_choice("resnets_jax_ynn_fusion_types",
                                  "the YNNPACK fusion types of the program being traced (compiling_with)")


# jax.export's platform names -> the backends whose speed choices apply ('cuda'/'rocm' are 'gpu')
_PLATFORM_BACKENDS = {"cuda": "gpu", "rocm": "gpu"}
_LOWERING_PLATFORMS = _trace_choice("resnets_jax_lowering_platforms",
                                    "comma-separated jax.export platforms being traced for (lowering_platforms)")


def _traced_platforms() -> tuple:
    return tuple(_LOWERING_PLATFORMS.value.split(",")) if _LOWERING_PLATFORMS.value else (jax.default_backend(),)


@contextlib.contextmanager
def lowering_platforms(platforms: Sequence[str]) -> Iterator[None]:
    """Trace for ``platforms`` (jax.export's names: 'cpu', 'cuda', 'rocm', 'tpu') rather than for
    ``jax.default_backend()``: the speed choices made while tracing (``split_grouped_conv``) are
    the ones right for every platform named, so ``('cpu', 'cuda')`` bakes in no CPU-only
    lowering. The choice is part of ``jax.jit``'s trace key (``_trace_choice``)."""
    with _LOWERING_PLATFORMS(",".join(platforms)):
        yield


def grouped_conv_as_taps(groups: int, in_per_group: int, backend: Optional[str] = None) -> bool:
    """Whether ``Conv2d`` computes a grouped conv as the sum of its taps (``layers.conv``) rather
    than as convolutions: on XLA:CPU (every platform traced for, as :func:`split_grouped_conv`),
    for at most ``TAPS_MAX_IN_PER_GROUP`` input channels per group. Called while jit traces."""
    return 1 < groups and in_per_group <= TAPS_MAX_IN_PER_GROUP and _all_split_backends(backend)


def _all_split_backends(backend: Optional[str]) -> bool:
    """Whether ``backend`` (default: every platform traced for, :func:`lowering_platforms`) is one
    of ``SPLIT_GROUPED_CONV_BACKENDS``, whose grouped convs take XLA:CPU's forms."""
    platforms = (backend,) if backend else _traced_platforms()
    return all(_PLATFORM_BACKENDS.get(p, p) in SPLIT_GROUPED_CONV_BACKENDS for p in platforms)


def split_grouped_conv(x_shape: Sequence[int], groups: int, kernel_size: int,
                       backend: Optional[str] = None) -> bool:
    """Whether ``Conv2d(split_groups=None)`` runs a grouped conv as one conv per group
    (concatenated; the same sums) rather than one ``feature_group_count`` conv.

    ``x_shape``: the conv input, NHWC; ``backend``: default the platforms of an enclosing
    :func:`lowering_platforms` (split only when every one of them prefers it), else
    ``jax.default_backend()``. Called while jit traces, so the choice is baked into the program
    whichever jit is used."""
    if groups <= 1:
        return False
    if not _all_split_backends(backend):
        return False
    n, h, w = x_shape[0], x_shape[1], x_shape[2]
    if not isinstance(n, int):  # a symbolic batch (jax.export): decide from the static sizes, as for
        n = 1                   # batch 1 (both forms give the same sums; only the speed differs)
    return n * h * w >= SPLIT_MIN_PIXELS


@contextlib.contextmanager
def compiling_with(options: Optional[dict]) -> Iterator[None]:
    """Trace for a program that will compile with XLA ``options`` (None: XLA's defaults), so that
    the forms chosen while tracing (:func:`convs_on_ynnpack`) suit them; only their YNNPACK
    fusion types matter, and they are part of ``jax.jit``'s trace key (``_trace_choice``).
    :func:`jit_with` (and so :func:`jit` and ``DataParallel.jit_step``) traces inside it."""
    with _YNN_FUSION_TYPES((options or {}).get(YNN_FUSION_OPTION)):
        yield


def jit_with(options: dict, fun, **kwargs):
    """``jax.jit(fun, compiler_options=options, **kwargs)``, ``fun`` traced for those options
    (:func:`compiling_with`); ``{}``: XLA's defaults, as plain ``jax.jit``. The same ``fun`` and
    options give ``jax.jit`` the same traced function, so it finds the trace it holds
    (``rj.jit(model.apply)`` called again does not trace again)."""
    key = tuple(sorted(options.items()))
    try:
        traced = _traced(fun, key)
    except TypeError:  # an unhashable callable: a new function each time
        traced = _traced.__wrapped__(fun, key)
    return jax.jit(traced, compiler_options=options, **kwargs)


@functools.lru_cache(maxsize=64)
def _traced(fun, options_key: tuple):
    options = dict(options_key)

    @functools.wraps(fun)
    def traced(*args, **kwargs):
        with compiling_with(options):
            return fun(*args, **kwargs)
    return traced


def _xla_flag(name: str) -> Optional[str]:
    """The value ``XLA_FLAGS`` gives ``--name`` (the last one wins, as in XLA), else None."""
    found = re.findall(rf"--{re.escape(name)}=(\S*)", os.environ.get("XLA_FLAGS", ""))
    return found[-1] if found else None


def convs_on_ynnpack() -> bool:
    """Whether the program being traced will run fp32 convolutions on YNNPACK: every platform it
    is traced for (:func:`lowering_platforms`, else the default backend) is the CPU, and the
    YNNPACK fusion types it compiles with (:func:`compiling_with`'s options, else ``XLA_FLAGS``,
    else XLA's defaults, which hold convolutions in jaxlib 0.10, when this jaxlib has YNNPACK
    fusions at all) name convolutions. Called while jit traces; layers/conv.py then traces the
    forms XLA keeps off YNNPACK (the note above ``_ContextChoice``)."""
    if any(p != "cpu" for p in _traced_platforms()):
        return False
    types = _YNN_FUSION_TYPES.value or _xla_flag(YNN_FUSION_OPTION)
    if types is None:  # XLA's defaults: a jaxlib that does not know the option has no YNNPACK fusions
        return YNN_FUSION_OPTION in compiler_options()
    return "CONVOLUTION" in types


# Our forward passes compile in seconds (resnest101e: ~10 s on 2 cores); programs that compile
# faster than this are cheaper to recompile than to hash, store and read back. JAX's own
# JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS, when set, wins.
MIN_CACHED_COMPILE_SECS = 0.5
MIN_COMPILE_TIME_ENV = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"


def _probe(options: dict) -> tuple:
    """Which of ``options`` XLA takes: one trivial program (a scalar negation, milliseconds) compiled
    with all of them; an option the error names (XLA says "No such compile option: 'name'" or
    "While setting option name, ..." and stops at the first) is left out and the rest tried again.
    Returns (kept, {left-out name: XLA's message}); an error naming none of them leaves all out."""
    kept, dropped = dict(options), {}
    while kept:
        try:
            jax.jit(jnp.negative, compiler_options=kept).lower(1.0).compile()
            break
        except Exception as e:  # jaxlib raises JaxRuntimeError / XlaRuntimeError / ValueError by version
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            named = [k for k in kept if re.search(rf"(?<!\w){re.escape(k)}(?!\w)", message)] or list(kept)
            for k in named:
                dropped[k] = message
                del kept[k]
    return kept, dropped


def _note_left_out(dropped: dict, options: dict) -> None:
    import jaxlib
    for name, message in dropped.items():
        warnings.warn(f"resnets_jax: XLA option {name}={options[name]!r} left out: jaxlib {jaxlib.__version__} "
                      f"does not take it ({message}); the other options apply", RuntimeWarning, stacklevel=3)


@functools.lru_cache(maxsize=None)
def _known(backend: str, options: tuple) -> tuple:
    kept, dropped = _probe(dict(options))
    _note_left_out(dropped, dict(options))  # once per process: the result is cached
    return tuple(kept.items())


def known_compiler_options(options: dict) -> dict:
    """``options`` less those this jaxlib does not know by name or whose value it does not take
    (XLA's option names and values change between jaxlib releases; ours were measured on the
    versions in constraints.txt). Each one left out is said once per process, as a
    ``RuntimeWarning`` naming the option and the jaxlib version; never an error. Asked on JAX's
    default backend, once per process and set of options (one trivial compile)."""
    return dict(_known(jax.default_backend(), tuple(sorted(options.items())))) if options else {}


def compiler_options() -> dict:
    """The XLA compiler options that make our models fastest on JAX's default backend, for
    ``jax.jit(..., compiler_options=...)``; empty where XLA's defaults are best. An option this
    jaxlib does not know is left out with a warning (:func:`known_compiler_options`)."""
    return known_compiler_options(BACKEND_COMPILER_OPTIONS.get(jax.default_backend(), {}))


def jit(fun, **kwargs):
    """``jax.jit`` with :func:`compiler_options` for the default backend (``compiler_options=``
    given here are added on top), ``fun`` traced for them (:func:`compiling_with`)."""
    options = {**compiler_options(), **(kwargs.pop("compiler_options", None) or {})}
    return jit_with(options, fun, **kwargs)


def use_compiler_options_everywhere() -> str:
    """Opt-in, process-wide: make :func:`compiler_options` (the CPU ones) XLA's defaults for every
    program this process compiles, plain ``jax.jit(model.apply)`` included, by adding them to
    ``XLA_FLAGS``; training steps compile under them too, as ``DataParallel.jit_step`` does by
    default (see ``CPU_COMPILER_OPTIONS``). Call it before JAX's first computation. Returns the new ``XLA_FLAGS``.

    XLA aborts the process on a flag it does not know in ``XLA_FLAGS``, and can be asked only once
    it has read them: a child process (about a second) tries the options first, and one this
    jaxlib does not take is left out with a warning, as in :func:`known_compiler_options`.

    Raises ``RuntimeError`` once JAX's backends are initialized (XLA reads the flags only then)."""
    if _backends_initialized():
        raise RuntimeError("use_compiler_options_everywhere() must run before JAX's first computation "
                           "(XLA has already read XLA_FLAGS); pass compiler_options to jax.jit instead")
    kept, dropped = _probe_in_child(CPU_COMPILER_OPTIONS)
    _note_left_out(dropped, CPU_COMPILER_OPTIONS)
    flags = [f"--{k}={v}" for k, v in kept.items()]
    os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", "")] + flags).strip()
    return os.environ["XLA_FLAGS"]


def _backends_initialized() -> bool:
    try:  # private, but the only way to know whether XLA read its flags
        from jax._src.xla_bridge import backends_are_initialized
    except ImportError:  # pragma: no cover - a JAX without it: the caller's word that it is early
        return False
    return backends_are_initialized()


_CHILD_PROBE = ("import json, sys; from resnets_jax.xla import _probe; "
                "print(json.dumps(_probe(json.loads(sys.argv[1]))))")


def _probe_in_child(options: dict) -> tuple:
    """:func:`_probe` in a child process on XLA:CPU (this process's XLA must not read flags yet)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    res = subprocess.run([sys.executable, "-c", _CHILD_PROBE, json.dumps(options)], env=env,
                         capture_output=True, text=True, timeout=300)
    if res.returncode != 0:  # e.g. XLA_FLAGS already holds a flag XLA rejects: add none of ours
        reason = (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1]
        return {}, {k: f"the probe process failed: {reason}" for k in options}
    kept, dropped = json.loads(res.stdout.strip().splitlines()[-1])
    return kept, dropped


def enable_compilation_cache(path: Optional[str] = None,
                             min_compile_time_secs: Optional[float] = None) -> Optional[str]:
    """Turn on JAX's persistent compilation cache: compiled programs are written to ``path``
    (default ``cache.cache_dir('xla')``: ``$RESNETS_JAX_CACHE_DIR/xla``, else
    ``~/.cache/resnets_jax/xla``; ``RESNETS_JAX_CACHE_DIR=''`` leaves it off) and a later process
    compiling the same program (same model, shapes, dtype, options, jax version) loads it
    instead of compiling. Programs compiling in less than ``min_compile_time_secs`` are not
    stored (default: ``$JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS``, else 0.5 s). Call it before
    the first compilation. Returns the directory (None when left off).

    The cache is trusted code: do not point it at a directory others can write to."""
    path = path or cache_dir("xla")
    if not path:
        return None
    path = os.path.abspath(os.path.expanduser(path))
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    if min_compile_time_secs is None:
        min_compile_time_secs = float(os.environ.get(MIN_COMPILE_TIME_ENV, MIN_CACHED_COMPILE_SECS))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_time_secs)
    return path


NO_COMPILE_CACHE_ENV = "RESNETS_JAX_NO_COMPILE_CACHE"  # 1: leave JAX's compilation cache alone
_default_cache = {}  # what default_compilation_cache changed: {config name: value before}


def default_compilation_cache() -> Optional[str]:
    """What ``import resnets_jax`` does: :func:`enable_compilation_cache` in its default folder
    (``$RESNETS_JAX_CACHE_DIR/xla``, else ``~/.cache/resnets_jax/xla``), so that a fresh process
    loads the programs an earlier one compiled, as the ``resnets-jax`` command does. Left off
    when ``RESNETS_JAX_CACHE_DIR=''`` (every cache off) or ``RESNETS_JAX_NO_COMPILE_CACHE=1``;
    left alone when JAX already has a cache folder (``JAX_COMPILATION_CACHE_DIR``, or
    ``jax.config.update('jax_compilation_cache_dir', ...)`` before the import), and when the
    folder cannot be made (a read-only home). Returns the folder turned on, else None;
    :func:`disable_default_compilation_cache` undoes it."""
    if os.environ.get(NO_COMPILE_CACHE_ENV, "") not in ("", "0") or jax.config.jax_compilation_cache_dir:
        return None
    before = {name: getattr(jax.config, name) for name in
              ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")}
    try:
        path = enable_compilation_cache()
    except OSError:
        return None
    if path:
        _default_cache.update(before)
    return path


def disable_default_compilation_cache() -> None:
    """Undo :func:`default_compilation_cache` (JAX's settings as they were before it); nothing
    when it did not turn the cache on. Call it before the first compilation."""
    for name, value in _default_cache.items():
        jax.config.update(name, value)
    _default_cache.clear()
