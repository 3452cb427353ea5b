"""XLA settings for fast inference: compiler options per backend, and JAX's persistent
compilation cache.

    import resnets_jax as rj
    rj.enable_compilation_cache()                  # $RESNETS_JAX_CACHE_DIR/xla (~/.cache/resnets_jax/xla)
    forward = rj.jit(model.apply)                  # jax.jit with rj.compiler_options()
    forward = jax.jit(model.apply, compiler_options=rj.compiler_options())   # the same
"""
import functools
import os
from typing import Optional

import jax
import jax.numpy as jnp

from .cache import cache_dir

# XLA:CPU (jaxlib 0.10) hands convolutions, dots, reductions and elementwise fusions to YNNPACK
# by default (`xla_cpu_experimental_ynn_fusion_type`). On these networks XLA's own (Eigen)
# convolutions are faster end to end (1.2-1.5x at batch 8 fp32, benchmarks/before_after.py,
# 2-core AVX-512 Xeon; 2.4x on ResNeSt's grouped 3x3), so only dots and reductions stay on
# YNNPACK. Reductions must: XLA's own lose precision in GroupNorm / weight standardization
# (resnetv2_101x1_bit logits 1.1e-4 off float64 instead of 6.7e-5). With them on YNNPACK, logits
# are as exact as under XLA's defaults (tests/test_parity.py runs both), and so are training
# steps (DataParallel.jit_step uses these options): an fp32 step is only as exact as its ReLU
# decisions, whichever the options, a near-zero input going either way with the order of the
# sums (docs/exactness.md). The option name is jaxlib's: pyproject.toml caps jaxlib below 0.11.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
BACKEND_COMPILER_OPTIONS = {"cpu": CPU_COMPILER_OPTIONS}

# Our forward passes compile in seconds (resnest101e: ~10 s on 2 cores); programs that compile
# faster than this are cheaper to recompile than to hash, store and read back. JAX's own
# JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS, when set, wins.
MIN_CACHED_COMPILE_SECS = 0.5
MIN_COMPILE_TIME_ENV = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"


@functools.lru_cache(maxsize=None)
def _accepted(backend: str, options: tuple) -> bool:
    """Whether this jaxlib knows the options (older ones reject unknown flags at compile time)."""
    try:
        jax.jit(jnp.negative, compiler_options=dict(options)).lower(1.0).compile()
    except Exception:  # jaxlib raises XlaRuntimeError / ValueError depending on the version
        return False
    return True


def compiler_options() -> dict:
    """The XLA compiler options that make our models fastest on JAX's default backend, for
    ``jax.jit(..., compiler_options=...)``; empty where XLA's defaults are best or this jaxlib
    does not know them."""
    backend = jax.default_backend()
    options = BACKEND_COMPILER_OPTIONS.get(backend, {})
    return dict(options) if options and _accepted(backend, tuple(sorted(options.items()))) else {}


def jit(fun, **kwargs):
    """``jax.jit`` with :func:`compiler_options` for the default backend (``compiler_options=``
    given here are added on top)."""
    options = {**compiler_options(), **(kwargs.pop("compiler_options", None) or {})}
    return jax.jit(fun, compiler_options=options, **kwargs)


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
