"""Shared fixtures for parity tests: the same tests run on whatever backend JAX finds.

CPU (CI): timm on CPU. GPU: timm on CUDA with TF32 off, JAX at 'highest' matmul precision.
TPU: JAX on the TPU (highest precision) against timm on the CPU.
"""
import os
import shutil
import tempfile

import jax
import pytest

# The suite keeps its caches to itself, not in the user's ~/.cache: one folder a run, made by the
# first process (pytest, or xdist's controller), inherited by its workers and by every subprocess a
# test starts, removed when the run ends. In it, as for users, `import resnets_jax` (and so the
# CLI) keeps the traced shapes and turns JAX's persistent compilation cache on: a program compiled
# once (the same HLO and options, so the same executable) is loaded by the other worker and the
# CLI's subprocesses (measured: 1369 -> 1267 s for `make test`, AMD EPYC avx512f, 2 cores). Tests
# of the cache itself set their own folders (test_cli.py, test_random_init.py).
_OWN_CACHE_DIR = "RESNETS_JAX_CACHE_DIR" not in os.environ
if _OWN_CACHE_DIR:
    os.environ["RESNETS_JAX_CACHE_DIR"] = tempfile.mkdtemp(prefix="resnets_jax_test_cache_")

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


def pytest_unconfigure(config):
    if _OWN_CACHE_DIR and not hasattr(config, "workerinput"):  # the process that made it (not an xdist worker)
        shutil.rmtree(os.environ["RESNETS_JAX_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def torch_device():
    import torch
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False  # (grad mode is left alone: timm_forward runs under no_grad)
    return "cuda" if BACKEND == "gpu" and torch.cuda.is_available() else "cpu"
