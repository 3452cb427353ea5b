"""Shared fixtures for parity tests: the same tests run on whatever backend JAX finds.

CPU (CI): timm on CPU. GPU: timm on CUDA with TF32 off, JAX at 'highest' matmul precision.
TPU: JAX on the TPU (highest precision) against timm on the CPU.
"""
import os
import tempfile

import jax
import pytest

# The suite keeps its caches (traced shapes) to itself, not in the user's ~/.cache.
os.environ.setdefault("RESNETS_JAX_CACHE_DIR", tempfile.mkdtemp(prefix="resnets_jax_test_cache_"))
# `import resnets_jax` (and so the CLI) turns JAX's persistent compilation cache on; the suite
# must not fill the user's ~/.cache (tests/test_cli.py checks the cache in subprocesses of its own).
os.environ.setdefault("RESNETS_JAX_NO_COMPILE_CACHE", "1")

jax.config.update("jax_default_matmul_precision", "highest")

# Tests that need the reference (torch, timm) skip themselves where it is not installed, so that a
# JAX-only install runs the rest. `make test` and CI install it and set this variable: there, a
# missing reference fails the run instead of skipping half the suite.
REQUIRE_REFERENCE_ENV = "RESNETS_JAX_REQUIRE_REFERENCE"


def pytest_configure(config):
    if os.environ.get(REQUIRE_REFERENCE_ENV, "") not in ("", "0"):
        import importlib.util
        missing = [m for m in ("torch", "timm") if importlib.util.find_spec(m) is None]
        if missing:
            raise pytest.UsageError(f"{REQUIRE_REFERENCE_ENV} is set but {', '.join(missing)} is not installed: "
                                    "pip install -e '.[dev]'")

BACKEND = jax.default_backend()


@pytest.fixture(scope="session")
def torch_device():
    import torch
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False  # (grad mode is left alone: timm_forward runs under no_grad)
    return "cuda" if BACKEND == "gpu" and torch.cuda.is_available() else "cpu"
